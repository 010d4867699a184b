"""Find models and servers a new user already has, for the first-run screen.

Looks in the usual places only (no deep crawl of the disk) and probes the usual
loopback ports of OpenAI-compatible servers. Never reaches beyond 127.0.0.1.
"""

from __future__ import annotations

import json
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

# The loopback ports local servers listen on by default.
SERVER_PORTS: dict[int, str] = {
    11434: "Ollama",
    8080: "llama-server",
    1234: "LM Studio",
    8000: "vLLM",
    30000: "SGLang",
}
MAX_DEPTH = 5  # hub cache: models--org--name/snapshots/<rev>/file


@dataclass(frozen=True)
class Found:
    kind: str  # "gguf" | "hf" | "server"
    label: str
    location: str  # a file, a folder or a base url
    detail: str = ""
    backends: tuple[str, ...] = ()  # which backends can serve it, the preferred first

    def config_snippet(self, role: str = "reasoner") -> str:
        """The [role] table that would use this model."""
        if self.kind == "server":
            return f'[{role}]\nbackend = "openai"\nurl = {toml_str(self.location)}\nmodel = {toml_str(self.label)}\n'
        backend = self.backends[0] if self.backends else ("llama.cpp" if self.kind == "gguf" else "local")
        return f'[{role}]\nbackend = "{backend}"\npath = {toml_str(self.location)}\n'


def toml_str(value: str) -> str:
    """A TOML basic string (JSON's escapes are TOML's for these characters)."""
    return json.dumps(value, ensure_ascii=False)


def model_folders(home: Path | None = None) -> list[Path]:
    """The folders where model files usually live."""
    home = home or Path.home()
    hub = os.environ.get("HF_HUB_CACHE") or (
        Path(os.environ["HF_HOME"]) / "hub" if os.environ.get("HF_HOME") else home / ".cache" / "huggingface" / "hub"
    )
    return [
        Path(hub),
        home / ".lmstudio" / "models",
        home / ".cache" / "lm-studio" / "models",
        home / "models",
    ]


def find_model_files(folders: list[Path]) -> list[Found]:
    found: dict[str, Found] = {}
    for folder in folders:
        if not folder.is_dir():
            continue
        for path, dirs, files in _walk(folder):
            for name in files:
                if name.endswith(".gguf") and not _is_extra_shard(name):
                    file = path / name
                    size = _size_gb(file)
                    why, backends = _gguf_backends(file)
                    found[str(file)] = Found("gguf", _label(folder, file), str(file), f"GGUF, {size:.1f} GB; {why}",
                                             backends)
            if "config.json" in files and any(f.endswith(".safetensors") for f in files):
                found[str(path)] = Found("hf", _label(folder, path), str(path), "safetensors folder")
                dirs.clear()
    return sorted(found.values(), key=lambda f: f.location)


def probe_servers(ports: dict[int, str] | None = None, timeout: float = 0.5) -> list[Found]:
    """Ask each loopback port for /v1/models; list the servers that answer."""
    ports = SERVER_PORTS if ports is None else ports
    with ThreadPoolExecutor(max_workers=max(1, len(ports))) as pool:
        results = pool.map(lambda item: _probe(item[0], item[1], timeout), ports.items())
    return [f for group in results for f in group]


def discover(home: Path | None = None, ports: dict[int, str] | None = None) -> list[Found]:
    return find_model_files(model_folders(home)) + probe_servers(ports)


def _probe(port: int, name: str, timeout: float) -> list[Found]:
    import httpx

    base = f"http://127.0.0.1:{port}/v1"
    try:
        response = httpx.get(f"{base}/models", timeout=timeout)
        models = response.json().get("data", []) if response.status_code == 200 else None
    except (httpx.HTTPError, ValueError, AttributeError):
        return []
    if models is None:
        return []
    from app.backends.probe import is_duet_serve

    ids = [m.get("id", "?") for m in models if isinstance(m, dict)] or ["default"]
    name = "duet serve" if is_duet_serve(models) else name  # port 8000 is vLLM's default and ours
    return [Found("server", model_id, base, f"{name} on port {port}") for model_id in ids]


def _walk(root: Path):
    base_depth = len(root.parts)
    for dirpath, dirs, files in os.walk(root, followlinks=True):
        path = Path(dirpath)
        if len(path.parts) - base_depth >= MAX_DEPTH:
            dirs.clear()
        dirs[:] = [d for d in dirs if not d.startswith(".")]
        yield path, dirs, files


def _is_extra_shard(name: str) -> bool:
    # "model-00002-of-00003.gguf": llama.cpp loads the rest from the first shard.
    parts = name.rsplit("-of-", 1)
    return len(parts) == 2 and not parts[0].endswith("00001")


def _label(folder: Path, path: Path) -> str:
    rel = path.relative_to(folder)
    first = rel.parts[0]
    if first.startswith("models--"):  # HF hub cache layout
        return first[len("models--"):].replace("--", "/") + ("" if path.is_dir() else f" ({path.name})")
    return str(rel)


def _gguf_backends(file: Path) -> tuple[str, tuple[str, ...]]:
    """(why, backends): a deepseek2 file of types Duet's engine runs can be served by "local"
    (preferred: Duet's own MLA/MoE engine) or "llama.cpp"; anything else by llama.cpp."""
    from local_engine.errors import ModelError
    from local_engine.gguf_file import summarize

    try:
        info = summarize(file)
    except (ModelError, OSError) as exc:
        return f"unreadable header ({exc})", ("llama.cpp",)
    return info.why(), (("local", "llama.cpp") if info.runs_locally else ("llama.cpp",))


def _size_gb(file: Path) -> float:
    """The model's size: a split model's shards together."""
    from local_engine.gguf_file import shard_paths

    try:
        return sum(p.stat().st_size for p in shard_paths(file)) / 1e9
    except OSError:
        return 0.0
