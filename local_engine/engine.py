"""Engine: load a DeepSeek V3/R1 or V2 folder, run it with a latent MLA cache, generate tokens."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import torch

from kernels import capability
from local_engine.config import ModelArgs
from local_engine.errors import InputError, ModelError
from local_engine.loader import _release_free_memory
from local_engine.model import Transformer
from local_engine.tokenizer import Tokenizer

DTYPES = {"bfloat16": torch.bfloat16, "bf16": torch.bfloat16, "float16": torch.float16,
          "fp16": torch.float16, "float32": torch.float32, "fp32": torch.float32}
QUANT_MARKER = "duet_quant.json"


def _dtype(dtype) -> torch.dtype:
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype not in DTYPES:
        raise ModelError(f"dtype {dtype!r} is not supported ({', '.join(DTYPES)})")
    return DTYPES[dtype]


class Engine:
    def __init__(self, model: Transformer, args: ModelArgs, tokenizer: Tokenizer | None, *,
                 device, dtype: torch.dtype, max_seq_len: int, max_batch: int, path: Path):
        self.model, self.args, self.tokenizer = model, args, tokenizer
        self.device, self.dtype = torch.device(device), dtype
        self.max_seq_len, self.max_batch, self.path = max_seq_len, max_batch, path

    @classmethod
    def load(cls, path, *, device="cpu", dtype="bfloat16", quant=None, max_seq_len=4096, max_batch=1,
             pack: bool | None = None, progress: Callable[[float], None] | None = None) -> "Engine":
        """``pack``: pre-pack dense weights for the device's fast matmul (default: on when it has
        one and the model is not quantized; CPU bf16 today). ``progress(fraction)`` is called as
        layers load (from the loading thread)."""
        folder = Path(path).expanduser()
        if folder.is_file():  # a GGUF file: its own quantized types, tokenizer and template
            from local_engine.gguf_loader import load_engine

            return load_engine(cls, folder, device=device, dtype=_dtype(dtype), quant=quant,
                               max_seq_len=max_seq_len, max_batch=max_batch, progress=progress)
        if not folder.is_dir():
            raise ModelError(f"{folder}: not a folder (expected an HF model folder with config.json)")
        if quant not in (None, "int8", "int4"):
            raise ModelError(f"quant {quant!r} is not supported (int8 | int4)")
        torch_dtype = _dtype(dtype)
        try:
            dev = torch.device(device)
        except (RuntimeError, TypeError):
            raise ModelError(f"device {device!r} is not a torch device") from None
        if dev.type == "cuda" and not torch.cuda.is_available():
            raise ModelError(f"device {device!r}: no CUDA device is available here")
        args = ModelArgs.from_folder(folder)
        try:
            capability.detect()  # the CPU paths are planned from it (a bad DUET_CPU stops here)
        except ValueError as exc:
            raise ModelError(str(exc)) from None
        if torch.device(device).type == "cpu":
            # attention probabilities underflow to denormals; on x86 those make bmm/softmax 10x slower
            torch.set_flush_denormal(True)
        tokenizer = Tokenizer(folder) if (folder / "tokenizer.json").is_file() else None
        with torch.no_grad():  # not inference_mode: the weights stay ordinary tensors
            if (folder / QUANT_MARKER).is_file():
                from local_engine.quantize import load_quantized

                model = load_quantized(folder, args, dtype=torch_dtype, device=device,
                                       max_batch=max_batch, max_seq_len=max_seq_len)
            else:
                from local_engine.loader import load_model

                model = load_model(folder, args, dtype=torch_dtype, device=device, max_batch=max_batch,
                                   max_seq_len=max_seq_len, quant=quant, pack=quant is None if pack is None else pack,
                                   progress=progress)
            for layer in model.layers:
                layer.attn.fuse_qkv_a_()  # packed weights only; a no-op otherwise
                _release_free_memory()
        return cls(model, args, tokenizer, device=device, dtype=torch_dtype, max_seq_len=max_seq_len,
                   max_batch=max_batch, path=folder)

    # -- running -----------------------------------------------------------------------------

    @torch.inference_mode()
    def forward(self, tokens: torch.Tensor, start_pos: int = 0) -> torch.Tensor:
        """tokens [B, T] -> logits [B, T, vocab] (float32); fills the cache from start_pos."""
        B, T = tokens.shape
        if B > self.max_batch:
            raise InputError(f"batch {B} exceeds max_batch {self.max_batch}")
        if start_pos + T > self.max_seq_len:
            raise InputError(f"{start_pos + T} tokens exceed max_seq_len {self.max_seq_len}")
        return self.model(tokens.to(self.device), start_pos)

    @torch.no_grad()
    def reset(self) -> None:
        """Forget the context. (Positions are explicit, so this only clears the cache.)"""
        for layer in self.model.layers:
            layer.attn.cache.zero_()

    def cache_bytes_per_token(self) -> int:
        a = self.args
        per_layer = a.kv_lora_rank + a.qk_rope_head_dim + (a.index_head_dim if a.sparse_attention else 0)
        return per_layer * a.num_hidden_layers * self.dtype.itemsize  # V3.2: the indexer's keys too

    def weight_bytes(self) -> int:
        """Bytes of weights held (parameters plus any quantized tensors), cache excluded."""
        seen, total = set(), 0
        for t in list(self.model.parameters()) + [q for m in self.model.modules()
                                                  for q in _tensors(getattr(m, "qweight", None))
                                                  + _tensors(getattr(m, "packed", None))]:
            if id(t) not in seen and not t.is_meta:
                seen.add(id(t))
                total += t.numel() * t.element_size()
        return total

    def generate(self, prompt_ids, *, max_new_tokens: int, temperature: float = 0.6, top_p: float = 0.95,
                 stop_ids=None, seed: int | None = None,
                 cancel: threading.Event | None = None) -> Iterator[int]:
        """Yield new token ids (greedy when temperature is 0). Stops after EOS or a stop id,
        which is not yielded; after max_new_tokens; at max_seq_len; or when ``cancel`` is set."""
        ids = [int(i) for i in (prompt_ids.tolist() if isinstance(prompt_ids, torch.Tensor) else prompt_ids)]
        if not ids:
            raise InputError("empty prompt")
        if len(ids) >= self.max_seq_len:
            raise InputError(f"prompt of {len(ids)} tokens does not fit max_seq_len {self.max_seq_len}")
        stops = set(stop_ids or ()) | set(self.args.eos_token_id)
        if self.tokenizer is not None and self.tokenizer.eos_token_id is not None:
            stops.add(self.tokenizer.eos_token_id)
        gen = torch.Generator(device="cpu")
        if seed is not None:
            gen.manual_seed(seed)
        else:
            gen.seed()
        logits = self.forward(torch.tensor([ids]), 0)[0, -1]
        pos = len(ids)
        for _ in range(max_new_tokens):
            if cancel is not None and cancel.is_set():
                return
            tok = sample(logits, temperature, top_p, gen)
            if tok in stops:
                return
            yield tok
            if pos >= self.max_seq_len:
                return
            logits = self.forward(torch.tensor([[tok]]), pos)[0, -1]
            pos += 1

    def chat_prompt(self, messages) -> list[int]:
        """Token ids of the rendered chat template (R1 models start inside "<think>\\n")."""
        if self.tokenizer is None:
            raise ModelError(f"{self.path}: no tokenizer.json")
        return self.tokenizer.encode(self.tokenizer.apply_chat_template(messages, add_generation_prompt=True))


def sample(logits: torch.Tensor, temperature: float, top_p: float, gen: torch.Generator) -> int:
    """logits [vocab] -> one token id: argmax at temperature 0, else nucleus sampling."""
    if temperature <= 0:
        return int(logits.argmax())
    probs = (logits.float().cpu() / temperature).softmax(-1)
    if top_p < 1.0:
        p, idx = probs.sort(descending=True)
        keep = (p.cumsum(-1) - p) < top_p  # always keeps the first
        p = p * keep
        choice = torch.multinomial(p / p.sum(), 1, generator=gen)
        return int(idx[choice])
    return int(torch.multinomial(probs, 1, generator=gen))


def _tensors(q):
    if q is None:
        return []
    q = getattr(q, "tensors", q)  # kernels.quant.QuantizedWeight keeps its tensors in a dict
    if isinstance(q, torch.Tensor):
        return [q]
    if isinstance(q, dict):
        return [v for v in q.values() if isinstance(v, torch.Tensor)]
    if isinstance(q, (list, tuple)):
        return [v for v in q if isinstance(v, torch.Tensor)]
    return [v for v in vars(q).values() if isinstance(v, torch.Tensor)] if hasattr(q, "__dict__") else []
