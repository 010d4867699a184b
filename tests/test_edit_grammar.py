"""`constrain_edits`: llama.cpp samples a coder's reply under a grammar of edit blocks that apply
to the files in context (app/workspace/edit_grammar.py), wherever the prompt asks for edits."""

from __future__ import annotations

import dataclasses
import random
import threading

import pytest

from app import demo
from app.backends.llamacpp import LlamaCppBackend, LlamaModel, compile_grammar
from app.config import Config, RoleConfig, Sampling, demo_config, parse_config
from app.conversation import Conversation
from app.errors import ConfigError, DuetError
from app.workspace import Workspace
from app.workspace.edit_blocks import parse
from app.workspace.edit_grammar import (MAX_LINES, MAX_RUN, _starts, edit_grammar, held_names, plan_lines,
                                        plan_target)
from tests.sse_server import ScriptedServer, error_reply, text_reply
from tests.tui_support import server_config

# Lines the grammar must quote exactly: quotes, backslashes, a tab, non-ASCII, CRLF, blank lines,
# and lines that occur twice (a SEARCH of one of them alone would match two places).
AWKWARD = ('def quote(s):\r\n    """Say "hi" \\ then \\n."""\r\n\treturn s + "\\\\"\r\n\r\n'
           "def twice(a):\r\n    return a\r\n\r\ndef again(a):\r\n    return a\r\n# 注释 ✓\r\n")
MODULE = ("def total(xs):\n    \"\"\"Return the sum of xs.\"\"\"\n    acc = 1\n    for x in xs:\n        acc += x\n"
          "    return acc\n\n\ndef first(xs):\n    \"\"\"Return the first item of xs.\"\"\"\n    for x in xs:\n"
          "        return x\n    return None\n")

FIND = ('def where_is(arr, needle):\n    """Return the index of needle in arr, or -1."""\n    for k in range(len(arr)):\n'
        "        if arr[k] != needle:\n            return k\n    return -1\n")


def finder_workspace(tmp_path) -> Workspace:
    """A workspace holding FIND as search.py, in context."""
    root = tmp_path / "p"
    root.mkdir()
    (root / "search.py").write_text(FIND)
    ws = Workspace(root)
    ws.context.add("search.py")
    return ws


@pytest.fixture(scope="module")
def coder():
    rc = RoleConfig(role="coder", backend="llama.cpp", path=demo.coder_path(), context=2048, threads=1)
    model = LlamaModel(rc.path, context=2048, threads=1, gpu_layers=0, device="cpu")
    yield rc, model
    model.close()


def test_the_grammar_for_awkward_files_parses_in_llama_cpp(coder):
    _, model = coder
    grammar = edit_grammar([("odd dir/quote.py", AWKWARD), ("calc.py", MODULE), ("empty.py", "")])
    assert grammar is not None and "empty.py" not in grammar  # nothing to quote in an empty file
    assert compile_grammar(model.load(), grammar, "coder") is not None


def test_a_grammar_llama_cpp_cannot_parse_is_a_clear_error_not_a_crash(coder):
    _, model = coder
    with pytest.raises(DuetError, match=r"the coder's grammar: llama.cpp could not parse it"):
        compile_grammar(model.load(), 'root ::= ("unclosed"', "coder")


def test_no_grammar_when_nothing_can_be_quoted_or_the_files_are_too_long():
    assert edit_grammar([]) is None
    assert edit_grammar([("blank.py", "\n\n\n"), ("empty.py", "")]) is None
    assert edit_grammar([("long.py", "".join(f"v{i} = {i}\n" for i in range(MAX_LINES + 1)))]) is None
    assert edit_grammar([("ok.py", "".join(f"v{i} = {i}\n" for i in range(MAX_LINES)))]) is not None
    assert edit_grammar([("blank.py", "\n")], new_files=True) is not None  # new files only


