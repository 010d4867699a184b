"""Training and eval examples: Duet's real prompts (app.prompts / app.turn) around a task module,
and the "teacher" answers a program writes for them.

The reasoner's target is a thinking trace that reads the module back line by line as the
prompt numbers it (each docstring before its code) up to the line that disagrees with its
docstring and says why, then a diagnosis and a numbered plan naming the file, the function,
the line and the exact change. The coder's target is one SEARCH/REPLACE block (CONTRACT.md's
format) that changes the buggy line (with lines above it only where the line alone is not
unique), and a one-line summary.
"""

from __future__ import annotations

import ast
import builtins
import dataclasses
import keyword
import random
import re
from dataclasses import dataclass

from app.exact_quotes import FINDING_WORDS
from training.tasks import KIND_EN, KIND_ZH, KINDS, Module, make_module

BOS = "<｜begin▁of▁sentence｜>"
EOS = "<｜end▁of▁sentence｜>"
USER = "<｜User｜>"
ASSISTANT = "<｜Assistant｜>"
THINK, END_THINK = "<think>", "</think>"
LISTED = re.compile(r" *\d+ \| ")  # a line read back as the prompt numbers it
REPLACE_LINES = re.compile(r"^=======\n(.*?)^>>>>>>> REPLACE", re.S | re.M)  # a coder block's REPLACE section
SPECIAL_TOKENS = [BOS, EOS, USER, ASSISTANT, THINK, END_THINK]

REQUESTS_EN = ["review {path}", "fix the bug in {path}", "why does {func} fail its test?"]
REQUESTS_ZH = ["审查 {path}", "修复 {path} 里的错误"]


def request_for(rng: random.Random, m: Module, *, lang: str | None = None) -> str:
    pool = REQUESTS_EN if lang == "en" else REQUESTS_ZH if lang == "zh" else (REQUESTS_EN * 2 + REQUESTS_ZH)
    return rng.choice(pool).format(path=m.path, func=m.func.name)


# ---------------------------------------------------------------------------- teacher text

def reason_en(kind: str, wrong: str, right: str) -> str:
    """What the trace's finding says of line K (Duet holds a finding to these words:
    app.exact_quotes.FINDING_WORDS)."""
    return FINDING_WORDS[kind].format(wrong=wrong, right=right)


def reason_zh(kind: str, wrong: str, right: str) -> str:
    return {
        "operator": f"用了 `{wrong}`，应该是 `{right}`",
        "off_by_one": f"边界差一：`{wrong}` 应为 `{right}`",
        "comparison": f"用 `{wrong}` 比较，应该是 `{right}`",
        "wrong_name": f"用了 `{wrong}`，应该是 `{right}`",
        "accumulator": f"累加器从 `{wrong}` 开始，应从 `{right}` 开始",
        "swapped_args": f"参数顺序反了：`{wrong}` 应为 `{right}`",
    }[kind]


def listing(m: Module, upto: int) -> list[str]:
    """The module's first ``upto`` lines exactly as Duet numbers them in the prompt
    (app.prompts.files_block): `` 7 |     return total``."""
    lines = m.source.rstrip("\n").split("\n")
    width = len(str(len(lines)))
    return [f"{n:>{width}} | {line}" for n, line in enumerate(lines[:upto], 1)]


def thinking(m: Module) -> str:
    """Read the module line by line, each function's docstring before its code, up to the line
    that disagrees with its docstring (the module has exactly one bug, so the reading stops
    there); then say why, and what it should be.

    The lines are read back exactly as the prompt numbers them, so reading is copying: after
    `` 7 |`` comes what follows `` 7 |`` in the prompt (what a small model's induction heads
    do well), and the one decision, at the end of each line, is whether the next thing
    written is the next line or the finding."""
    mut = m.mutation
    n = len(m.funcs)
    k = m.bug_line_no
    return "\n".join(
        [f"{m.path} has {n} function{'s' if n > 1 else ''}. I read the code line by line against each docstring."]
        + listing(m, k)
        + [f"Line {k} {reason_en(mut.kind, mut.wrong, mut.right)}. This is the bug.",
           f"So the bug is in `{m.func.name}`, line {k}: {KIND_EN[mut.kind]}. "
           f"Change `{m.bad_line.strip()}` to `{m.good_line.strip()}`."])


