"""Prompt templates: loading (installed and checkout), rendering, language, hand-off."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from app.errors import UsageError
from app.prompts import (build_prompt, detect_lang, handoff_brief, parse_template, render, strip_thinking,
                         template_dir, templates)
from app.router import rules

ROOT = Path(__file__).resolve().parent.parent
TRACE = "<think>Maybe a dict? No wait, SECRET-TRACE-WORDS, let me reconsider.</think>"
PLAN = "1. Add `cache.py` with an LRU class.\n2. Use it in `api.py`."


def test_every_intent_has_an_english_and_a_chinese_template_with_a_vars_header():
    names = set(templates())
    for intent, (role, _) in rules().intents.items():
        for lang in ("en", "zh"):
            assert f"{role}-{intent}.{lang}" in names
    for extra in ("coder-handoff", "coder-retry", "edit-format"):
        assert {f"{extra}.en", f"{extra}.zh"} <= names
    for t in templates().values():
        assert t.about, f"{t.name}: header lacks 'about'"
        text = (ROOT / "prompts" / f"{t.name}.md").read_text(encoding="utf-8")
        assert text.startswith("---\n") and "\nvars:" in text


def test_the_checkout_and_an_installed_copy_load_the_same_templates(tmp_path):
    # A real install (pip --target) of a copy of the tree: there the templates are the
    # package app.templates, read through importlib.resources.
    pytest.importorskip("setuptools", reason="building the wheel offline needs setuptools in this Python")
    src = tmp_path / "src"
    src.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, src / name)
    for folder in ("app", "prompts", "local_engine", "kernels", "vocab"):
        shutil.copytree(ROOT / folder, src / folder, ignore=shutil.ignore_patterns("__pycache__"))
    target = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation",
                    "--no-index", "--disable-pip-version-check", "--target", str(target), str(src)],
                   check=True, capture_output=True, timeout=300)
    probe = ("import json, app.prompts as p; "
             "print(json.dumps({'dir': str(p.template_dir()), "
             "'files': {n: t.body for n, t in p.templates().items()}, 'labels': p.labels()}))")
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True,
                         cwd=tmp_path, env={**os.environ, "PYTHONPATH": str(target)}, timeout=60)
    installed = json.loads(out.stdout)
    assert str(target) in installed["dir"] and "templates" in installed["dir"]
    assert Path(str(template_dir())).resolve() == (ROOT / "prompts").resolve()  # this run: the checkout
    from app.prompts import labels

    assert installed["files"] == {n: t.body for n, t in templates().items()}
    assert installed["labels"] == labels()


def test_render_fills_every_variable_once_and_never_re_expands_values():
    out = render("reasoner-design.en", request="Design {{material}} for me", material="Files: none")
    assert "Design {{material}} for me" in out
    assert "Files: none" in out and "{{" not in out.replace("{{material}}", "")


def test_render_refuses_a_missing_variable_naming_template_and_variable():
    with pytest.raises(UsageError, match=r"reasoner-design\.en.*missing material"):
        render("reasoner-design.en", request="x")


def test_render_refuses_an_unknown_variable_and_an_unknown_template():
    with pytest.raises(UsageError, match="takes no colour"):
        render("reasoner-design.en", request="x", material="", colour="red")
    with pytest.raises(UsageError, match="no such template"):
        render("reasoner-poetry.en", request="x")


def test_a_template_whose_header_and_body_disagree_is_an_error():
    with pytest.raises(UsageError, match="header vars"):
        parse_template("bad.en", "---\nvars: request\n---\n{{request}} {{files}}\n")
    with pytest.raises(UsageError, match="header"):
        parse_template("bad.en", "{{request}}\n")


def test_empty_material_leaves_no_dangling_heading_or_blank_run():
    out = build_prompt("reasoner", "analysis", "Why is the build slow?")
    assert "\n\n\n" not in out and "Files" not in out and "{{" not in out


def test_chinese_request_gets_the_chinese_template_and_english_the_english_one():
    zh = build_prompt("reasoner", "design", "帮我设计一个缓存方案")
    assert "目标" in zh and "Goal" not in zh and "帮我设计一个缓存方案" in zh
    en = build_prompt("reasoner", "design", "design a cache")
    assert "Goal" in en and "目标" not in en
    assert "目标" in build_prompt("reasoner", "design", "design a cache", lang="zh")


@pytest.mark.parametrize("text, lang", [
    ("帮我 review 一下这个 PR", "zh"), ("design一个 rate limiter，要支持多机部署", "zh"),
    ("translate 你好 into French", "en"), ("implement binary search in Go", "en"),
    ("给这段代码加上类型注解\n\ndef load(path):\n    with open(path) as f:\n        return json.load(f)", "zh"),
    ("", "en"),
])
def test_language_detection_reads_the_prose_not_the_pasted_code(text, lang):
    assert detect_lang(text) == lang


def test_math_prompts_ask_for_step_by_step_and_a_boxed_answer():
    assert "put your final answer within \\boxed{}" in build_prompt("reasoner", "compute", "solve x^2 = 4")
    assert "\\boxed{}" in build_prompt("reasoner", "compute", "证明根号2是无理数")


def test_reasoner_prompts_state_the_goal_briefly_without_role_play_or_a_method_script():
    # R1-class models do best with goal, constraints and material, not a prescribed method.
    for intent in ("design", "review", "analysis", "compute"):
        for text in ("a request", "一个请求"):
            out = build_prompt("reasoner", intent, text)
            assert "<<<<<<< SEARCH" not in out and "you are" not in out.lower() and "你是" not in out
            assert len(out) < 600
            if intent != "compute":
                assert "step by step" not in out.lower() and "逐步" not in out
                assert "Goal:" in out or "目标：" in out


@pytest.mark.parametrize("intent", ["implement", "edit", "test"])
@pytest.mark.parametrize("text", ["change the port", "把端口改成 9000"])
def test_coder_prompts_that_change_files_ask_for_search_replace_and_nothing_else(intent, text):
    out = build_prompt("coder", intent, text, files=[("app/config.py", "PORT = 8080\n")])
    for marker in ("<<<<<<< SEARCH", "=======", ">>>>>>> REPLACE"):
        assert marker in out
    assert "PORT = 8080" in out and "1 | PORT" not in out  # exact text, so SEARCH can copy it
    assert ("empty SEARCH" in out) or ("SEARCH 为空" in out)


def test_the_format_the_coder_is_shown_is_what_the_workspace_accepts(tmp_path):
    # Answer the prompt's own example the way it asks: the workspace must take it.
    from app.workspace import Workspace

    out = build_prompt("coder", "implement", "add hello.py")
    example = out[out.index("path/relative/to/root.py"): out.index(">>>>>>> REPLACE") + len(">>>>>>> REPLACE")]
    (tmp_path / "path" / "relative" / "to").mkdir(parents=True)
    (tmp_path / "path" / "relative" / "to" / "root.py").write_text("exact existing lines\n")
    reply = example + "\n\nnew.py\n<<<<<<< SEARCH\n=======\nprint('hi')\n>>>>>>> REPLACE\n\nRenamed a line; added new.py."
    changes = Workspace(tmp_path).propose(reply)
    assert [e.path for e in changes.edits] == ["path/relative/to/root.py", "new.py"] and not changes.rejected


def test_explain_and_shell_prompts_do_not_ask_for_edits():
    assert "<<<<<<< SEARCH" not in build_prompt("coder", "explain-code", "what does this regex do")
    assert "<<<<<<< SEARCH" not in build_prompt("coder", "shell", "linux 下怎么查看端口占用")


def test_review_prompts_number_the_lines_of_each_file():
    out = build_prompt("reasoner", "review", "review this", files=[("a.py", "x = 1\ny = 2\n" * 5)])
    assert " 1 | x = 1" in out and "10 | y = 2" in out and "a.py" in out


def test_a_file_containing_fences_gets_a_longer_fence():
    out = build_prompt("coder", "edit", "fix the readme", files=[("README.md", "```sh\nls\n```\n")])
    assert "````markdown\n```sh\nls\n```\n````" in out


def test_unknown_role_is_an_error_and_a_foreign_intent_falls_back_to_the_role_default():
    with pytest.raises(UsageError, match="role"):
        build_prompt("poet", "design", "x")
    forced = build_prompt("coder", "design", "design a cache")  # the user forced the coder
    assert "<<<<<<< SEARCH" in forced
    assert "Goal:" in build_prompt("reasoner", "implement", "implement a cache")


def test_handoff_carries_the_plan_answer_and_files_but_never_the_thinking_trace():
    brief = handoff_brief(TRACE + "\n" + PLAN, [("api.py", "def get(k):\n    return db[k]\n")],
                          "write the code for step 2")
    assert "SECRET-TRACE-WORDS" not in brief and "<think>" not in brief and "</think>" not in brief
    assert PLAN in brief and "def get(k):" in brief and "write the code for step 2" in brief
    assert "<<<<<<< SEARCH" in brief


def test_handoff_drops_a_trace_whose_opening_tag_was_in_the_prompt():
    brief = handoff_brief("Maybe SECRET-TRACE-WORDS...\n</think>\n\n" + PLAN)
    assert "SECRET-TRACE-WORDS" not in brief and PLAN in brief


def test_handoff_of_a_chinese_plan_is_in_chinese_and_an_empty_plan_is_refused():
    brief = handoff_brief("<think>想一想</think>1. 新建 cache.py\n2. 在 api.py 中使用", request="按照上面的方案写代码")
    assert "方案：" in brief and "想一想" not in brief and "现在要做的： 按照上面的方案写代码" in brief
    with pytest.raises(UsageError, match="plan is empty"):
        handoff_brief("<think>only thoughts, the answer never came")


def test_a_plan_given_to_build_prompt_loses_its_trace_too():
    out = build_prompt("coder", "implement", "implement it", plan=TRACE + PLAN)
    assert PLAN in out and "SECRET-TRACE-WORDS" not in out


def test_strip_thinking_keeps_answers_that_merely_mention_think():
    assert strip_thinking("I think this works.") == "I think this works."
    assert strip_thinking("<think>a</think>b<think>c</think>d") == "bd"


@given(st.text(max_size=200).filter(str.strip), st.text(max_size=200),
       st.sampled_from([("reasoner", "design"), ("reasoner", "review"), ("coder", "edit"), ("coder", "shell")]))
@settings(max_examples=100, deadline=None)
def test_any_request_and_file_text_arrive_verbatim(request, file_text, role_intent):
    out = build_prompt(*role_intent, request, files=[("a.txt", file_text)])
    assert request.strip() in out
    body = file_text.replace("\r\n", "\n").rstrip("\n")
    if role_intent[0] == "coder":
        assert body in out