@pytest.mark.parametrize("seed", range(6))
def test_every_reply_sampled_under_the_grammar_applies_to_the_file_even_at_high_temperature(tmp_path, coder, seed):
    """The rule, not an example: whatever the model samples (temperature 1.3, six seeds), a finished
    reply is edit blocks for files in context whose SEARCH text matches exactly one place."""
    rc, model = coder
    root = tmp_path / "p"
    root.mkdir()
    (root / "stats.py").write_text(MODULE)
    (root / "quote.py").write_bytes(AWKWARD.encode())
    ws = Workspace(root)
    ws.context.add("stats.py")
    ws.context.add("quote.py")
    rc = dataclasses.replace(rc, constrain_edits=True,
                             sampling=Sampling(temperature=1.3, top_p=1.0, max_tokens=400, seed=seed))
    conv = Conversation(Config(reasoner=rc, coder=rc), workspace=ws, save=False)
    routed = conv.prepare("fix the bug in stats.py: total starts at 1", "coder")
    assert routed.turn.grammar() is not None
    for _ in routed.turn.events(threading.Event(), backend=LlamaCppBackend(rc, model)):
        pass
    result = routed.turn.result
    assert result.status == "done", result.failed
    if result.done.finish_reason != "stop":
        pytest.skip("the reply ran out of tokens mid-block (the grammar cannot shorten it)")
    blocks, problems = parse(result.answer)
    assert blocks and not problems, result.answer
    changes = ws.propose(result.answer)
    assert not changes.rejected, (result.answer, [r.reason for r in changes.rejected])
    assert changes.edits or all(b.search == b.replace for b in blocks)  # no edit only where nothing changes
    assert {e.path for e in changes.edits} <= {"stats.py", "quote.py"}


@pytest.mark.parametrize("seed", range(6))
def test_under_known_names_every_name_a_sampled_replace_writes_is_the_files_or_the_plans(tmp_path, coder, seed):
    """The rule at temperature 1.6: outside its strings and comments, a REPLACE line names only
    what the files' code or the plan's inline code has."""
    import io
    import tokenize

    rc, model = coder
    ws = finder_workspace(tmp_path)
    rc = dataclasses.replace(rc, constrain_edits=True, known_names=True,
                             sampling=Sampling(temperature=1.6, top_p=1.0, max_tokens=300, seed=seed))
    conv = Conversation(Config(reasoner=rc, coder=rc), workspace=ws, save=False)
    plan = ("1. In `search.py`, function `where_is`, change line 4 from `if arr[k] != needle:` to "
            "`if arr[k] == needle:`.")
    routed = conv.prepare("Implement the plan.", "coder", plan=plan)
    for _ in routed.turn.events(threading.Event(), backend=LlamaCppBackend(rc, model)):
        pass
    result = routed.turn.result
    assert result.status == "done", result.failed
    allowed = held_names([("search.py", FIND)], plan)
    for line in [line for b in parse(result.answer)[0] for line in b.replace]:
        try:
            tokens = list(tokenize.generate_tokens(io.StringIO(line.strip() + "\n").readline))
        except (tokenize.TokenError, SyntaxError, IndentationError):
            continue  # not Python on its own (an open bracket): its names are checked by the grammar test above
        assert {t.string for t in tokens if t.type == tokenize.NAME} <= allowed, line


