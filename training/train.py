"""Train the demo models on CPU.

    python -m training.train all --out build/demo --minutes 40     # tokenizer, then both models side by side
    python -m training.train reasoner --out build/demo --minutes 5  # one model (the tokenizer must exist)

The tokenizer step copies the committed tokenizer (the one both committed models read), so a
model retrained alone stays in step with the other; ``--new-tokenizer`` trains a new one from the
generator instead (then retrain both models).

Examples are generated on the fly from the seeded generator (``training.render``), so no data
is stored or downloaded. The learning rate follows a cosine over the time budget, so a run of
any length ends annealed; a checkpoint is written every few minutes and at the end (a partial
run is usable). The coder is written to GGUF at each checkpoint too (``training.gguf_export``).
"""

from __future__ import annotations

import argparse
import json
import math
import random
import shutil
import subprocess
import sys
import time
from pathlib import Path

import torch

from app import demo

DEFAULTS = {
    "reasoner": dict(batch=8, lr=3e-3, warmup=40, think_off=0.1, mtp_weight=0.3, bias_speed=1e-3, prompt_weight=0.5,
                     names="syllables", decision_weight=1.0, design_share=0.0),
    "coder": dict(batch=8, lr=3e-3, warmup=40, prompt_weight=0.5, names="pieces", decision_weight=1.0,
                  miscopy_share=0.0),
}
# miscopy_share: the share of the coder's plans whose line as it should be is miscopied (a name
# misspelt or another of the file's, a number the fix does not touch changed:
# training.render.miscopied) while its target stays the right fix. Tried at 0.3 (85 minutes, one
# thread, beside a control run of this recipe): given a correct plan the coder fixed 25% of 60
# held-out modules (the control 70%, the committed coder 82%), `duet run` 15% of seed 7's (the
# control 55%); not kept
# design_share: the share of the reasoner's examples asked with the design template, the one
# `duet run --role reasoner` and `/plan` send (the rest: the template the router picks for the
# request, review or analysis); the committed reasoner's recipe (scripts/train_demo.sh) sets 0.4
# names: how the training generator invents names (training.tasks.NAME_PARTS)
# decision_weight: the loss weight on the tokens where a target decides rather than copies (the
# reasoner's: stop reading back here or go on, the finding, the diagnosis; the coder's: the
# REPLACE lines; training.render.decision_spans), 1 = none. Tried at 4 (85 minutes each, the
# recipe otherwise): the reasoner found 50% of held-out modules against 33%, but through
# `duet run` (whose prompt, the design template, training never shows it) fixed fewer sample and
# training-style modules (2 / 5 of 6 / 12 against 4 / 6); the coder fixed 63% of held-out modules
# given a plan against 80%. Neither was kept.
# kind_weights: {kind: weight} for the bug kinds drawn (training.render.sample_module; unset: the
# uniform draw, the committed recipe's stream). The committed reasoner finds wrong-name bugs worst
# (after the tests, 9 of 20 held-out on dev seeds 10-13 against 88 of 100 for the other kinds).
# Tried as a second schedule (--init the committed reasoner, 25 minutes, one thread, lr 5e-4,
# the recipe otherwise, ~750 steps), beside a control with the uniform draw: with wrong_name at
# 2 it found 94 of those 120 (wrong name 11 of 20), the control 95 (9), the committed 97 (9).
# Neither kept.


def log(path: Path, **row):
    row["t"] = round(time.time(), 1)
    with open(path, "a", encoding="utf-8") as f:
        f.write(json.dumps(row) + "\n")


def build_batch(tok, examples, device="cpu", decision_weight: float = 1.0):
    """(ids, labels, prompt_labels, weights): the answer's tokens as labels, the prompt's as
    prompt_labels (-100 elsewhere and on padding); weights is None, or with ``decision_weight``
    other than 1 each label's loss weight (that weight on the tokens that overlap
    ``decision_spans``, 1 elsewhere)."""
    from training.render import decision_spans

    seqs, labels, prompt_labels, weights = [], [], [], []
    for e in examples:
        p = tok.encode(e.prompt).ids
        enc = tok.encode(e.target)
        t = enc.ids
        seqs.append(p + t)
        labels.append([-100] * len(p) + t)
        prompt_labels.append(p)
        if decision_weight != 1.0:
            spans = decision_spans(e.target)
            weights.append([1.0] * len(p) + [decision_weight if any(a < e_ and s_ < b for s_, e_ in spans) else 1.0
                                              for a, b in enc.offsets])
    T = max(map(len, seqs))
    pad = 1
    ids = torch.full((len(seqs), T), pad, dtype=torch.long)
    lab = torch.full((len(seqs), T), -100, dtype=torch.long)
    plab = torch.full((len(seqs), T), -100, dtype=torch.long)
    wts = torch.ones((len(seqs), T)) if weights else None
    for i, (s, l, pl) in enumerate(zip(seqs, labels, prompt_labels)):
        ids[i, : len(s)] = torch.tensor(s)
        lab[i, : len(l)] = torch.tensor(l)
        plab[i, : len(pl)] = torch.tensor(pl)
        if wts is not None:
            wts[i, : len(s)] = torch.tensor(weights[i])
    return ids, lab, plab, wts


