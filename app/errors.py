"""Errors the user caused (exit 2) versus everything else (exit 1)."""

from __future__ import annotations


class DuetError(Exception):
    """A failure with a one-line message meant for the user."""

    exit_code = 1


class UsageError(DuetError):
    """Bad usage, configuration or model input: exit status 2."""

    exit_code = 2


class ModelLoadError(UsageError):
    """The configured model file or folder exists but cannot be loaded (corrupt, unsupported)."""


class ConfigError(UsageError):
    """A problem in a configuration file, naming the file and the key."""

    def __init__(self, file: str, key: str, problem: str):
        self.file, self.key, self.problem = file, key, problem
        where = f"{file}: {key}" if key else file
        super().__init__(f"{where}: {problem}")