def test_plan_lines_are_the_files_lines_and_the_code_the_plan_quotes_and_none_without_quoted_code():
    plan = ("1. In `search.py`, function `where_is`, change line 4 from `if arr[k] != needle:` to ``if arr[k] == needle:``.\n"
            "2. Then add:\n   ```python\n   def count(arr):\n       return len(arr)\n   ```\n")
    lines = plan_lines([("search.py", FIND)], plan)
    assert {"if arr[k] == needle:", "def count(arr):", "return len(arr)", "search.py", "where_is"} <= lines
    assert {line.strip() for line in FIND.splitlines() if line.strip()} <= lines
    assert not {"", "```python", "```"} & lines and not any(line.startswith("1.") for line in lines)  # prose is not code
    assert plan_lines([("search.py", FIND)], "Flip the comparison in where_is.") is None  # nothing quoted: not held
    assert plan_lines([("search.py", FIND)], None) is None
    assert "=======" not in plan_lines([("m.py", "x = 1\n=======\n")], "set `x = 2`")  # never a divider
    stated = "1. In `search.py`, change line 4 from `if arr[k] != needle:` to `if arr[k] == needle:`."
    held = plan_lines([("search.py", FIND)], stated)  # a line the plan says to change is not written back
    assert "if arr[k] == needle:" in held and "if arr[k] != needle:" not in held and "return k" in held
    zh = "1. 在 `search.py` 中，把第 4 行 `if arr[k] != needle:` 改为 `if arr[k] == needle:`。"
    assert "if arr[k] != needle:" not in plan_lines([("search.py", FIND)], zh)
    same = "change line 4 from `if arr[k] != needle:` to `if arr[k] != needle:`"  # no change stated: not struck
    assert "if arr[k] != needle:" in plan_lines([("search.py", FIND)], same)
    grammar = edit_grammar([("search.py", FIND)], names=held_names([("search.py", FIND)], plan), lines=lines)
    assert "lreplace" in grammar and "hname ::= " not in grammar  # the lines hold more than the names would


def test_under_plan_lines_every_line_a_sampled_replace_writes_is_a_file_line_or_the_plan_s_code(tmp_path, coder):
    """The rule at temperature 2, through Duet's turn: each REPLACE line, past its indentation,
    is a line of the file or code the plan quotes, or blank."""
    rc, model = coder
    ws = finder_workspace(tmp_path)
    plan = ("1. In `search.py`, function `where_is`, change line 4 from `if arr[k] != needle:` to "
            "`if arr[k] == needle:`.")
    allowed = plan_lines([("search.py", FIND)], plan) | {""}
    for seed in range(6):
        role = dataclasses.replace(rc, constrain_edits=True, plan_lines=True,
                                   sampling=Sampling(temperature=2.0, top_p=1.0, max_tokens=300, seed=seed))
        conv = Conversation(Config(reasoner=role, coder=role), workspace=ws, save=False)
        routed = conv.prepare("Implement the plan.", "coder", plan=plan)
        assert routed.turn.grammar() == edit_grammar([("search.py", FIND)], lines=plan_lines([("search.py", FIND)], plan),
                                                     covers="if arr[k] != needle:")  # its SEARCH takes in line 4
        for _ in routed.turn.events(threading.Event(), backend=LlamaCppBackend(role, model)):
            pass
        assert routed.turn.result.status == "done", routed.turn.result.failed
        written = {line.strip() for b in parse(routed.turn.result.answer)[0] for line in b.replace}
        assert written <= allowed, (seed, written - allowed)
    again = conv.prepare("Implement the plan.", "coder", plan=plan)  # handed off before: asked again, sampled,
    assert again.turn.retry and "lreplace" not in again.turn.grammar()  # and its lines are its own


def test_the_demo_coder_given_a_right_plan_writes_a_line_neither_has_with_only_its_names_held_not_under_plan_lines(monkeypatch):
    """The control, on held-out modules where the demo coder (greedy, as Duet runs it) with only
    its names held garbles the plan's line (``agg += row] * col[k]``): under ``plan_lines`` each
    line it writes is the file's or the plan's."""
    from training import eval as demo_eval
    from training.render import answer, coder_prompt, lang_of

    monkeypatch.setattr(demo_eval, "STYLE", "heldout")
    coder = demo_eval.Coder(demo.coder_path())
    cases = demo_eval.heldout_cases(51, 7)
    outside = {True: 0, False: 0}
    for m, request in (cases[i] for i in (30, 32, 36, 50)):
        plan, files = answer(m, lang_of(request)), [(m.path, m.source)]
        allowed = plan_lines(files, plan) | {""}
        for held in (True, False):
            coder.plan_lines = held
            text = coder.run(coder_prompt(m, request, plan, "handoff"), files=files, plan=plan)[0]
            outside[held] += len({line.strip() for b in parse(text)[0] for line in b.replace} - allowed)
    assert outside[True] == 0 and outside[False] >= 3