def answer(m: Module, lang: str, miscopy: tuple[str, str] | None = None) -> str:
    """The diagnosis and plan; with ``miscopy`` (a word of the line as it should be and what it
    became: ``miscopied``), the line as it should be written with that one word miscopied."""
    mut, f, k = m.mutation, m.func, m.bug_line_no
    bad, good = m.bad_line.strip(), m.good_line.strip()
    right = mut.right
    if miscopy is not None:
        good, right = (_swap_word(text, *miscopy) for text in (good, right))
    if lang == "zh":
        return (f"**错误：** `{m.path}` 的函数 `{f.name}`，第 {k} 行：{KIND_ZH[mut.kind]}。"
                f"文档字符串说 \"{f.doc}\"，但 `{bad}` {reason_zh(mut.kind, mut.wrong, right)}。\n\n"
                f"**计划：**\n"
                f"1. 在 `{m.path}` 的函数 `{f.name}` 中，把第 {k} 行 `{bad}` 改为 `{good}`。\n"
                f"2. 运行测试，确认 `{m.test_path}` 通过。")
    return (f"**Bug:** `{m.path}`, function `{f.name}`, line {k}: {KIND_EN[mut.kind]}. "
            f"The docstring says \"{f.doc}\", but `{bad}` {reason_en(mut.kind, mut.wrong, right)}.\n\n"
            f"**Plan:**\n"
            f"1. In `{m.path}`, function `{f.name}`, change line {k} from `{bad}` to `{good}`.\n"
            f"2. Run the tests and check that `{m.test_path}` passes.")


WORD = re.compile(r"[A-Za-z_]\w*|\d+")
PYTHON_NAMES = set(keyword.kwlist) | set(dir(builtins))


def code_names(source: str) -> set[str]:
    """The names a module's code uses: its functions, parameters and variables (not its docstrings' words)."""
    tree = ast.parse(source)
    return ({n.id for n in ast.walk(tree) if isinstance(n, ast.Name)} | {n.arg for n in ast.walk(tree) if isinstance(n, ast.arg)}
            | {n.name for n in ast.walk(tree) if isinstance(n, ast.FunctionDef)})


def _swap_word(text: str, old: str, new: str) -> str:
    """``text`` with its first whole word ``old`` written ``new``."""
    return re.sub(rf"(?<!\w){re.escape(old)}(?!\w)", lambda _: new, text, count=1)


