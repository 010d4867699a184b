"""Copy a training run's models into the package (``app/data/demo``) with a manifest.

    python -m training.package --run build/demo [--eval bench/results/demo_eval.json] [--roles coder]

``--roles coder`` packages a run that retrained the coder alone: the committed reasoner's files
and its manifest entry stay as they are.

The reasoner's weights are stored in bfloat16 (the expert-routing bias stays float32), the coder
is its GGUF (F16). ``manifest.json`` lists each file's sha256 and size, the training config
(model shapes, hyper-parameters, steps, seconds), the data seed, and the eval figures.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shutil
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DEST = ROOT / "app" / "data" / "demo"
KEEP_FP32 = ("e_score_correction_bias",)
# the tokenizer is frozen: both models are trained on the committed one (scripts/train_demo.sh)
TOKENIZER_MADE = ("python -m training.train tokenizer --seed 1 at commit 69bb157 (the coder's answers were then "
                  "whole-function blocks); frozen since, so that retraining one model keeps the two in step")


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _read_log(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.is_file() else []


def package(run: Path, eval_json: Path | None, dest: Path = DEST, eval_train_json: Path | None = None,
            eval_sample_json: Path | None = None, roles: tuple[str, ...] = ("reasoner", "coder")) -> dict:
    dest.mkdir(parents=True, exist_ok=True)
    mpath = dest / "manifest.json"
    before = json.loads(mpath.read_text(encoding="utf-8")) if mpath.is_file() else {}
    for role in ("reasoner", "coder"):
        if role not in roles and role not in before.get("training", {}):
            raise SystemExit(f"{mpath}: no {role} entry to keep; package the {role} too (--roles)")
    if "reasoner" in roles:
        _copy_reasoner(run, dest)
    if "coder" in roles:
        shutil.copy2(run / "coder" / "coder.gguf", dest / "coder.gguf")
    cfg = json.loads((dest / "reasoner" / "config.json").read_text())

    files = {}
    for p in sorted(dest.rglob("*")):
        if p.is_file() and p.name != "manifest.json" and "sample" not in p.relative_to(dest).parts:
            files[str(p.relative_to(dest))] = {"sha256": sha256(p), "bytes": p.stat().st_size}
    training, seed = {}, before.get("data_seed")
    for role in ("reasoner", "coder"):
        if role not in roles:  # the committed model, kept as the manifest had it
            training[role] = before["training"][role]
            continue
        log = _read_log(run / role / "train_log.jsonl")
        start = next((r for r in log if r.get("event") == "start"), {})
        seed = start.get("seed", seed)  # the data generator's seed (each log's start)
        steps = [r for r in log if "step" in r and "loss" in r]
        ckpt = json.loads((run / role / "checkpoint.json").read_text()) if (run / role / "checkpoint.json").is_file() else {}
        training[role] = {"params": start.get("params"), "hyper": start.get("hp"), "threads": start.get("threads"),
                          "budget_minutes": start.get("minutes"), "steps": ckpt.get("step"),
                          "seconds": ckpt.get("seconds"), "final_loss_ema": ckpt.get("ema_loss"),
                          "examples_seen": (ckpt.get("step") or 0) * ((start.get("hp") or {}).get("batch") or 0),
                          "last_logged": steps[-1] if steps else None,
                          "config": cfg if role == "reasoner" else json.loads((run / role / "hf" / "config.json").read_text())}
    manifest = {
        "what": "Duet's demo models, trained in this repository (python -m training.train all): "
                "they find and fix one planted bug in small Python modules, nothing more.",
        "reproduce": "bash scripts/train_demo.sh  (both models side by side for 85 minutes on one thread each, "
                     "on the committed tokenizer; this packaging; python -m training.eval)",
        "status": "trained for one narrow task (find and fix the one planted bug in a small Python module); "
                  "see eval for how often it succeeds on modules it never saw",
        "data_seed": seed,
        "tokenizer": {"kind": "byte-level BPE (tokenizers)", "vocab_size": cfg["vocab_size"], "made": TOKENIZER_MADE},
        "files": files,
        "total_bytes": sum(f["bytes"] for f in files.values()),
        "training": training,
        "eval": None,
    }
    if eval_json and eval_json.is_file():
        ev = json.loads(eval_json.read_text())
        manifest["eval"] = {k: v for k, v in ev.items() if not k.endswith("rows")}
    if eval_train_json and eval_train_json.is_file():  # unseen modules in the training templates
        ev = json.loads(eval_train_json.read_text())
        manifest["eval_train_style"] = {k: v for k, v in ev.items() if not k.endswith("rows")}
    if eval_sample_json and eval_sample_json.is_file():  # the demo's sample project
        ev = json.loads(eval_sample_json.read_text())
        manifest["eval_sample_project"] = {k: v for k, v in ev.items() if not k.endswith("rows")}
    mpath.write_text(json.dumps(manifest, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    return manifest


def _copy_reasoner(run: Path, dest: Path) -> None:
    """The run's HF folder, its weights in bfloat16 (the routing bias stays float32)."""
    import torch
    from safetensors.torch import load_file, save_file

    rdest = dest / "reasoner"
    if rdest.exists():
        shutil.rmtree(rdest)
    rdest.mkdir()
    src = run / "reasoner" / "hf"
    tensors = load_file(str(src / "model.safetensors"))
    tensors = {k: (v if any(s in k for s in KEEP_FP32) or not v.is_floating_point() else v.to(torch.bfloat16)).contiguous()
               for k, v in tensors.items()}
    save_file(tensors, str(rdest / "model.safetensors"), metadata={"format": "pt"})
    cfg = json.loads((src / "config.json").read_text())
    cfg["dtype"] = "bfloat16"
    (rdest / "config.json").write_text(json.dumps(cfg, indent=2) + "\n")
    for name in ("tokenizer.json", "tokenizer_config.json", "generation_config.json"):
        if (src / name).is_file():
            shutil.copy2(src / name, rdest / name)


def main(argv=None):
    ap = argparse.ArgumentParser(prog="python -m training.package")
    ap.add_argument("--run", type=Path, default=ROOT / "build" / "demo")
    ap.add_argument("--eval", type=Path, default=None)
    ap.add_argument("--eval-train", type=Path, default=None, help="the eval's --style train figures")
    ap.add_argument("--eval-sample", type=Path, default=None, help="the eval's --style sample figures")
    ap.add_argument("--roles", default="reasoner,coder", help="the models this run trained (the others are kept)")
    a = ap.parse_args(argv)
    roles = tuple(r for r in a.roles.split(",") if r)
    if not roles or set(roles) - {"reasoner", "coder"}:
        raise SystemExit(f"--roles: {a.roles!r}: name reasoner, coder or both")
    m = package(a.run, a.eval, eval_train_json=a.eval_train, eval_sample_json=a.eval_sample, roles=roles)
    print(f"packaged {len(m['files'])} files, {m['total_bytes'] / 1e6:.1f} MB into {DEST}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