def test_the_demo_coder_holds_its_edits_to_the_grammar_and_the_local_backend_refuses_the_setting(tmp_path):
    assert demo_config().coder.constrain_edits and not demo_config().reasoner.constrain_edits
    gguf = tmp_path / "m.gguf"
    gguf.write_bytes(b"GGUF")
    ok = parse_config({"coder": {"backend": "llama.cpp", "path": str(gguf), "constrain_edits": True}})
    assert ok.coder.constrain_edits
    assert parse_config({"coder": {"backend": "openai", "url": "http://127.0.0.1:9/v1", "constrain_edits": True}}).coder.constrain_edits
    with pytest.raises(ConfigError, match=r"coder\.constrain_edits.*llama\.cpp"):
        parse_config({"coder": {"backend": "local", "path": str(tmp_path), "constrain_edits": True}})
    with pytest.raises(ConfigError, match=r"coder\.constrain_edits"):
        parse_config({"coder": {"backend": "llama.cpp", "path": str(gguf), "constrain_edits": "yes"}})
    held = parse_config({"coder": {"backend": "llama.cpp", "path": str(gguf), "constrain_edits": True, "known_names": True}})
    assert held.coder.known_names
    with pytest.raises(ConfigError, match=r"coder\.known_names.*constrain_edits"):
        parse_config({"coder": {"backend": "llama.cpp", "path": str(gguf), "known_names": True}})
    assert demo_config().coder.plan_lines  # its first reply to a plan; a retry is free (README)
    assert parse_config({"coder": {"backend": "llama.cpp", "path": str(gguf), "constrain_edits": True,
                                   "plan_lines": True}}).coder.plan_lines
    with pytest.raises(ConfigError, match=r"coder\.plan_lines.*constrain_edits"):
        parse_config({"coder": {"backend": "llama.cpp", "path": str(gguf), "plan_lines": True}})


def test_only_edit_prompts_on_workspace_files_get_the_grammar_and_a_server_gets_it_as_llama_cpp_s_field(tmp_path):
    root = tmp_path / "p"
    root.mkdir()
    (root / "calc.py").write_text("def add(a, b):\n    return a - b\n")
    ws = Workspace(root)
    ws.context.add("calc.py")
    with ScriptedServer(text_reply("calc.py\n<<<<<<< SEARCH\n    return a - b\n=======\n    return a + b\n>>>>>>> REPLACE\n")) as server:
        config = server_config(server.base_url)
        constrained = dataclasses.replace(config, coder=dataclasses.replace(config.coder, constrain_edits=True))
        conv = Conversation(constrained, workspace=ws, save=False)
        edit = conv.prepare("fix the bug in calc.py", "coder").turn
        assert edit.editable == [("calc.py", "def add(a, b):\n    return a - b\n")]
        assert "calc.py\\n<<<<<<< SEARCH\\n" in edit.grammar() and "\nnew ::= " not in edit.grammar()
        assert "\nnew ::= " in conv.prepare("write tests for calc.py", "coder").turn.grammar()  # tests go in new files
        named = conv.prepare("Implement the plan.", "coder", plan="1. Add `cache.py` with a class Cache.\n2. Use it in calc.py.")
        assert '\nnew ::= "cache.py\\n"\n' in named.turn.grammar()  # after a plan: the new files it says to create
        fix = "1. In `calcs.py`, change line 2 to `return a + b`.\n2. Check that `test_calc.py` passes."  # names, not new files
        assert "\nnew ::= " not in conv.prepare("Implement the plan.", "coder", plan=fix).turn.grammar()
        (root / "cache.py").write_text("")
        assert "\nnew ::= " not in conv.prepare("Implement the plan.", "coder", plan=named.turn.plan).turn.grammar()  # there now
        assert "hname ::= " not in edit.grammar()
        held = dataclasses.replace(constrained, coder=dataclasses.replace(constrained.coder, known_names=True))
        held_turn = Conversation(held, workspace=ws, save=False).prepare("Implement the plan.", "coder", plan=fix).turn
        hname = next(line for line in held_turn.grammar().split("\n") if line.startswith("hname ::= "))
        assert all(f'"{n}"' in hname for n in ("add", "a", "b", "return", "calcs", "py", "test_calc"))  # files and plan
        assert '"Check"' not in hname  # the plan's prose is not code
        assert conv.prepare("hello there", "coder").turn.grammar() is None  # a chat prompt asks for no edits
        assert conv.prepare("review calc.py", "reasoner").turn.grammar() is None
        assert Conversation(config, workspace=ws, save=False).prepare("fix the bug in calc.py", "coder").turn.grammar() is None
        routed = conv.prepare("fix the bug in calc.py", "coder")
        list(routed.turn.events(threading.Event()))
        assert server.requests[-1].json["grammar"] == routed.turn.grammar()  # llama.cpp's field, as llama-server takes it
        assert routed.turn.result.status == "done"
        plain = Conversation(config, workspace=ws, save=False).prepare("fix the bug in calc.py", "coder")
        list(plain.turn.events(threading.Event()))
        assert "grammar" not in server.requests[-1].json
    with ScriptedServer(error_reply(400, "extra fields not permitted: grammar", style="vllm")) as server:
        conv = Conversation(dataclasses.replace(constrained, coder=dataclasses.replace(constrained.coder, url=server.base_url)),
                            workspace=ws, save=False)
        routed = conv.prepare("fix the bug in calc.py", "coder")
        list(routed.turn.events(threading.Event()))
        assert routed.turn.result.status == "failed" and "coder.constrain_edits" in routed.turn.result.failed.message
    assert (root / "calc.py").read_text().endswith("a - b\n")


