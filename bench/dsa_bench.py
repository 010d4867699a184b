"""DeepSeek-V3.2's sparse attention (DSA) at long context: decode cost per step, in one run, for

    duet sparse   our engine as the checkpoint says (each query attends to its index_topk tokens)
    duet dense    the same engine and weights with the indexer's top-k lifted past the context
                  (every query attends to every token: V3-style MLA)
    transformers  DeepseekV32ForCausalLM (eager) on the same weights

    python bench/dsa_bench.py [--contexts 1024,2048,...] [--steps 8] [--hf-steps 3] [--hf-max 32768] [--threads 1]

Model: a small V3.2-shaped random model (built once under bench/results/): hidden 512, 4 layers,
16 heads, q_lora 192, kv_lora 256, rope 32, nope 64, v 64; indexer 16 heads x 64 dims,
index_topk 2048 (V3.2's own); 16 routed experts (4 active, 4 groups), 1 shared; vocab 8192; bf16.

Decode cost depends on how many tokens the cache holds, not on what they are, and a real prefill
of 32k tokens takes hours on two cores; so each context is made by a real 1024-token prefill whose
cache rows (latent, rope key, indexer key; transformers' too) are tiled out to the context length.
Writes bench/results/dsa_bench.json and prints a table."""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

SHAPE = dict(vocab_size=8192, hidden_size=512, intermediate_size=1408, moe_intermediate_size=256,
             num_hidden_layers=4, first_k_dense_replace=1, num_attention_heads=16, num_key_value_heads=16,
             q_lora_rank=192, kv_lora_rank=256, qk_nope_head_dim=64, qk_rope_head_dim=32, v_head_dim=64,
             n_routed_experts=16, num_experts_per_tok=4, n_shared_experts=1, n_group=4, topk_group=2,
             routed_scaling_factor=2.5, norm_topk_prob=True, max_position_embeddings=65536,
             initializer_range=0.02, bos_token_id=0, eos_token_id=1, tie_word_embeddings=False,
             index_topk=2048, index_n_heads=16, index_head_dim=64)
SOURCE = 1024  # tokens of real prefill, tiled out to each context


def build_model(folder: Path) -> Path:
    if (folder / "config.json").is_file():
        return folder
    import torch
    from transformers import DeepseekV32Config, DeepseekV32ForCausalLM

    torch.manual_seed(0)
    model = DeepseekV32ForCausalLM(DeepseekV32Config(**SHAPE)).to(torch.bfloat16)
    with torch.no_grad():
        for name, b in model.named_buffers():
            if name.endswith("e_score_correction_bias"):
                b.normal_(0, 0.05)
    model.save_pretrained(folder)
    return folder


def _tile_(t, dim: int, src: int, end: int) -> None:
    """Copy rows [0, src) of ``t`` along ``dim`` over rows [src, end)."""
    for a in range(src, end, src):
        b = min(end, a + src)
        t.narrow(dim, a, b - a).copy_(t.narrow(dim, 0, b - a))