def _misspelt(rng: random.Random, name: str) -> str:
    """``name`` copied wrongly: its end cut off, a letter dropped (a one-letter name left out, as
    in the demo reasoner's `return  * v`), or its end swapped for another."""
    cut = rng.randint(1, max(1, min(3, len(name) - 1)))
    options = [name[:-cut] or name + "s", name[:len(name) // 2] + name[len(name) // 2 + 1:],
               name[:max(1, len(name) - cut)] + rng.choice(["s", "er", "ed", "al", "or", "e", "_x"])]
    out = rng.choice(options)
    return out if out != name else name + "e"


def miscopied(rng: random.Random, m: Module) -> tuple[str, str] | None:
    """One word of the line as it should be, and how a plan writes it wrongly, as the demo reasoner
    miscopies text it has never seen (`return take_off(10, small)` for `return take_off(10, val)`,
    `whole_min` for `whole_minutes`): a name of the line written as another of the file's or
    misspelt, a number the change does not touch written as another. The change itself stays
    meant: a name that is the fix (wrong_name's) is only misspelt, never another name, and a
    number or operator that is the fix is never touched. None when the line has no such word."""
    good, bad = m.good_line.strip(), m.bad_line.strip()
    in_bad = set(WORD.findall(bad))
    file_names = sorted(code_names(m.source) - PYTHON_NAMES)
    words = []
    for w in dict.fromkeys(WORD.findall(good)):
        if w in PYTHON_NAMES or (w.isdigit() and (w not in in_bad or m.mutation.kind in ("off_by_one", "accumulator"))):
            continue
        words.append(w)
    if not words:
        return None
    word = rng.choice(words)
    if word.isdigit():
        new = rng.choice([str(int(word) + 1), str(max(0, int(word) - 1)), word + "0", str(rng.randint(0, 9))])
    elif word not in in_bad or rng.random() < 0.5:
        new = _misspelt(rng, word)
    else:
        new = rng.choice([n for n in file_names if n != word] or [_misspelt(rng, word)])
    return (word, new) if new != word else None


def coder_answer(m: Module, lang: str) -> str:
    """One block that changes the buggy line only: SEARCH is that line as the file has it (the
    plan quotes it: "change line K from `bad` to `good`"), with the lines above it added only
    while it would match more than one place; REPLACE is the same with the one line changed.
    A short block is short copying: the line comes from the plan a few lines up, not from a
    whole function read back out of the file."""
    lines = m.source.split("\n")
    k = m.bug_line_no
    first = k - 1
    while _count(lines, lines[first:k]) > 1:
        first -= 1
    search = lines[first:k]
    replace = search[:-1] + [m.good_line]
    block = f"{m.path}\n<<<<<<< SEARCH\n" + "\n".join(search) + "\n=======\n" + "\n".join(replace) + "\n>>>>>>> REPLACE\n"
    bad, good = m.bad_line.strip(), m.good_line.strip()
    summary = (f"修复了 `{m.func.name}`：`{bad}` 改为 `{good}`。" if lang == "zh"
               else f"Fixed `{m.func.name}`: `{bad}` is now `{good}`.")
    return block + "\n" + summary


def _count(lines: list[str], block: list[str]) -> int:
    n = len(block)
    return sum(lines[i:i + n] == block for i in range(len(lines) - n + 1))


# ---------------------------------------------------------------------------- Duet's prompts

def lang_of(request: str) -> str:
    from app.prompts import detect_lang

    return detect_lang(request)


def reasoner_prompt(m: Module, request: str, intent: str | None = None) -> str:
    """The user message Duet sends the reasoner (a forced reasoner turn with the file in context);
    ``intent`` overrides the router's, as `duet run --role reasoner` and `/plan` do ("design")."""
    from app.turn import build_prompt_text, decide

    decision = decide(request, "reasoner")
    if intent is not None:
        decision = dataclasses.replace(decision, intent=intent)
    return build_prompt_text(decision, None, [(m.path, m.source)], None)


def coder_prompt(m: Module, request: str, plan: str | None, mode: str) -> str:
    """The coder's user message: ``handoff`` (app.prompts.handoff_brief), ``turn`` (a coder turn
    after a plan, as app.turn builds it) or ``direct`` (the router sent the request straight to
    the coder: no plan)."""
    from app.prompts import handoff_brief
    from app.turn import build_prompt_text, decide

    files = [(m.path, m.source)]
    if mode == "handoff":
        return handoff_brief(plan, files)
    if mode == "turn":
        return build_prompt_text(decide(request, "coder", after_plan=True), plan, files, None)
    return build_prompt_text(decide(request, "coder"), None, files, None)


def chat(prompt: str, *, generation: bool = True, reasoning: bool = True) -> str:
    """The chat template's rendering of one user turn (what both models' templates produce)."""
    return BOS + USER + prompt + ASSISTANT + (THINK + "\n" if reasoning and generation else "")


def decision_spans(target: str) -> list[tuple[int, int]]:
    """Where a target decides rather than copies, as [start, end) character spans, which the
    trainer weighs more (``decision_weight``). A reasoner's: the first character of each line
    the trace writes after its opening line (the next numbered line read back, or the finding),
    the finding's lines whole, and the answer's first paragraph (the diagnosis); the rest is
    reading back the prompt, which a model learns early. A coder's: each block's REPLACE lines
    (its path and SEARCH lines are copies, which Duet's edit grammar holds to the file anyway)."""
    if END_THINK not in target:
        return [(m.start(1), m.end(1)) for m in REPLACE_LINES.finditer(target)]
    spans = []
    think_end = target.find(END_THINK)
    thinking = target[:think_end]
    pos = thinking.find("\n") + 1  # the opening line is not a decision
    while 0 < pos < len(thinking):
        end = thinking.find("\n", pos)
        end = len(thinking) if end < 0 else end
        spans.append((pos, pos + 1) if LISTED.match(thinking[pos:end]) else (pos, end))
        pos = end + 1
    start = think_end + len(END_THINK)
    while start < len(target) and target[start] == "\n":
        start += 1
    para = target.find("\n\n", start)
    spans.append((start, len(target) if para < 0 else para))
    return spans


# ---------------------------------------------------------------------------- examples

@dataclass
class Example:
    prompt: str  # full chat text up to where the model starts
    target: str  # what the model should write, ending with EOS
    module: Module
    request: str
    lang: str


def reasoner_example(rng: random.Random, m: Module, *, think: bool = True, request: str | None = None,
                     intent: str | None = None) -> Example:
    request = request or request_for(rng, m)
    lang = lang_of(request)
    trace = thinking(m) if think else ""
    target = (trace + "\n" if trace else "\n") + END_THINK + "\n\n" + answer(m, lang) + EOS
    return Example(chat(reasoner_prompt(m, request, intent)), target, m, request, lang)


def coder_example(rng: random.Random, m: Module, *, mode: str | None = None, request: str | None = None,
                  miscopy_share: float = 0.0) -> Example:
    """A coder example; with ``miscopy_share``, that share of its plans has the line as it should
    be miscopied (``miscopied``) while the target stays the right fix: the change is the plan's,
    the text is the file's."""
    mode = mode or rng.choices(["handoff", "turn", "direct"], [5, 4, 1])[0]
    if mode == "direct":
        request = request or rng.choice(["fix the bug in {path}", "修复 {path} 里的错误"]).format(path=m.path)
    else:
        request = request or request_for(rng, m)
    lang = lang_of(request)
    miscopy = miscopied(rng, m) if miscopy_share > 0 and mode != "direct" and rng.random() < miscopy_share else None
    if miscopy is not None and m.mutation.kind == "swapped_args" and rng.random() < 0.25:
        # a quarter of the swapped calls' miscopies write the call back as it is: a plan that
        # changes the line into itself (the demo reasoner's "`take_off(100, x)` should be `take_off(100, x)`")
        good, bad = m.good_line.strip(), m.bad_line.strip()
        plan = answer(m, lang).replace(f"to `{good}`", f"to `{bad}`").replace(f"改为 `{good}`", f"改为 `{bad}`")
    else:
        plan = answer(m, lang, miscopy) if mode != "direct" else None
    prompt = coder_prompt(m, request, plan, mode)
    return Example(chat(prompt, reasoning=False), coder_answer(m, lang) + EOS, m, request, lang)


def sample_module(rng: random.Random, style: str, kind_weights: dict[str, float] | None = None) -> Module:
    """A module with a bug of a kind drawn uniformly, or by ``kind_weights`` (kind -> weight, 1 for
    kinds it leaves out)."""
    if kind_weights:
        kind = rng.choices(KINDS, [kind_weights.get(k, 1.0) for k in KINDS])[0]
    else:
        kind = rng.choice(KINDS)  # (the committed recipe's draw: its stream stays as it was)
    return make_module(rng, style, kind=kind)


if __name__ == "__main__":
    r = random.Random(3)
    m = sample_module(r, "train")
    e = reasoner_example(r, m)
    print(e.prompt + e.target)
    print("=" * 60)
    c = coder_example(r, m, mode="handoff")
    print(c.prompt + c.target)
    c = coder_example(r, m, mode="direct")
    print("=" * 60)
    print(c.prompt + c.target)