@pytest.mark.parametrize("seed", range(20))
def test_a_search_may_start_where_a_short_run_matches_that_place_alone(seed):
    """app.workspace.edit_blocks refuses a SEARCH that matches twice or is all blank: each start
    the grammar allows needs the fewest lines that avoid both, and a start it leaves out has no
    such run of up to MAX_RUN lines."""
    rng = random.Random(seed)
    lines = [rng.choice(["", "x = 1", "    return x", "pass", f"y = {rng.randint(0, 3)}"]) for _ in range(rng.randint(1, 40))]

    def ok(s, k):
        window = lines[s:s + k]
        matches = sum(lines[p:p + k] == window for p in range(len(lines) - k + 1))
        return s + k <= len(lines) and matches == 1 and any(line.strip() for line in window)

    starts = _starts(lines)
    for s in range(len(lines)):
        fits = [k for k in range(1, MAX_RUN + 1) if ok(s, k)]
        assert starts.get(s) == (fits[0] if fits else None), (lines, s)


def accepts(llm, grammar: str, text: str) -> bool:
    """Whether llama.cpp's grammar sampler lets ``text`` through whole, then the end of the reply:
    each token offered alone, and taken only where the grammar kept it."""
    import ctypes

    import llama_cpp

    sampler = llama_cpp.llama_sampler_init_grammar(llm._model.vocab, grammar.encode(), b"root")
    assert sampler
    try:
        for token in llm.tokenize(text.encode(), add_bos=False, special=False) + [llm.token_eos()]:
            one = (llama_cpp.llama_token_data * 1)(llama_cpp.llama_token_data(token, 0.0, 0.0))
            llama_cpp.llama_sampler_apply(sampler, ctypes.byref(llama_cpp.llama_token_data_array(one, 1, -1, False)))
            if one[0].logit == float("-inf"):
                return False
            if token != llm.token_eos():
                llama_cpp.llama_sampler_accept(sampler, token)
        return True
    finally:
        llama_cpp.llama_sampler_free(sampler)


def block(path: str, search: str, replace: str = "z = 2\n") -> str:
    return f"{path}\n<<<<<<< SEARCH\n{search}=======\n{replace}>>>>>>> REPLACE\n"


