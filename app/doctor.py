"""`duet doctor`: check each configured role's backend and say how to fix what fails.

Cheap checks only (file headers, a /v1/models request): no torch, no llama_cpp import.
Exit 0 when every role is usable, 2 when the configuration points at something
unusable (a missing file, an unreachable server, an unknown model), 1 otherwise.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from app.config import Config, RoleConfig

SUPPORTED_ARCHS = ("DeepseekV3ForCausalLM", "DeepseekV2ForCausalLM", "DeepseekV32ForCausalLM")


@dataclass
class Check:
    role: str
    backend: str
    target: str
    ok: bool
    context: str = "-"
    detail: str = ""
    fix: str = ""
    config_problem: bool = True  # False: the environment (a missing package), exit 1


def run_doctor(config: Config) -> int:
    checks = [check_role(config.role(name), config.source) for name in ("reasoner", "coder")]
    print(f"config: {config.source}")
    print(format_table(checks))
    for c in checks:
        if not c.ok and c.fix:
            print(f"{c.role}: {c.detail} -> fix: {c.fix}")
    if any(config.role(name).backend == "local" for name in ("reasoner", "coder")):
        print("\nengine paths on this CPU (local backend):")
        print(engine_paths())
    if all(c.ok for c in checks):
        return 0
    return 2 if any(c.config_problem for c in checks if not c.ok) else 1


def check_role(rc: RoleConfig, source: str) -> Check:
    if rc.backend == "openai":
        return _check_openai(rc, source)
    if rc.backend == "llama.cpp":
        return _check_gguf(rc, source)
    return _check_local(rc, source)


def engine_paths() -> str:
    """Which of the engine's CPU paths this machine gets and why (kernels.capability), asked of
    a child process so that doctor itself never imports torch."""
    try:
        out = subprocess.run([sys.executable, "-m", "kernels.capability"], capture_output=True, text=True,
                             timeout=120)
    except (OSError, subprocess.SubprocessError) as exc:
        return f"  unknown: the capability probe did not run ({exc})"
    try:
        rows = json.loads(out.stdout.strip().splitlines()[-1])
    except (ValueError, IndexError):
        last = (out.stderr.strip().splitlines() or ["no output"])[-1]
        return f"  unknown: the capability probe failed ({last})"
    width = max(len(name) for name, _ in rows)
    return "\n".join(f"  {name.ljust(width)}  {state}" for name, state in rows)


def format_table(checks: list[Check]) -> str:
    rows = [("role", "backend", "model", "status", "context", "detail")]
    for c in checks:
        rows.append((c.role, c.backend, c.target, "ok" if c.ok else "FAIL", c.context, c.detail))
    widths = [max(len(r[i]) for r in rows) for i in range(5)]
    return "\n".join("  ".join(r[i].ljust(widths[i]) for i in range(5)) + "  " + r[5] for r in rows)


def _check_gguf(rc: RoleConfig, source: str) -> Check:
    from app.gguf_meta import NotGGUF, context_length

    if importlib.util.find_spec("llama_cpp") is None:
        return Check(rc.role, rc.backend, rc.label, False, detail="llama-cpp-python is not installed",
                     fix="pip install llama-cpp-python", config_problem=False)
    if rc.demo and rc.path is None:  # the optional Gemma demo
        from app.demo import GEMMA_INSTALL_HINT, demo_available

        if not demo_available():
            return Check(rc.role, rc.backend, rc.label, False, detail="demo model not installed",
                         fix=GEMMA_INSTALL_HINT, config_problem=False)
        from app.demo import demo_gguf_path

        path = demo_gguf_path()
    else:
        path = rc.path
    if path is None or not Path(path).is_file():
        return Check(rc.role, rc.backend, rc.label, False, detail=f"no such file: {path}",
                     fix=f"set {rc.role}.path in {source} to a .gguf file")
    try:
        trained = context_length(Path(path))
    except (NotGGUF, OSError) as exc:
        return Check(rc.role, rc.backend, rc.label, False, detail=str(exc),
                     fix=f"point {rc.role}.path in {source} at a valid .gguf file")
    use = rc.context or trained
    note = str(path)
    if rc.demo:
        note = ("demo model (Gemma 3 270M base): for trying Duet, not for real work" if rc.path is None
                else f"demo model trained in this repo, for one task only (a planted bug in a small Python module): {path}")
    else:
        local = _gguf_summary(Path(path))
        if local is not None and local.runs_locally:
            note += '; a deepseek2 file: backend = "local" runs it too (Duet\'s MLA/MoE engine)'
    if rc.context and trained and rc.context > trained:
        note += f"; context {rc.context} exceeds the model's {trained}"
    return Check(rc.role, rc.backend, rc.label, True, context=str(use or "-"), detail=note)


def _gguf_summary(path: Path):
    from local_engine.errors import ModelError
    from local_engine.gguf_file import summarize

    try:
        return summarize(path)
    except (ModelError, OSError):
        return None


def _check_local_gguf(rc: RoleConfig, source: str) -> Check:
    from local_engine.errors import ModelError
    from local_engine.gguf_file import summarize

    try:
        info = summarize(rc.path)
    except (ModelError, OSError) as exc:
        return Check(rc.role, rc.backend, rc.label, False, detail=str(exc),
                     fix=f"point {rc.role}.path in {source} at a valid .gguf file")
    if not info.runs_locally:
        return Check(rc.role, rc.backend, rc.label, False, detail=info.why(),
                     fix=f'set {rc.role}.backend = "llama.cpp" in {source}')
    use = rc.context or info.context_length
    return Check(rc.role, rc.backend, rc.label, True, context=str(use or "-"), detail=f"{info.why()}; {rc.path}")


def _check_local(rc: RoleConfig, source: str) -> Check:
    path = rc.path
    if importlib.util.find_spec("torch") is None:
        return Check(rc.role, rc.backend, rc.label, False, detail="torch is not installed",
                     fix="pip install torch", config_problem=False)
    if path is not None and Path(path).is_file():
        return _check_local_gguf(rc, source)
    cfg_file = Path(path) / "config.json" if path else None
    if cfg_file is None or not cfg_file.is_file():
        return Check(rc.role, rc.backend, rc.label, False, detail=f"no config.json in {path}",
                     fix=f"set {rc.role}.path in {source} to a Hugging Face model folder or a deepseek2 .gguf file")
    try:
        cfg = json.loads(cfg_file.read_text(encoding="utf-8"))
    except (ValueError, OSError) as exc:
        return Check(rc.role, rc.backend, rc.label, False, detail=f"{cfg_file}: unreadable ({exc})",
                     fix="re-download the model's config.json")
    archs = cfg.get("architectures") or []
    if not any(a in SUPPORTED_ARCHS for a in archs):
        return Check(rc.role, rc.backend, rc.label, False, detail=f"{cfg_file}: architecture {archs} is not supported",
                     fix="the local backend runs DeepSeek-V3.2/V3/R1/V2 checkpoints; use llama.cpp or openai for others")
    if not any(Path(path).glob("*.safetensors")):
        return Check(rc.role, rc.backend, rc.label, False, detail=f"no *.safetensors in {path}",
                     fix="download the weights (safetensors) into that folder")
    trained = cfg.get("max_position_embeddings")
    use = rc.context or trained
    quant = f", {rc.quant}" if rc.quant else ""
    return Check(rc.role, rc.backend, rc.label, True, context=str(use or "-"), detail=f"{archs[0]}{quant}, {path}")


def _check_openai(rc: RoleConfig, source: str) -> Check:
    from app.backends.probe import probe

    target = f"{rc.model or '?'} @ {rc.url}"
    if rc.api_key_env and not os.environ.get(rc.api_key_env):
        return Check(rc.role, rc.backend, target, False, detail=f"${rc.api_key_env} is not set",
                     fix=f"export {rc.api_key_env}, or remove {rc.role}.api_key_env from {source}")
    result = probe(rc)
    if not result.reachable:
        return Check(rc.role, rc.backend, target, False, detail=result.message,
                     fix=f"start the server, or fix {rc.role}.url in {source}")
    if not result.model_ok:
        return Check(rc.role, rc.backend, target, False, detail=result.message,
                     fix=f"set {rc.role}.model in {source} to one the server lists")
    detail = result.message
    return Check(rc.role, rc.backend, target, True, context=str(rc.context or result.context or "-"), detail=detail)
