"""Duet's PyTorch engine for DeepSeek-V3/R1 and V2-architecture checkpoints.

Importing this package is cheap: torch loads only when ``Engine`` is first touched.
"""

__all__ = ["Engine"]


def __getattr__(name):
    if name == "Engine":
        from local_engine.engine import Engine

        return Engine
    raise AttributeError(f"module 'local_engine' has no attribute {name!r}")