def test_the_grammar_takes_blocks_that_apply_and_refuses_the_rest(coder):
    llm = coder[1].load()
    files = [("calc.py", "def add(a, b):\n    return a - b\n\ndef sub(a, b):\n    return a - b\n"), ("odd.py", "x = 'é'\n")]
    for new_files in (False, True):
        g = edit_grammar(files, new_files=new_files)
        assert accepts(llm, g, block("calc.py", "def add(a, b):\n"))
        assert accepts(llm, g, block("calc.py", "def add(a, b):\n    return a - b\n", "def add(a, b):\n    return a + b\n"))
        assert accepts(llm, g, block("calc.py", "def sub(a, b):\n") + block("odd.py", "x = 'é'\n") + "\nFixed both.")
        assert not accepts(llm, g, "Here is the fix:\n" + block("calc.py", "def add(a, b):\n"))  # prose first
        assert not accepts(llm, g, block("calc.py", "def add(a,b):\n"))  # misquoted
        assert not accepts(llm, g, block("calc.py", "    return a - b\n"))  # matches two places
        assert accepts(llm, g, block("calc.py", "    return a - b\n\n"))  # one more line: one place
        assert not accepts(llm, g, block("calc.py", "\n"))  # blank only
        assert not accepts(llm, g, block("calc.py", ""))  # an empty SEARCH on a file that exists
        assert not accepts(llm, g, block("calc.py", "def add(a, b):\n").replace(">>>>>>> REPLACE\n", ""))  # unfinished
        assert accepts(llm, g, block("phys.py", "")) == new_files  # a new file only where the prompt creates files
    g = edit_grammar(files, new_files=["tests/test_calc.py", "calc.py"])  # after a plan: the files it names
    assert accepts(llm, g, block("tests/test_calc.py", "")) and accepts(llm, g, block("calc.py", "def add(a, b):\n"))
    assert not accepts(llm, g, block("phys.py", "")) and not accepts(llm, g, block("calc.py", ""))
    assert "new ::=" not in edit_grammar(files, new_files=["calc.py"])
    g = edit_grammar(files + [("src/数据-1.py", "")], new_files=True)
    for path in ("calc2.py", "calc.p", "calc.pyc", "c", "src/数据-1.pyi", "tests/test_calc.py", "odd"):
        assert accepts(llm, g, block(path, "")), path
    for path in ("calc.py", "odd.py", "src/数据-1.py", "new file.py", "`new.py`", "new.py:", ""):
        assert not accepts(llm, g, block(path, "")), path


def test_under_a_plan_s_one_stated_change_each_search_on_its_file_takes_in_that_line(coder):
    """``covers`` (``plan_target``: the X of a plan's one "from `X` to `Y`", where one line of
    the files has it): a SEARCH on its file may start above it but must reach it; other files,
    and a plan that states no change or several, or an X on two lines, hold nothing more."""
    llm = coder[1].load()
    files = [("t.py", "def f(m, s):\n    return m + 60 + s\n\n\ndef g(xs):\n    return xs[1:]\n"), ("u.py", "y = 1\n")]
    plan = "1. In `t.py`, function `f`, change line 2 from `return m + 60 + s` to `return m * 60 + s`."
    target = plan_target(files, plan)
    assert target == "return m + 60 + s"
    g = edit_grammar(files, lines=plan_lines(files, plan), covers=target)
    for search, want in [("    return m + 60 + s\n", True), ("def f(m, s):\n    return m + 60 + s\n", True),
                         ("def f(m, s):\n", False), ("    return xs[1:]\n", False), ("def g(xs):\n", False)]:
        assert accepts(llm, g, block("t.py", search, "    return m * 60 + s\n")) is want, search
    assert accepts(llm, g, block("u.py", "y = 1\n", "    return m * 60 + s\n"))  # another file: as before
    assert plan_target(files, "1. Run the tests.") is None
    assert plan_target(files, plan + " And change `return xs[1:]` to `return xs[2:]`.") is None  # two changes
    assert plan_target(files, "change `return m + 60 + s` to `return m + 60 + s`") is None  # no change
    assert plan_target(files + [("v.py", "    return m + 60 + s  # again\n")], plan) is None  # X on two lines
    assert plan_target(files, plan.replace("`return m + 60 + s`", "`return m + 60 + s  # old`")) == target  # its code


