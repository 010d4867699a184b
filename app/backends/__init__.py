"""Backends: our engine, llama.cpp in process, and OpenAI-compatible servers.

`make_backend(role_cfg)` gives the backend for a role. Models load on first use and are
shared: two roles on the same GGUF use one `Llama`, on the same folder one `Engine`.
Nothing heavy is imported here (no torch, no llama_cpp) until a model loads.
"""

from __future__ import annotations

import threading
from pathlib import Path

from app.backends.base import Backend
from app.config import RoleConfig

__all__ = ["Backend", "close_all", "make_backend"]

_lock = threading.Lock()
_backends: dict[tuple, Backend] = {}
_models: dict[tuple, object] = {}


def demo_path() -> Path:
    """The demo GGUF (assembled under the data dir on first use)."""
    from app.demo import demo_gguf_path

    return demo_gguf_path()


def make_backend(rc: RoleConfig) -> Backend:
    with _lock:
        backend = _backends.get(_key(rc))
        if backend is None:
            backend = _backends[_key(rc)] = _build(rc)
        return backend


def _key(rc: RoleConfig) -> tuple:
    return (rc.role, rc)


def _build(rc: RoleConfig) -> Backend:
    if rc.backend == "openai":
        from app.backends.openai import OpenAIBackend

        return OpenAIBackend(rc)
    if rc.backend == "llama.cpp":
        from app.backends.llamacpp import LlamaCppBackend, LlamaModel

        path = (Path(rc.path) if rc.path else demo_path()).resolve()  # no path: the Gemma demo
        key = ("llama.cpp", path, rc.context, rc.threads, rc.gpu_layers, rc.device)
        model = _models.get(key) or _models.setdefault(
            key, LlamaModel(path, context=rc.context, threads=rc.threads, gpu_layers=rc.gpu_layers, device=rc.device))
        return LlamaCppBackend(rc, model)
    if rc.backend == "local":
        from app.backends.local import LocalBackend, LocalModel

        path = Path(rc.path).resolve()
        key = ("local", path, rc.device, rc.dtype, rc.quant, rc.context)
        model = _models.get(key) or _models.setdefault(
            key, LocalModel(path, device=rc.device, dtype=rc.dtype, quant=rc.quant, context=rc.context))
        return LocalBackend(rc, model)
    raise ValueError(f"unknown backend {rc.backend!r}")


def close_all() -> None:
    """Release every model and connection (tests, app exit)."""
    with _lock:
        for backend in _backends.values():
            backend.close()
        _backends.clear()
        _models.clear()
