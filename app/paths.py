"""Where Duet reads its configuration and keeps its data."""

from __future__ import annotations

import os
from pathlib import Path


def data_dir() -> Path:
    """Sessions, undo history and the demo model live here ($DUET_HOME wins)."""
    home = os.environ.get("DUET_HOME")
    if home:
        path = Path(home).expanduser()
    else:
        import platformdirs

        path = Path(platformdirs.user_data_dir("duet", appauthor=False))
    path.mkdir(parents=True, exist_ok=True)
    return path


def default_config_path() -> Path:
    import platformdirs

    return Path(platformdirs.user_config_dir("duet", appauthor=False)) / "config.toml"


def find_config(explicit: str | None) -> Path | None:
    """The config file to read: --config, then $DUET_CONFIG, then the platform file."""
    if explicit:
        return Path(explicit).expanduser()
    env = os.environ.get("DUET_CONFIG")
    if env:
        return Path(env).expanduser()
    candidate = default_config_path()
    return candidate if candidate.is_file() else None