class Duet:
    def __init__(self, folder, max_seq: int, dense: bool):
        from local_engine import Engine

        self.engine = Engine.load(folder, dtype="bfloat16", max_seq_len=max_seq)
        self.name = "duet dense" if dense else "duet sparse"
        if dense:
            for layer in self.engine.model.layers:
                layer.attn.indexer.topk = max_seq  # every position chosen: the indexer steps aside
        self.max_seq = max_seq

    def fill(self, ids, context: int) -> None:
        """A real prefill of ``ids``, its cache rows tiled out to ``context``."""
        self.engine.forward(ids, 0)
        n = ids.shape[1]
        for layer in self.engine.model.layers:
            _tile_(layer.attn.cache, 1, n, context)
            _tile_(layer.attn.indexer.cache, 1, n, context)
        # the rows now hold the prompt repeated: the engine's record of its cache says so (it
        # refuses to decode past the rows it knows were written)
        self.engine._held = (ids[0].tolist() * (context // n + 1))[:context]

    def step_ms(self, context: int, steps: int) -> float:
        import torch

        tok = torch.tensor([[5]])
        self.engine.forward(tok, context)  # warm this context's shapes
        t = time.perf_counter()
        for i in range(steps):
            tok = self.engine.forward(tok, context + 1 + i)[:, -1:].argmax(-1)
        return (time.perf_counter() - t) / steps * 1e3


class Transformers:
    name = "transformers"

    def __init__(self, folder):
        import torch
        from transformers import AutoModelForCausalLM

        self.torch = torch
        self.model = AutoModelForCausalLM.from_pretrained(str(folder), dtype=torch.bfloat16,
                                                          attn_implementation="eager").eval()
        self.source = None

    def fill(self, ids, context: int) -> None:
        with self.torch.inference_mode():
            if self.source is None or self.source[0] is not ids:
                self.source = (ids, self.model(ids, use_cache=True).past_key_values)
            cache = self.source[1]
            self.cache = _tiled_hf_cache(cache, ids.shape[1], context)

    def step_ms(self, context: int, steps: int) -> float:
        torch = self.torch
        with torch.inference_mode():
            tok = torch.tensor([[5]])
            out = self.model(tok, cache=self.cache, use_cache=True)  # warm
            t = time.perf_counter()
            for _ in range(steps):
                out = self.model(tok, cache=out.past_key_values, use_cache=True)
                tok = out.logits[:, -1:].argmax(-1)
            return (time.perf_counter() - t) / steps * 1e3


def _tiled_hf_cache(cache, src: int, context: int):
    """A copy of transformers' cache with its rows (latent keys, rope values, indexer keys) tiled
    from ``src`` out to ``context``."""
    import copy

    import torch

    def tile(t, dim):
        reps = -(-context // src)
        return t.repeat(*[reps if d == dim % t.dim() else 1 for d in range(t.dim())]).narrow(dim, 0, context)

    new = copy.copy(cache)
    new.layers = []
    for layer in cache.layers:
        lay = copy.copy(layer)
        lay.keys, lay.values = tile(layer.keys, -2), tile(layer.values, -2)
        lay.indexer_keys = tile(layer.indexer_keys, 1)
        new.layers.append(lay)
    assert new.get_seq_length() == context and isinstance(new.layers[0].keys, torch.Tensor)
    return new


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--contexts", default="1024,2048,4096,8192,16384,32768")
    p.add_argument("--steps", type=int, default=8, help="decode steps timed per context (duet)")
    p.add_argument("--hf-steps", type=int, default=3, help="decode steps timed per context (transformers)")
    p.add_argument("--hf-max", type=int, default=32768, help="largest context run with transformers")
    p.add_argument("--threads", type=int, default=1,
                   help="torch threads for all three (default 1: on a shared, loaded machine two threads "
                        "wait on each other at every op's barrier)")
    p.add_argument("--model", default="bench/results/dsa_model")
    p.add_argument("--out", default="bench/results/dsa_bench.json")
    args = p.parse_args(argv)

    import torch

    torch.set_num_threads(args.threads)
    contexts = [int(c) for c in args.contexts.split(",")]
    folder = build_model(Path(args.model))
    max_seq = max(contexts) + args.steps + 8
    ids = torch.randint(2, SHAPE["vocab_size"], (1, SOURCE), generator=torch.Generator().manual_seed(0))
    rows = {c: {"context": c} for c in contexts}
    runners = [lambda: Duet(folder, max_seq, dense=False), lambda: Duet(folder, max_seq, dense=True),
               lambda: Transformers(folder)]
    for make in runners:
        runner = make()
        for c in contexts:
            hf = runner.name == "transformers"
            if hf and c > args.hf_max:
                continue
            runner.fill(ids, c)
            ms = runner.step_ms(c, args.hf_steps if hf else args.steps)
            rows[c][runner.name] = {"ms_per_step": round(ms, 2), "tok_s": round(1e3 / ms, 1)}
            print(f"  {runner.name:13s} context {c:6d}: {ms:8.1f} ms/step", flush=True)
        del runner
    report = {"model": str(folder), "shape": SHAPE, "dtype": "bfloat16", "threads": torch.get_num_threads(),
              "machine": platform.machine(), "cpus": os.cpu_count(), "torch": torch.__version__,
              "source_prefill": SOURCE, "rows": list(rows.values())}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=1))
    names = ["duet sparse", "duet dense", "transformers"]
    print(f"\nDSA decode, V3.2-shaped model (index_topk {SHAPE['index_topk']}), bf16, "
          f"{report['threads']} threads — ms/step (tok/s)")
    print("| context | " + " | ".join(names) + " |")
    print("|---:|" + "---:|" * len(names))
    for r in rows.values():
        cells = [f"{r[n]['ms_per_step']:.1f} ({r[n]['tok_s']:.0f})" if n in r else "—" for n in names]
        print(f"| {r['context']} | " + " | ".join(cells) + " |")
    print(f"\nwrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