def test_under_held_names_a_replace_names_only_the_files_and_the_plans_names(coder):
    llm = coder[1].load()
    source = "def find(arr, needle):\n    for k in range(len(arr)):\n        if arr[k] != needle:\n            return k\n"
    files = [("find.py", source)]
    names = held_names(files, "1. In `find.py`, change `if arr[k] != needle:` to `if arr[k] == needle:`; use `idx`.")
    assert {"find", "arr", "needle", "k", "idx", "return", "len", "range", "for", "in"} <= names
    assert not {"change", "use", "not", "min"} & names  # the plan's prose is not code, nor what neither has
    g = edit_grammar(files, names=names, new_files=True)
    search = "        if arr[k] != needle:\n"

    def ok(replace: str) -> bool:
        return accepts(llm, g, block("find.py", search, replace))

    for good in ("        if arr[k] == needle:\n", "        if arr[idx] == needle:  # was != \u2713\n",
                 "    k = len(arr) + 0x1F - 2.5e3 * 1_000 + 3. + .5j\n", '    return f"lineedle {needle}" + \'b\'\n', "\n",
                 "return k\n", '    return """k""" + u"x"\n', "    (k)\n"):
        assert ok(good), good
    for bad in ("        if arr[k] == lineedle:\n", "        if arr[k] == needlex:\n", "    lineedle = 1\n",
                "=x\n", "<<<<<<< SEARCH\n", "    return k2\n", "    return 0lineedle\n", "        if not(arr[k] != needle):\n",
                '        if arr[k] == returnu":\n', "        if arr[k] == \u9876:\n", '    return "k\n', '    return k"x"\n'):
        assert not ok(bad), bad
    # a new file's lines are its own; without names the REPLACE is free as before
    assert accepts(llm, g, block("new.py", "", "anything_goes = 1\n"))
    assert accepts(llm, edit_grammar(files), block("find.py", search, "        if arr[k] == lineedle:\n"))


def test_the_paths_a_text_names_are_relative_and_stay_inside_the_root_and_a_plan_creates_only_what_it_says_to():
    from app.workspace.context import paths_named, paths_to_create

    text = "Add `src/cache.py`, then test it in tests/test_cache.py; see ./calc.py and ../etc/passwd.conf, calc.py again."
    assert paths_named(text) == ["src/cache.py", "tests/test_cache.py", "calc.py"]
    plan = ("1. Create `cache.py` with a class Cache.\n2. In `calc.py`, use it.\n3. 新建 `tests/test_cache.py`。\n"
            "4. Run the tests and check that `test_calc.py` passes.\n5. 在 `phys.py` 的函数 `f` 中，把第 3 行改为 `x`。")
    assert paths_to_create(plan) == ["cache.py", "tests/test_cache.py"]


def test_an_outline_sent_for_files_too_large_for_the_window_is_not_something_to_edit(tmp_path):
    root = tmp_path / "p"
    root.mkdir()
    (root / "big.py").write_text("".join(f"def f{i}(x):\n    return x + {i}\n\n" for i in range(400)))
    ws = Workspace(root)
    ws.context.add("big.py")
    config = server_config("http://127.0.0.1:9/v1", context=1024)
    config = dataclasses.replace(config, coder=dataclasses.replace(config.coder, constrain_edits=True))
    routed = Conversation(config, workspace=ws, save=False).prepare("fix the bug in big.py", "coder")
    assert routed.turn.files[0][0].startswith("outline of the files in context")
    assert routed.turn.editable == [] and routed.turn.grammar() is None