def example_stream(role: str, seed: int, think_off: float = 0.0, names: str = "syllables", design_share: float = 0.0,
                   miscopy_share: float = 0.0, kind_weights: dict[str, float] | None = None):
    from training import tasks
    from training.render import coder_example, reasoner_example, sample_module

    tasks.NAME_PARTS = names
    rng = random.Random(seed)
    while True:
        m = sample_module(rng, "train", kind_weights)
        if role == "reasoner":
            think = rng.random() >= think_off
            design = design_share > 0 and rng.random() < design_share  # no draw at 0: the stream stays as it was
            yield reasoner_example(rng, m, think=think, intent="design" if design else None)
        else:
            yield coder_example(rng, m, miscopy_share=miscopy_share)


def batches(role, tok, seed, batch, think_off=0.0, names="syllables", decision_weight=1.0, design_share=0.0,
            miscopy_share=0.0, kind_weights=None):
    """Length-sorted batches from pools of 8 batches: less padding."""
    stream = example_stream(role, seed, think_off, names, design_share, miscopy_share, kind_weights)
    while True:
        pool = [next(stream) for _ in range(batch * 8)]
        pool.sort(key=lambda e: len(e.prompt) + len(e.target))
        chunks = [pool[i:i + batch] for i in range(0, len(pool), batch)]
        random.Random(seed + len(pool)).shuffle(chunks)
        for c in chunks:
            yield build_batch(tok, c, decision_weight=decision_weight)


def train_one(role: str, out: Path, minutes: float, seed: int, threads: int, save_every: float = 5.0,
              max_steps: int | None = None, size: dict | None = None, init: Path | None = None):
    from tokenizers import Tokenizer

    from training import models

    torch.set_num_threads(threads)
    torch.manual_seed(seed)
    hp = DEFAULTS[role]
    tok = Tokenizer.from_file(str(out / "tokenizer.json"))
    V = tok.get_vocab_size()
    if role == "reasoner":
        config = models.use_training_attention(models.reasoner_config(V, **(size or {})))
        model = models.Reasoner(config)
    else:
        config = models.use_training_attention(models.coder_config(V, **(size or {})))
        model = models.Coder(config)
    if init is not None:  # continue from a saved model: a second, shorter schedule
        if role == "coder":
            from transformers import LlamaForCausalLM

            model.lm.load_state_dict(LlamaForCausalLM.from_pretrained(init).state_dict())
        else:
            model.load(init)
        seed += 1000  # other examples than the first schedule's
    n_params = sum(p.numel() for p in model.parameters())
    folder = out / role
    folder.mkdir(parents=True, exist_ok=True)
    logf = folder / "train_log.jsonl"
    if init is None:
        logf.unlink(missing_ok=True)
    log(logf, event="start", role=role, params=n_params, minutes=minutes, seed=seed, threads=threads, hp=hp,
        init=str(init) if init else None)
    opt = torch.optim.AdamW(model.parameters(), lr=hp["lr"], betas=(0.9, 0.95), weight_decay=0.01)
    gates = model.gates()
    counts = {}

    def hook(mod, inp, outp):
        idx = outp[2]
        counts[id(mod)] = counts.get(id(mod), 0) + torch.bincount(idx.flatten(), minlength=mod.num_experts).float()

    handles = [g.register_forward_hook(hook) for g in gates]
    budget = minutes * 60
    start = time.time()
    last_save = start
    step = 0
    stream = batches(role, tok, seed, hp["batch"], hp.get("think_off", 0.0), hp["names"], hp.get("decision_weight", 1.0),
                     hp.get("design_share", 0.0), hp.get("miscopy_share", 0.0), hp.get("kind_weights"))
    model.train()
    ema = None
    while True:
        elapsed = time.time() - start
        if elapsed >= budget or (max_steps and step >= max_steps):
            break
        frac = elapsed / budget
        lr = hp["lr"] * min(1.0, (step + 1) / hp["warmup"]) * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * frac)))
        for g in opt.param_groups:
            g["lr"] = lr
        ids, lab, plab, wts = next(stream)
        counts.clear()
        if role == "reasoner":
            loss, main, mtp = model(ids, lab, hp["mtp_weight"], plab, hp["prompt_weight"], wts)
        else:
            loss, main, mtp = model(ids, lab, plab, hp["prompt_weight"], wts)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        # V3's auxiliary-loss-free balancing: nudge each expert's bias against its load
        with torch.no_grad():
            for g in gates:
                c = counts.get(id(g))
                if c is not None:
                    g.e_score_correction_bias += hp["bias_speed"] * torch.sign(c.mean() - c)
        step += 1
        ema = main.item() if ema is None else 0.95 * ema + 0.05 * main.item()
        if step % 10 == 0:
            log(logf, step=step, loss=round(main.item(), 4), ema=round(ema, 4), mtp=round(float(mtp), 4),
                lr=round(lr, 6), tokens=int(ids.numel()), elapsed=round(elapsed, 1))
        if time.time() - last_save > save_every * 60:
            save(model, folder, tok, role, config, step, ema, time.time() - start)
            last_save = time.time()
    for h in handles:
        h.remove()
    save(model, folder, tok, role, config, step, ema, time.time() - start)
    log(logf, event="done", steps=step, ema=ema, seconds=round(time.time() - start, 1))


