"""File context (.gitignore, token budget, outline) and /review material."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from app.workspace import Workspace
from app.workspace.context import FileContext, number_lines, parser_for, symbols


@pytest.fixture
def proj(tmp_path) -> Path:
    root = tmp_path / "proj"
    (root / "src" / "pkg").mkdir(parents=True)
    (root / "build").mkdir()
    (root / ".git").mkdir()
    (root / ".gitignore").write_text("build/\n*.log\n")
    (root / "src" / ".gitignore").write_text("generated_*.py\n!generated_keep.py\n")
    (root / "src" / "main.py").write_text("import os\n\n\ndef main():\n    return 0\n")
    (root / "src" / "pkg" / "util.py").write_text("class Helper:\n    def run(self):\n        pass\n")
    (root / "src" / "generated_api.py").write_text("x = 1\n")
    (root / "src" / "generated_keep.py").write_text("y = 1\n")
    (root / "build" / "out.py").write_text("z = 1\n")
    (root / "debug.log").write_text("log\n")
    (root / ".git" / "HEAD").write_text("ref: refs/heads/main\n")
    (root / "logo.png").write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00")
    return root


def test_adding_a_folder_respects_every_gitignore_and_skips_git(proj):
    added = FileContext(proj).add(".")
    assert list(added.added) == [".gitignore", "src/.gitignore", "src/generated_keep.py", "src/main.py",
                                 "src/pkg/util.py"]
    assert dict(added.skipped) == {"logo.png": "binary file (contains NUL bytes)"}


def test_a_file_named_explicitly_is_added_even_if_ignored(proj):
    ctx = FileContext(proj)
    assert ctx.add("build/out.py").added == ("build/out.py",)


def test_paths_outside_the_root_are_not_added(proj):
    ctx = FileContext(proj)
    assert ctx.add("../proj/src/main.py").added == ()
    assert ctx.add("/etc/passwd").added == ()
    assert ctx.add("missing.py").skipped == (("missing.py", "no such file or folder"),)


def test_dropping_a_folder_drops_the_files_under_it(proj):
    ctx = FileContext(proj)
    ctx.add("src")
    assert ctx.drop("src/pkg") == ["src/pkg/util.py"]
    assert "src/main.py" in ctx.files and "src/pkg/util.py" not in ctx.files


def test_the_budget_counts_tokens_per_file_and_in_total_against_the_window(proj):
    ctx = FileContext(proj)
    ctx.add("src/main.py")
    ctx.add("src/pkg/util.py")
    budget = ctx.budget(window=10)
    assert set(budget.per_file) == {"src/main.py", "src/pkg/util.py"}
    assert budget.total == sum(budget.per_file.values()) > 10
    assert not budget.fits and "of 10 tokens" in budget.describe()
    assert ctx.budget(window=10_000).fits


def test_a_custom_token_counter_is_used(proj):
    ctx = FileContext(proj, count_tokens=lambda text: len(text.split()))
    ctx.add("src/main.py")
    assert ctx.budget().per_file == {"src/main.py": 6}


def test_render_puts_each_file_under_its_path_optionally_numbered(proj):
    ctx = FileContext(proj)
    ctx.add("src/pkg/util.py")
    assert ctx.render() == "src/pkg/util.py\n```\nclass Helper:\n    def run(self):\n        pass\n```"
    assert "1 | class Helper:\n2 |     def run(self):" in ctx.render(numbered=True)


@pytest.mark.skipif(parser_for("python") is None, reason="no offline Python grammar")
def test_files_that_do_not_fit_the_window_are_given_as_an_outline(proj):
    ctx = FileContext(proj)
    ctx.add("src")
    full, fits = ctx.for_prompt(10_000)
    assert fits and full == ctx.render()
    short, fits = ctx.for_prompt(40, reserve=10)
    assert not fits and "src/main.py\n  def main()" in short and "```" not in short
    assert len(short) <= 30 * 4


def test_pairs_give_path_and_text_for_the_prompt_builder(proj):
    ctx = FileContext(proj)
    ctx.add("src/pkg/util.py")
    ctx.add("src/main.py")
    (proj / "src" / "main.py").unlink()  # gone since it was added: left out
    assert ctx.pairs() == [("src/pkg/util.py", "class Helper:\n    def run(self):\n        pass\n")]


def test_number_lines_aligns_numbers():
    assert number_lines("".join(f"l{i}\n" for i in range(10))).split("\n")[0] == " 1 | l0"


@pytest.mark.skipif(parser_for("python") is None, reason="no offline Python grammar")
def test_the_outline_lists_paths_and_top_level_symbols_from_tree_sitter(proj):
    outline = FileContext(proj).outline()
    assert "src/main.py\n  def main()" in outline
    assert "src/pkg/util.py\n  class Helper  [run]" in outline
    assert "build/out.py" not in outline and "logo.png" not in outline


@pytest.mark.skipif(parser_for("python") is None, reason="no offline Python grammar")
def test_symbols_see_through_decorators_and_skip_imports_and_nested_code():
    source = ("import os\n@cache\ndef f(a, b=1) -> int:\n    def inner(): pass\n    return a\n"
              "class A(Base):\n    @property\n    def p(self): return 1\nLIMIT: int = 3\n")
    assert symbols("m.py", source) == ["def f(a, b=1) -> int", "class A(Base)  [p]", "LIMIT = ..."]


def test_files_in_an_unknown_language_are_listed_by_path_only(proj):
    (proj / "notes.unknownext").write_text("def looks_like_code(): pass\n")
    assert symbols("notes.unknownext", "def x(): pass\n") == []
    assert "notes.unknownext\n" in FileContext(proj).outline() + "\n"


def test_the_outline_is_cut_at_the_size_limit(proj):
    outline = FileContext(proj).outline(max_chars=30)
    assert outline.endswith("more files)")


def test_review_with_files_in_context_numbers_their_lines(proj):
    ws = Workspace(proj)
    ws.context.add("src/main.py")
    review = ws.review()
    assert review.kind == "files" and review.files == ("src/main.py",)
    assert "4 | def main():" in review.text and "src/main.py" in review.note


def test_review_with_nothing_in_context_outside_git_says_there_is_nothing(tmp_path):
    review = Workspace(tmp_path).review()
    assert review.kind == "none" and "not a git repository" in review.note


@pytest.mark.skipif(shutil.which("git") is None, reason="git not installed")
def test_review_with_nothing_in_context_uses_the_uncommitted_git_diff_and_says_so(tmp_path):
    def git(*args):
        subprocess.run(["git", "-C", str(tmp_path), *args], check=True, capture_output=True)

    git("init", "-q")
    git("config", "user.email", "t@example.com")
    git("config", "user.name", "Test")
    (tmp_path / "a.py").write_text("x = 1\n")
    git("add", ".")
    git("commit", "-q", "-m", "start")
    ws = Workspace(tmp_path)
    assert ws.review().kind == "none" and "no uncommitted changes" in ws.review().note
    (tmp_path / "a.py").write_text("x = 2\n")
    (tmp_path / "new.py").write_text("y = 1\n")
    review = ws.review()
    assert review.kind == "diff" and review.files == ("a.py",)
    assert "uncommitted changes (git diff HEAD)" in review.note and "1 untracked" in review.note
    assert "-x = 1\n+x = 2" in review.text and "new.py" in review.text


def test_definition_names_are_the_top_level_functions_classes_and_types_of_each_language():
    from app.workspace.context import definition_names

    assert definition_names("a.py", "import os\nX = 1\n@dec\ndef f():\n    def inner(): pass\n"
                                    "async def g(): pass\nclass C:\n    def m(self): pass\n") == ["f", "g", "C", "C.m"]
    assert definition_names("a.ts", "export function add(a: number) { return a }\nconst k = 1\nclass Box {}\n"
                                    "interface Shape {}\ntype T = number\n") == ["add", "Box", "Shape", "T"]
    assert definition_names("a.go", "package x\nfunc Add(a int) int { return a }\ntype Point struct{}\n") == ["Add", "Point"]
    assert definition_names("a.rs", "fn add() {}\nstruct P;\nimpl P { fn m(&self) {} }\n") == ["add", "P", "P.m"]
    assert definition_names("notes.txt", "def f():\n") == []


def test_test_files_are_known_by_the_usual_conventions():
    from app.workspace.context import is_test_path

    for rel in ("test_calc.py", "calc_test.go", "web/cart.test.ts", "cart.spec.js", "tests/helpers.py",
                "src/test/Main.java", "ui/__tests__/cart.js", "conftest.py"):
        assert is_test_path(rel), rel
    for rel in ("calc.py", "latest.py", "contest.py", "testing/tools.py", "attest/x.py"):
        assert not is_test_path(rel), rel


def test_a_function_or_class_named_in_a_request_brings_the_one_file_that_defines_it(tmp_path, monkeypatch):
    from app.workspace import context

    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "stats.py").write_text("def only_odd(xs):\n    def inner():\n        pass\n    return xs\n\n"
                                               "async def fetch_all():\n    pass\n\n\nclass Ledger:\n    def total(self):\n"
                                               "        return 0\n")
    (tmp_path / "a.py").write_text("def dot(x, y):\n    return 0\n")
    (tmp_path / "b.py").write_text("def dot(x, y):\n    return 1\n")
    (tmp_path / "test_stats.py").write_text("def only_odd():\n    pass\n\n\ndef helper():\n    pass\n")
    (tmp_path / "notes.md").write_text("def notes_only():\n")
    (tmp_path / "web").mkdir()
    (tmp_path / "web" / "cart.ts").write_text("export function addItem(cart: string[], item: string) {\n  return cart\n}\n")
    (tmp_path / "web" / "cart.test.ts").write_text("function addItem() {}\n")
    (tmp_path / "shop.rs").write_text("struct Basket;\nimpl Basket {\n    fn put(&mut self) {}\n}\n")
    (tmp_path / ".env").write_text("SECRET=1\n")
    (tmp_path / "secret.py").write_text("def leaked():\n    pass\n")
    (tmp_path / ".gitignore").write_text("secret.py\n")
    ctx = FileContext(tmp_path)
    assert ctx.defining("why does only_odd fail its test?") == [("src/stats.py", "only_odd")]  # test files aside
    assert ctx.defining("为什么Ledger的测试失败？还有 fetch_all") == [("src/stats.py", "Ledger")]  # once per file
    assert ctx.defining("why does dot fail?") == []  # two files define it
    assert ctx.defining("addItem drops the item") == [("web/cart.ts", "addItem")]  # other languages too
    assert ctx.defining("Basket::put loses items") == [("shop.rs", "Basket")]
    assert ctx.defining("why does put lose items?") == []  # a bare method name as a word: too common to search by
    assert ctx.defining("why does `put` lose items?") == [("shop.rs", "Basket.put")]  # ... written as code
    assert ctx.defining("put() loses items") == [("shop.rs", "Basket.put")]
    assert ctx.defining("why does total return 0?") == []
    assert ctx.defining("为什么 `total` 返回 0？") == [("src/stats.py", "Ledger.total")]
    assert ctx.defining("why does inner fail? and total, helper, notes_only, leaked") == []  # not top level / not code
    assert ctx.defining("why does Ledger.total return 0?") == [("src/stats.py", "Ledger")]  # the class, first
    assert ctx.defining("is books.Ledger.total wrong?") == [("src/stats.py", "Ledger.total")]  # a method, qualified
    assert ctx.defining("why does only_odd in src/stats.py fail?") == []  # a file named: that one, not a search
    (tmp_path / "till.py").write_text("class Till:\n    def total(self):\n        return 1\n")
    assert ctx.defining("why does `total` return 0?") == []  # two classes in two files define it
    (tmp_path / "till.py").write_text("class Till:\n    def sum_up(self):\n        return 1\n")
    assert ctx.defining("why does sum_up return 1?") == [("till.py", "Till.sum_up")]  # shaped as code
    (tmp_path / "till.py").write_text("def sum_up():\n    return 1\n\n\nclass Till:\n    def sum_up(self):\n"
                                      "        return 1\n")
    assert ctx.defining("why does sum_up return 1?") == [("till.py", "sum_up")]  # one file, a function first
    (tmp_path / "c.py").write_text("def sum_up():\n    return 2\n")
    assert ctx.defining("why does sum_up return 1?") == []  # a function in one file, a method in another
    (tmp_path / "b.py").write_text("def other(x, y):\n    return 1\n")  # read again once it changed
    assert ctx.defining("why does dot fail?") == [("a.py", "dot")]
    ctx.add("src/stats.py")
    assert ctx.defining("only_odd again") == []  # already in context
    monkeypatch.setattr(context, "DEFINITION_SCAN_FILES", 3)
    ctx.drop("src/stats.py")
    assert ctx.defining("why does only_odd fail its test?") == []  # too many Python files to search


def test_files_named_in_a_request_are_found_by_path_or_by_a_unique_bare_name(tmp_path):
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "calc.py").write_text("x = 1\n")
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    (tmp_path / "a" / "util.py").write_text("")
    (tmp_path / "b" / "util.py").write_text("")
    (tmp_path / "notes.md").write_text("")
    (tmp_path / ".env").write_text("SECRET=1\n")
    ctx = FileContext(tmp_path)
    assert ctx.named_in("fix the bug in calc.py.") == ["src/calc.py"]  # unique bare name; the full stop is prose
    assert ctx.named_in("审查 `src/calc.py` 和 ./notes.md") == ["src/calc.py", "notes.md"]
    assert ctx.named_in("compare util.py with missing.py, e.g. on python 3.11") == []  # two util.py; none exist
    assert ctx.named_in("read ../outside.py and /etc/passwd.txt and .env") == []
    ctx.add("notes.md")
    assert ctx.named_in("see notes.md") == []  # already in context
