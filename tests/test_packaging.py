"""The distribution ships every package folder and the prompt templates."""

from __future__ import annotations

import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_every_package_folder_is_listed_in_pyproject():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    listed = set(project["tool"]["setuptools"]["packages"])
    on_disk = {
        ".".join(p.parent.relative_to(ROOT).parts)
        for top in ("app", "local_engine", "kernels", "vocab")
        for p in (ROOT / top).rglob("__init__.py")
        if "__pycache__" not in p.parts
    }
    assert on_disk <= listed, f"add to pyproject packages: {sorted(on_disk - listed)}"
    assert project["tool"]["setuptools"]["package-dir"]["app.templates"] == "prompts"


def test_console_script_points_at_the_cli():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert project["project"]["scripts"]["duet"] == "app.cli:main"


def test_what_duet_serve_imports_at_run_time_is_a_main_dependency():
    import ast
    import re
    import sys

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    deps = {re.split(r"[<>=;\[ ]", d, maxsplit=1)[0].lower().replace("-", "_") for d in project["project"]["dependencies"]}
    imported = set()
    for file in (ROOT / "app" / "serve").glob("*.py"):
        for node in ast.walk(ast.parse(file.read_text())):
            if isinstance(node, ast.Import):
                imported |= {a.name.split(".")[0] for a in node.names}
            elif isinstance(node, ast.ImportFrom) and node.level == 0:
                imported.add(node.module.split(".")[0])
    third_party = {m for m in imported if m not in sys.stdlib_module_names and m not in ("app", "local_engine", "kernels", "vocab")}
    assert {"starlette", "uvicorn", "sse_starlette"} <= third_party
    assert third_party <= deps, f"add to [project] dependencies: {sorted(third_party - deps)}"


def test_the_demo_models_and_sample_project_are_package_data():
    from fnmatch import fnmatch

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    globs = project["tool"]["setuptools"]["package-data"]["app"]
    demo = ROOT / "app" / "data" / "demo"
    files = [p.relative_to(ROOT / "app").as_posix() for p in demo.rglob("*") if p.is_file() and "__pycache__" not in p.parts]
    assert files, "app/data/demo is empty"
    missing = [f for f in files if not any(fnmatch(f, g) and f.count("/") == g.count("/") for g in globs)]
    assert not missing, f"add to pyproject package-data: {missing}"


def test_the_native_kernels_sources_and_headers_are_package_data():
    """What kernels/cpu_native.py compiles at first use ships in the wheel, the headers the C
    files include too (without kquant_dot.h an installed copy would fall back to torch)."""
    from fnmatch import fnmatch

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    globs = project["tool"]["setuptools"]["package-data"]["kernels"]
    sources = [p.relative_to(ROOT / "kernels").as_posix() for p in (ROOT / "kernels" / "csrc").iterdir() if p.is_file()]
    assert any(s.endswith(".h") for s in sources) and any(s.endswith(".c") for s in sources)
    missing = [s for s in sources if not any(fnmatch(s, g) for g in globs)]
    assert not missing, f"add to pyproject package-data: {missing}"