def save(model, folder: Path, tok, role, config, step, ema, seconds):
    from training.tokenizer import save_tokenizer

    model.eval()
    hf = folder / "hf"
    model.save(hf)
    save_tokenizer(tok, hf, reasoning=role == "reasoner")
    info = {"step": step, "ema_loss": ema, "seconds": round(seconds, 1)}
    (folder / "checkpoint.json").write_text(json.dumps(info) + "\n")
    if role == "coder":
        from training.gguf_export import write_gguf

        write_gguf(hf, folder / "coder.gguf")
    model.train()


def main(argv=None):
    ap = argparse.ArgumentParser(prog="python -m training.train")
    ap.add_argument("what", choices=["all", "tokenizer", "reasoner", "coder"])
    ap.add_argument("--out", type=Path, default=Path("build/demo"))
    ap.add_argument("--minutes", type=float, default=40.0)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--max-steps", type=int, default=None)
    ap.add_argument("--size", type=str, default="", help="JSON overrides of the model config")
    ap.add_argument("--hp", type=str, default="", help="JSON overrides of the hyper-parameters (batch, lr, ...)")
    ap.add_argument("--init", type=Path, default=None, help="start from this saved HF folder (a second schedule)")
    ap.add_argument("--new-tokenizer", action="store_true",
                    help="tokenizer/all: train a new tokenizer instead of copying the committed one")
    a = ap.parse_args(argv)
    a.out.mkdir(parents=True, exist_ok=True)
    if a.what == "all":
        (a.out / "run.json").write_text(json.dumps({"seed": a.seed, "minutes": a.minutes, "started": time.time()}) + "\n")
    if a.what in ("all", "tokenizer"):
        if a.new_tokenizer:
            from training.tokenizer import train_tokenizer

            train_tokenizer(seed=a.seed).save(str(a.out / "tokenizer.json"))
        else:
            shutil.copy2(demo.reasoner_path() / "tokenizer.json", a.out / "tokenizer.json")
        if a.what == "tokenizer":
            return 0
    if a.what == "all":  # both models side by side, one thread each
        procs = [subprocess.Popen([sys.executable, "-m", "training.train", role, "--out", str(a.out),
                                   "--minutes", str(a.minutes), "--seed", str(a.seed), "--threads", "1"])
                 for role in ("reasoner", "coder")]
        return max(p.wait() for p in procs)
    size = json.loads(a.size) if a.size else None
    if a.hp:
        DEFAULTS[a.what].update(json.loads(a.hp))
    train_one(a.what, a.out, a.minutes, a.seed, a.threads, max_steps=a.max_steps, size=size, init=a.init)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
