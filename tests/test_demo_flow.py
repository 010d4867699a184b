"""`duet --demo`: the trained reasoner on our engine (int8) and the coder on llama.cpp, a fresh
sample project as the workspace, and a welcome that says what to try."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

from app import demo
from app.config import demo_config


def test_the_demo_config_runs_the_reasoner_on_our_engine_and_the_coder_on_llama_cpp():
    config = demo_config()
    r, c = config.reasoner, config.coder
    assert (r.backend, r.quant, r.path) == ("local", "int8", demo.reasoner_path())
    assert (c.backend, c.path) == ("llama.cpp", demo.coder_path())
    assert r.path.is_dir() and c.path.is_file()
    assert config.is_demo and "demo" in r.label and r.label != c.label
    assert r.sampling.temperature == 0.0 and c.sampling.temperature == 0.0


def test_demo_gets_a_fresh_sample_project_unless_a_workspace_is_given(tmp_path, duet_home):
    from app.cli import load_user_config

    args = SimpleNamespace(demo=True, workspace=None, config=None)
    load_user_config(args)
    root = Path(args.workspace)
    assert root.is_dir() and str(root).startswith(str(duet_home))
    assert subprocess.run([sys.executable, "run_tests.py"], cwd=root, capture_output=True).returncode == 1
    (root / "calc.py").write_text("edited\n")
    again = SimpleNamespace(demo=True, workspace=None, config=None)
    load_user_config(again)
    assert (Path(again.workspace) / "calc.py").read_text() == (demo.sample_source() / "calc.py").read_text()
    mine = SimpleNamespace(demo=True, workspace=str(tmp_path), config=None)
    load_user_config(mine)
    assert mine.workspace == str(tmp_path)


def test_every_sample_module_has_one_bug_its_test_catches(tmp_path):
    root = demo.fresh_sample_project(tmp_path / "p")
    out = subprocess.run([sys.executable, "run_tests.py"], cwd=root, capture_output=True, text=True).stdout
    modules = sorted(p.name for p in root.glob("*.py") if not p.name.startswith(("test_", "run_tests")))
    assert len(modules) >= 4
    for name in modules:
        assert f"FAIL test_{name}" in out


def test_after_an_apply_the_demo_tests_only_the_changed_modules(tmp_path):
    from app.conversation.verify import run_tests, with_changed

    root = demo.fresh_sample_project(tmp_path / "p")
    result = run_tests(with_changed(demo.test_command(), ["stats.py"]), root)
    assert result.output.count("FAIL ") == 1 and "FAIL test_stats.py" in result.output
    whole = run_tests(with_changed(demo.test_command()), root)  # /test: every module
    assert whole.output.count("FAIL ") == len(list(root.glob("test_*.py"))) >= 4


def test_the_suggested_requests_name_files_and_functions_of_the_sample_project():
    names = {p.name for p in demo.sample_source().glob("*.py")}
    text = "".join(p.read_text() for p in demo.sample_source().glob("*.py"))
    for request in demo.SUGGESTED_REQUESTS:
        file = re.search(r"\w+\.py", request)
        func = re.search(r"why does (\w+) fail", request)
        assert (file and file.group() in names) or (func and f"def {func.group(1)}(" in text), request


def test_each_suggested_request_brings_its_one_module_into_the_context_by_itself(tmp_path):
    """On a fresh sample project with nothing in context, each suggested request puts exactly
    the module it is about in front of the reasoner: by its file name, or by the function the
    question names (`why does halve fail its test?` → shapes.py)."""
    from app.conversation import Conversation
    from app.workspace import Workspace

    for n, request in enumerate(demo.SUGGESTED_REQUESTS):
        ws = Workspace(demo.fresh_sample_project(tmp_path / f"p{n}"))
        routed = Conversation(demo_config(), workspace=ws, save=False).prepare(request)
        assert len(ws.context.files) == 1 and routed.file_names == tuple(ws.context.files), request
        name = ws.context.files[0]
        assert name in request or any(f"def {w}(" in ws.context.read(name) for w in request.split()), request
        assert not name.startswith("test_")


def test_a_demo_request_with_no_file_in_context_is_told_what_the_demo_knows(tmp_path):
    """The demo models were trained on a module in the prompt: a request that brings none gets
    the note (and is still sent); one that names a module, or a role that is not a demo model
    (the same path written in a config counts as the demo), does not."""
    import dataclasses

    from app.conversation import Conversation
    from app.workspace import Workspace

    config = demo_config()
    ws = Workspace(demo.fresh_sample_project(tmp_path / "p"))
    conv = Conversation(config, workspace=ws, save=False)
    from app.conversation import Caution

    hello = conv.prepare("hello there").notes
    assert demo.NO_FILE_NOTE in hello and all(isinstance(n, Caution) for n in hello)   # the views warn
    assert demo.NO_FILE_NOTE in conv.prepare("write a haiku", "coder").notes
    joined = conv.prepare("review stats.py").notes   # stats.py joined: information, not a warning
    assert demo.NO_FILE_NOTE not in joined and joined and not any(isinstance(n, Caution) for n in joined)
    assert demo.NO_FILE_NOTE not in conv.prepare("hello there").notes       # it stays in context
    assert demo.NO_FILE_NOTE in Conversation(config, save=False).prepare("review stats.py").notes  # no workspace
    written = dataclasses.replace(config.reasoner, demo=False, path=demo.reasoner_path().parent / "reasoner")
    other = dataclasses.replace(config.reasoner, path=tmp_path / "some-model")
    assert demo.is_demo_model(written.path) and not demo.is_demo_model(other.path)
    assert not demo.is_demo_model(None)
    fresh = Workspace(demo.fresh_sample_project(tmp_path / "q"))
    mine = dataclasses.replace(config, reasoner=other)
    assert demo.NO_FILE_NOTE not in Conversation(mine, workspace=fresh, save=False).prepare("hello", "reasoner").notes


async def test_the_demo_opens_with_a_welcome_naming_requests_and_keys(tmp_path):
    from app.tui.app import DuetApp
    from app.tui.first_run import DemoWelcome
    from app.workspace import Workspace

    root = demo.fresh_sample_project(tmp_path / "p")
    app = DuetApp(demo_config(), workspace=Workspace(root), load_models=False, resume=False)
    async with app.run_test(size=(120, 45)) as pilot:
        await pilot.pause()
        assert isinstance(app.screen, DemoWelcome)
        shown = " ".join(str(w.render()) for w in app.screen.query("Static"))
        assert demo.SUGGESTED_REQUESTS[0] in shown and "Ctrl+O" in shown and str(root) in shown
        await pilot.press("enter")
        await pilot.pause()
        assert app.chat is not None and app.screen is app.chat


def test_the_demo_models_run_on_duets_backends_through_a_real_turn(tmp_path):
    """The reasoner streams its R1-style output (thinking split off) from our engine (int8); the coder
    answers from llama.cpp. (Whether the answers are right is the eval's business: training/eval.py.)"""
    from app.backends import close_all
    from app.turn import Turn, decide

    root = demo.fresh_sample_project(tmp_path / "p")
    config = demo_config()
    files = [("calc.py", (root / "calc.py").read_text())]
    try:
        plan = Turn(config, "review calc.py", decide("review calc.py", "reasoner"), files=files, save=False)
        for _ in plan.events():
            pass
        assert plan.result.status == "done", plan.result.failed
        assert plan.result.answer.strip() and "</think>" not in plan.result.answer
        assert plan.result.answer.lstrip().startswith("**Bug:**")  # the trained answer format
        code = Turn(config, "fix the bug in calc.py", decide("fix the bug in calc.py", "coder"), plan=plan.result.answer,
                    files=files, save=False)
        for _ in code.events():
            pass
        assert code.result.status == "done" and "<<<<<<< SEARCH" in code.result.answer
    finally:
        close_all()
