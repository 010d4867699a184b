"""The task domain: small Python modules with exactly one planted bug, and their tests.

A module has 1–4 top-level functions (2–12 lines each, a one-line docstring saying what the
function returns) and a test file of plain ``assert``s computed by running the correct code.
One function carries one planted bug of a fixed kind (``KINDS``); the bug is checked to make
at least one assert fail, and the buggy line is unique in the file so an edit can name it.

Two styles share the function shapes but not the surface: ``"train"`` and ``"heldout"`` draw
names (functions, parameters, variables, files) and docstring phrasings from disjoint pools,
so the eval measures the skill on modules the models never saw.

Everything is seeded: ``make_module(random.Random(seed), style)`` is reproducible.
"""

from __future__ import annotations

import json
import keyword
import random
import re
from dataclasses import dataclass, field

from app.demo import reasoner_path

KINDS = ("operator", "off_by_one", "comparison", "wrong_name", "accumulator", "swapped_args")

KIND_EN = {
    "operator": "wrong arithmetic operator",
    "off_by_one": "off-by-one bound",
    "comparison": "wrong comparison",
    "wrong_name": "wrong name",
    "accumulator": "wrong accumulator start",
    "swapped_args": "swapped arguments",
}
KIND_ZH = {
    "operator": "算术运算符用错",
    "off_by_one": "边界差一",
    "comparison": "比较运算符用错",
    "wrong_name": "用错了名字",
    "accumulator": "累加器初值错误",
    "swapped_args": "调用参数顺序颠倒",
}


@dataclass
class Mutation:
    line: int  # index into Func.body
    new: str  # the buggy body line (with indentation)
    kind: str
    wrong: str  # the short code piece that is wrong ...
    right: str  # ... and what it should be


@dataclass
class Func:
    name: str
    params: list[str]
    doc: str
    body: list[str]  # indented body lines, docstring excluded
    key: int  # the body line that carries the docstring's meaning (quoted when it is right)
    args: object  # rng -> tuple of call arguments
    muts: list[Mutation] = field(default_factory=list)
    calls: str | None = None  # name of a helper it calls (must come earlier in the module)

    def lines(self, body=None) -> list[str]:
        return [f"def {self.name}({', '.join(self.params)}):", f'    """{self.doc}"""'] + list(body or self.body)


@dataclass
class Module:
    path: str  # e.g. "calc.py"
    funcs: list[Func]
    bug_func: int  # index into funcs
    mutation: Mutation
    source: str  # buggy source
    fixed: str  # correct source
    test_path: str
    test_source: str
    style: str

    @property
    def func(self) -> Func:
        return self.funcs[self.bug_func]

    def line_no(self, func_index: int, body_index: int) -> int:
        """1-based line number in the file of a body line."""
        n = 1
        for i, f in enumerate(self.funcs):
            if i == func_index:
                return n + 2 + body_index
            n += len(f.lines()) + 2  # two blank lines between functions
        raise IndexError(func_index)

    def span(self, func_index: int) -> tuple[int, int]:
        start = self.line_no(func_index, 0) - 2
        return start, start + len(self.funcs[func_index].lines()) - 1

    @property
    def bad_line(self) -> str:
        """The buggy line as it stands in the file."""
        return self.mutation.new

    @property
    def good_line(self) -> str:
        """What that line should be."""
        return self.func.body[self.mutation.line]

    @property
    def bug_line_no(self) -> int:
        return self.line_no(self.bug_func, self.mutation.line)


# ---------------------------------------------------------------------------- name pools

POOLS = {
    "train": {
        "pair": [("a", "b"), ("x", "y"), ("m", "n"), ("left", "right"), ("first", "second"), ("p", "q")],
        "seq": ["xs", "items", "values", "nums", "numbers", "data", "scores"],
        "elem": ["x", "item", "value", "v", "number"],
        "acc": ["total", "acc", "result", "s", "out"],
        "count": ["count", "hits", "n_found", "c"],
        "best": ["best", "top", "current", "biggest"],
        "limit": ["limit", "threshold", "bound", "cutoff"],
        "num": ["n", "k", "size", "count_to"],
        "text": ["text", "word", "line", "s"],
        "char": ["ch", "letter", "c"],
        "idx": ["i", "j", "idx"],
        "files": ["calc.py", "mathutils.py", "listops.py", "helpers.py", "tools.py", "util.py",
                  "series.py", "counting.py", "arith.py", "core.py", "metrics.py", "vectors.py",
                  "text_tools.py", "geometry.py", "scores.py", "prices.py", "grades.py",
                  "inventory.py", "numeric.py", "basics.py", "summary.py", "ops.py"],
    },
    "heldout": {
        "pair": [("u", "v"), ("lhs", "rhs"), ("num1", "num2"), ("i1", "i2"), ("alpha", "beta")],
        "seq": ["seq", "arr", "vals", "elements", "series_in", "samples"],
        "elem": ["e", "el", "val", "entry", "sample"],
        "acc": ["running", "tally", "res", "agg", "accum"],
        "count": ["matches", "cnt", "found", "num_hits"],
        "best": ["champ", "winner", "hi", "record"],
        "limit": ["pivot", "level", "edge", "floor_value"],
        "num": ["m", "num", "howmany", "upto"],
        "text": ["string", "phrase", "chars", "msg"],
        "char": ["symbol", "target_ch", "glyph"],
        "idx": ["pos", "k", "ix"],
        "files": ["ledger.py", "physics.py", "tally_tools.py", "sequences.py", "quant.py", "reckon.py",
                  "toolkit.py", "figures.py", "measure.py", "bookkeeping.py", "payroll.py", "routines.py"],
    },
}


# Training also draws many names from random words, so the models learn to copy names from the
# prompt rather than to pick from a closed list. No word of the held-out pools is among them.
_WORDS = """apple bank cart desk echo farm gate hill iron jam kite lamp moon nest oak pear quill rock
sail tide umbra vase wolf yarn zinc amber bolt cedar dune ember fern grove harbor ivory jade kelp
lemon maple noble olive pixel quartz raven stone tulip velvet willow cobalt delta fable glint honey
inlet jolly karma lotus mango north orbit plume quest river solar tango unity vivid wheat xenon yield
brisk coral drift flint frost globe haze latch mossy nimble opal prism ridge spark thorn vapor blaze
cargo ditto ferry gizmo husk jumbo koala lilac merit nutmeg oxide panda radar sable torch urban vigor
badge crumb dingo fiber grain hobby index joint knack lever medal nylon outer patch quota rally shelf
token upper valve width xray zebra alpha_one bucket candle dollar engine garden
""".split()
_AVOID_NAMES = {"sum", "len", "range", "list", "max", "min", "print", "str", "int", "id", "map", "filter",
                "input", "type", "iter", "next", "open", "format", "hash", "round", "pow", "abs", "all", "any"}


def _heldout_words() -> set[str]:
    words = set()
    for values in POOLS["heldout"].values():
        for v in values:
            for part in (v if isinstance(v, tuple) else (v,)):
                words.update(part.replace(".py", "").split("_"))
    return words


_BANNED = _heldout_words() | _AVOID_NAMES

# Training docstrings open with other verbs half the time, so a model keys on what a docstring
# says the function returns, not on its first word. (The held-out phrasings are not among these.)
_TRAIN_VERBS = ["Compute", "Computes", "Give", "Produce", "Produces", "Calculate", "Calculates", "Yield", "Get",
                "Work out", "Hand back", "Return"]


def train_doc(rng, style, text: str) -> str:
    if style == "train" and text.startswith("Return ") and rng.random() < 0.5:
        return rng.choice(_TRAIN_VERBS) + text[len("Return"):]
    return text


_TRAIN_WORDS: list[str] = []
_CONSONANTS, _VOWELS = "bcdfghjklmnprstvwz", "aeiou"


def _invented_word(rng) -> str:
    """A pronounceable non-word ("kolvamu"): its BPE pieces are arbitrary, so copying it from the
    prompt takes the general skill (copy any token sequence), not a memorised name."""
    return "".join(rng.choice(_CONSONANTS) + rng.choice(_VOWELS) + (rng.choice("nrlst") if rng.random() < 0.3 else "")
                   for _ in range(rng.choice([1, 2, 2, 3])))


_PIECES: list[str] = []


def _piece_word(rng) -> str:
    """A name part made of 1-3 pieces drawn uniformly from the committed tokenizer's all-letter
    tokens ("turber", "urvroot"): no spelling habit predicts its next piece, so the one way to
    write it again is to copy it, piece by piece, whatever the pieces are. (Invented syllables
    teach a habit instead: a model trained on them writes a held-out name's first piece, then
    syllables of its own — `elements` as `elember`.)"""
    if not _PIECES:
        vocab = json.loads((reasoner_path() / "tokenizer.json").read_text(encoding="utf-8"))["model"]["vocab"]
        _PIECES.extend(sorted(t for t in vocab if re.fullmatch(r"[a-z][a-z0-9]*", t)))
    return "".join(rng.choice(_PIECES) for _ in range(rng.choice([1, 2, 2, 3])))


# How training's random names make their invented parts: "syllables" (_invented_word, the
# committed reasoner's recipe) or "pieces" (_piece_word, the coder's). The trainer sets it per role.
NAME_PARTS = "syllables"


def random_name(rng, *, parts: int | None = None) -> str:
    """A training name: invented words and everyday words, joined by underscores."""
    global _TRAIN_WORDS
    invent = _piece_word if NAME_PARTS == "pieces" else _invented_word
    if not _TRAIN_WORDS:
        _TRAIN_WORDS = [w for w in _WORDS if "_" not in w and w not in _BANNED]
    for _ in range(20):
        parts_n = parts or rng.choice([1, 1, 2])
        name = "_".join(invent(rng) if rng.random() < 0.6 else rng.choice(_TRAIN_WORDS) for _ in range(parts_n))
        if rng.random() < 0.15:
            name += str(rng.randint(1, 9))
        if name not in _BANNED and not keyword.iskeyword(name) and not any(w in _BANNED for w in name.split("_")):
            return name
    return rng.choice(_TRAIN_WORDS)


RANDOM_NAME_P = 0.6  # training style: how often a name is random words instead of from the pool


def pick(rng, style, key, avoid=()):
    if style == "train" and rng.random() < RANDOM_NAME_P:
        name = random_name(rng) + (".py" if key == "files" else "")
        if name not in avoid:
            return name
    choices = [c for c in POOLS[style][key] if c not in avoid]
    return rng.choice(choices)


def styled(rng, style, train: list[str], heldout: list[str]) -> str:
    """A docstring phrasing or a name from the style's list; training names are random half the
    time and training docstrings vary their opening verb."""
    if style == "train" and train[0].isidentifier() and rng.random() < RANDOM_NAME_P:
        return random_name(rng)
    return train_doc(rng, style, rng.choice(train if style == "train" else heldout))


def ints(rng, lo=-9, hi=20, n=None):
    n = n if n is not None else rng.randint(3, 6)
    return [rng.randint(lo, hi) for _ in range(n)]


# ---------------------------------------------------------------------------- families
# Each family: (rng, style, used_names) -> list[Func] (a helper first when it calls one).

OPS = {"+": "sum", "-": "difference", "*": "product", "//": "integer quotient"}
OTHER_OPS = {"+": ["-", "*"], "-": ["+", "*"], "*": ["+", "-", "//"], "//": ["*", "-"]}


def fam_binary(rng, style):
    op = rng.choice(list(OPS))
    a, b = rng.choice(POOLS[style]["pair"])
    names = {"+": (["add", "plus", "sum_two", "add_numbers"], ["combine", "add_up", "sum_pair"]),
             "-": (["subtract", "minus", "difference", "take_away"], ["deduct", "diff_of", "reduce_by"]),
             "*": (["multiply", "times", "product", "mul"], ["scale_by", "times_of", "multiplied"]),
             "//": (["divide", "int_div", "quotient", "floor_div"], ["split_evenly", "share", "whole_parts"])}[op]
    docs = {"+": (["Return the sum of {a} and {b}.", "Return {a} plus {b}.", "Add {a} and {b} and return the sum."],
                  ["Returns the sum of {a} and {b}.", "Gives back {a} plus {b}."]),
            "-": (["Return the difference {a} minus {b}.", "Return {a} minus {b}.", "Subtract {b} from {a} and return the difference."],
                  ["Returns {a} minus {b}.", "Gives back the difference {a} minus {b}."]),
            "*": (["Return the product of {a} and {b}.", "Return {a} times {b}.", "Multiply {a} by {b} and return the product."],
                  ["Returns the product of {a} and {b}.", "Gives back {a} times {b}."]),
            "//": (["Return the integer quotient of {a} divided by {b}.", "Return {a} divided by {b}, rounded down.", "Divide {a} by {b} and return the integer quotient."],
                   ["Returns {a} divided by {b}, rounded down.", "Gives back the integer quotient of {a} by {b}."])}[op]
    name = styled(rng, style, *names)
    doc = styled(rng, style, *docs).format(a=a, b=b)
    body = [f"    return {a} {op} {b}"]
    muts = [Mutation(0, f"    return {a} {w} {b}", "operator", w, op) for w in OTHER_OPS[op]]
    if rng.random() < 0.5:
        muts.append(Mutation(0, f"    return {b} {op} {a}" if op in "-//" else f"    return {a} {op} {a}", "wrong_name",
                             f"{b} {op} {a}" if op in "-//" else f"{a} {op} {a}", f"{a} {op} {b}"))
        if op not in "-//":
            muts[-1].wrong, muts[-1].right = f"{a} {op} {a}", f"{a} {op} {b}"
    args = (lambda r: (r.randint(5, 40), r.randint(2, 9)))
    return [Func(name, [a, b], doc, body, 0, args, muts)]


def fam_two_step(rng, style):
    """area / perimeter / to_seconds / celsius — two operators in one expression."""
    kind = rng.choice(["perimeter", "seconds", "cost", "average2"])
    if kind == "perimeter":
        w, h = styled(rng, style, ["width", "w"], ["wd", "side_a"]), styled(rng, style, ["height", "h"], ["ht", "side_b"])
        name = styled(rng, style, ["perimeter", "rect_perimeter"], ["border_length", "outline"])
        doc = styled(rng, style, ["Return the perimeter of a {w} by {h} rectangle: twice the sum of the sides."],
                     ["Returns twice the sum of {w} and {h}, the rectangle's perimeter."]).format(w=w, h=h)
        body = [f"    return 2 * ({w} + {h})"]
        muts = [Mutation(0, f"    return 2 * ({w} - {h})", "operator", "-", "+"),
                Mutation(0, f"    return 2 + ({w} + {h})", "operator", "2 +", "2 *"),
                Mutation(0, f"    return 2 * ({w} + {w})", "wrong_name", f"{w} + {w}", f"{w} + {h}")]
        params = [w, h]
        args = lambda r: (r.randint(2, 30), r.randint(2, 30))
    elif kind == "seconds":
        mi, se = styled(rng, style, ["minutes", "mins"], ["mm", "whole_minutes"]), styled(rng, style, ["seconds", "secs"], ["ss", "extra_seconds"])
        name = styled(rng, style, ["to_seconds", "total_seconds"], ["as_seconds", "seconds_total"])
        doc = styled(rng, style, ["Return the total number of seconds in {m} minutes and {s} seconds."],
                     ["Returns how many seconds {m} minutes plus {s} seconds make."]).format(m=mi, s=se)
        body = [f"    return {mi} * 60 + {se}"]
        muts = [Mutation(0, f"    return {mi} * 60 - {se}", "operator", "-", "+"),
                Mutation(0, f"    return {mi} + 60 + {se}", "operator", f"{mi} + 60", f"{mi} * 60"),
                Mutation(0, f"    return {se} * 60 + {mi}", "wrong_name", f"{se} * 60 + {mi}", f"{mi} * 60 + {se}")]
        params = [mi, se]
        args = lambda r: (r.randint(1, 50), r.randint(1, 59))
    elif kind == "cost":
        pr, q = styled(rng, style, ["price", "unit_price"], ["each", "rate"]), styled(rng, style, ["quantity", "qty"], ["units", "amount"])
        fee = rng.choice([2, 3, 5, 7])
        name = styled(rng, style, ["order_cost", "total_cost"], ["bill", "charge_for"])
        doc = styled(rng, style, ["Return {p} times {q} plus a fixed fee of {f}."],
                     ["Returns the cost of {q} units at {p} each, plus a fee of {f}."]).format(p=pr, q=q, f=fee)
        body = [f"    return {pr} * {q} + {fee}"]
        muts = [Mutation(0, f"    return {pr} * {q} - {fee}", "operator", "-", "+"),
                Mutation(0, f"    return {pr} + {q} + {fee}", "operator", f"{pr} + {q}", f"{pr} * {q}"),
                Mutation(0, f"    return {pr} * {pr} + {fee}", "wrong_name", f"{pr} * {pr}", f"{pr} * {q}")]
        params = [pr, q]
        args = lambda r: (r.randint(2, 20), r.randint(2, 9))
    else:
        a, b = rng.choice(POOLS[style]["pair"])
        name = styled(rng, style, ["midpoint", "mean_of_two"], ["halfway", "middle_of"])
        doc = styled(rng, style, ["Return the midpoint of {a} and {b}, rounded down."],
                     ["Returns the value halfway between {a} and {b}, rounded down."]).format(a=a, b=b)
        body = [f"    return ({a} + {b}) // 2"]
        muts = [Mutation(0, f"    return ({a} - {b}) // 2", "operator", f"{a} - {b}", f"{a} + {b}"),
                Mutation(0, f"    return ({a} + {b}) * 2", "operator", "* 2", "// 2"),
                Mutation(0, f"    return ({a} + {a}) // 2", "wrong_name", f"{a} + {a}", f"{a} + {b}")]
        params = [a, b]
        args = lambda r: (r.randint(0, 40), r.randint(41, 90))
    return [Func(name, params, doc, body, 0, args, muts)]


def fam_sum_list(rng, style):
    xs = pick(rng, style, "seq")
    x = pick(rng, style, "elem")
    acc = pick(rng, style, "acc")
    product = rng.random() < 0.35
    if product:
        name = styled(rng, style, ["product_of", "multiply_all", "prod"], ["product_all", "times_all"])
        doc = styled(rng, style, ["Return the product of the numbers in {xs}.", "Return all numbers in {xs} multiplied together."],
                     ["Returns the product of every number in {xs}.", "Multiplies the numbers in {xs} and returns the product."]).format(xs=xs)
        start, wrong_start, op, wops = "1", "0", "*", ["+"]
    else:
        name = styled(rng, style, ["total", "sum_list", "add_all", "sum_of"], ["grand_total", "sum_all", "summed"])
        doc = styled(rng, style, ["Return the sum of the numbers in {xs}.", "Return the total of all numbers in {xs}."],
                     ["Returns the sum of every number in {xs}.", "Adds up the numbers in {xs} and returns the total."]).format(xs=xs)
        start, wrong_start, op, wops = "0", "1", "+", ["-", "*"]
    aug = rng.random() < 0.6
    upd = f"        {acc} {op}= {x}" if aug else f"        {acc} = {acc} {op} {x}"
    body = [f"    {acc} = {start}", f"    for {x} in {xs}:", upd, f"    return {acc}"]
    muts = [Mutation(0, f"    {acc} = {wrong_start}", "accumulator", wrong_start, start),
            Mutation(3, f"    return {x}", "wrong_name", f"return {x}", f"return {acc}")]
    for w in wops:
        muts.append(Mutation(2, f"        {acc} {w}= {x}" if aug else f"        {acc} = {acc} {w} {x}", "operator", w, op))
    args = (lambda r: (ints(r, 2, 6),)) if product else (lambda r: (ints(r, -5, 30),))
    return [Func(name, [xs], doc, body, 2, args, muts)]


CMP_SWAP = {">": ["<", ">="], "<": [">", "<="], ">=": [">", "<"], "<=": ["<", ">"], "==": ["!="], "!=": ["=="]}
CMP_EN = {">": "greater than", "<": "less than", ">=": "at least", "<=": "at most", "==": "equal to", "!=": "not equal to"}
CMP_EN_H = {">": "above", "<": "below", ">=": "greater than or equal to", "<=": "less than or equal to", "==": "equal to", "!=": "different from"}


def fam_count_if(rng, style):
    xs, x, c, lim = pick(rng, style, "seq"), pick(rng, style, "elem"), pick(rng, style, "count"), pick(rng, style, "limit")
    op = rng.choice([">", "<", ">=", "<=", "==", "!="])
    words = (CMP_EN if style == "train" else CMP_EN_H)[op]
    stem = {">": "above", "<": "below", ">=": "at_least", "<=": "at_most", "==": "equal", "!=": "not_equal"}[op]
    name = styled(rng, style, [f"count_{stem}", f"how_many_{stem}", f"num_{stem}"], [f"tally_{stem}", f"n_{stem}"])
    doc = styled(rng, style, ["Return how many numbers in {xs} are {w} {lim}.", "Return the count of items in {xs} {w} {lim}."],
                 ["Returns the number of values in {xs} that are {w} {lim}.", "Counts entries of {xs} {w} {lim} and returns the count."]
                 ).format(xs=xs, w=words, lim=lim)
    if x == c:
        c = "count" if x != "count" else "hits"
    body = [f"    {c} = 0", f"    for {x} in {xs}:", f"        if {x} {op} {lim}:", f"            {c} += 1", f"    return {c}"]
    muts = [Mutation(2, f"        if {x} {w} {lim}:", "comparison", w, op) for w in CMP_SWAP[op]]
    muts += [Mutation(0, f"    {c} = 1", "accumulator", "1", "0"),
             Mutation(4, f"    return {x}", "wrong_name", f"return {x}", f"return {c}")]
    args = lambda r: (ints(r, 0, 12, r.randint(4, 7)) , r.randint(3, 9))
    return [Func(name, [xs, lim], doc, body, 2, args, muts)]


def fam_extreme(rng, style):
    xs, x, best = pick(rng, style, "seq"), pick(rng, style, "elem"), pick(rng, style, "best")
    big = rng.random() < 0.5
    op = ">" if big else "<"
    name = styled(rng, style, ["largest", "max_value", "biggest_of"] if big else ["smallest", "min_value", "lowest_of"],
                  ["peak", "highest"] if big else ["minimum_of", "least"])
    what = "largest" if big else "smallest"
    doc = styled(rng, style, ["Return the {w} number in {xs}.", "Return the {w} value in {xs}."],
                 ["Returns the {w} element of {xs}.", "Finds and returns the {w} entry in {xs}."]).format(w=what, xs=xs)
    body = [f"    {best} = {xs}[0]", f"    for {x} in {xs}[1:]:", f"        if {x} {op} {best}:", f"            {best} = {x}", f"    return {best}"]
    muts = [Mutation(2, f"        if {x} {'<' if big else '>'} {best}:", "comparison", "<" if big else ">", op),
            Mutation(4, f"    return {x}", "wrong_name", f"return {x}", f"return {best}"),
            Mutation(0, f"    {best} = {xs}[1]", "off_by_one", f"{xs}[1]", f"{xs}[0]")]

    def args(r):
        v = ints(r, -20, 50, r.randint(4, 6))
        return (v,)
    return [Func(name, [xs], doc, body, 2, args, muts)]


def fam_slice(rng, style):
    xs, n = pick(rng, style, "seq"), pick(rng, style, "num")
    first = rng.random() < 0.5
    if first:
        name = styled(rng, style, ["first_n", "head", "take"], ["leading", "front_part"])
        doc = styled(rng, style, ["Return the first {n} items of {xs}.", "Return a list of the first {n} elements of {xs}."],
                     ["Returns the leading {n} elements of {xs}.", "Gives back the first {n} entries of {xs}."]).format(n=n, xs=xs)
        body = [f"    return {xs}[:{n}]"]
        muts = [Mutation(0, f"    return {xs}[:{n} - 1]", "off_by_one", f"[:{n} - 1]", f"[:{n}]"),
                Mutation(0, f"    return {xs}[:{n} + 1]", "off_by_one", f"[:{n} + 1]", f"[:{n}]"),
                Mutation(0, f"    return {xs}[1:{n}]", "off_by_one", f"[1:{n}]", f"[:{n}]")]
    else:
        name = styled(rng, style, ["without_first", "tail_from", "drop"], ["skip_leading", "after_first"])
        doc = styled(rng, style, ["Return {xs} without its first {n} items.", "Return the items of {xs} after the first {n}."],
                     ["Returns every element of {xs} except the first {n}.", "Gives back {xs} minus its leading {n} entries."]).format(n=n, xs=xs)
        body = [f"    return {xs}[{n}:]"]
        muts = [Mutation(0, f"    return {xs}[{n} + 1:]", "off_by_one", f"[{n} + 1:]", f"[{n}:]"),
                Mutation(0, f"    return {xs}[{n} - 1:]", "off_by_one", f"[{n} - 1:]", f"[{n}:]")]
    args = lambda r: (ints(r, 0, 30, r.randint(5, 7)), r.randint(2, 4))
    return [Func(name, [xs, n], doc, body, 0, args, muts)]


def fam_range_sum(rng, style):
    n, i, acc = pick(rng, style, "num"), pick(rng, style, "idx"), pick(rng, style, "acc")
    fact = rng.random() < 0.4
    if fact:
        name = styled(rng, style, ["factorial", "fact"], ["factorial_of", "bang"])
        doc = styled(rng, style, ["Return the factorial of {n}: the product of 1 to {n}.", "Return {n} factorial, the product 1 * 2 * ... * {n}."],
                     ["Returns the product of the integers from 1 to {n} inclusive.", "Computes and returns {n}!."]).format(n=n)
        body = [f"    {acc} = 1", f"    for {i} in range(2, {n} + 1):", f"        {acc} *= {i}", f"    return {acc}"]
        muts = [Mutation(0, f"    {acc} = 0", "accumulator", "0", "1"),
                Mutation(1, f"    for {i} in range(2, {n}):", "off_by_one", f"range(2, {n})", f"range(2, {n} + 1)"),
                Mutation(2, f"        {acc} += {i}", "operator", "+=", "*="),
                Mutation(3, f"    return {i}", "wrong_name", f"return {i}", f"return {acc}")]
        args = lambda r: (r.randint(3, 7),)
    else:
        name = styled(rng, style, ["sum_to", "triangle", "sum_up_to"], ["summation", "add_through"])
        doc = styled(rng, style, ["Return the sum of the integers from 1 to {n} inclusive.", "Return 1 + 2 + ... + {n}."],
                     ["Returns the sum of all whole numbers from 1 through {n}.", "Adds 1 through {n} and returns the sum."]).format(n=n)
        body = [f"    {acc} = 0", f"    for {i} in range(1, {n} + 1):", f"        {acc} += {i}", f"    return {acc}"]
        muts = [Mutation(0, f"    {acc} = 1", "accumulator", "1", "0"),
                Mutation(1, f"    for {i} in range(1, {n}):", "off_by_one", f"range(1, {n})", f"range(1, {n} + 1)"),
                Mutation(2, f"        {acc} *= {i}", "operator", "*=", "+="),
                Mutation(2, f"        {acc} -= {i}", "operator", "-=", "+="),
                Mutation(3, f"    return {i}", "wrong_name", f"return {i}", f"return {acc}")]
        args = lambda r: (r.randint(3, 12),)
    return [Func(name, [n], doc, body, 1, args, muts)]


def fam_filter(rng, style):
    xs, x, acc = pick(rng, style, "seq"), pick(rng, style, "elem"), pick(rng, style, "acc")
    even = rng.random() < 0.5
    op = "==" if even else "!="
    what = "even" if even else "odd"
    name = styled(rng, style, [f"{what}s", f"keep_{what}", f"only_{what}"], [f"{what}_only", f"pick_{what}", f"select_{what}"])
    doc = styled(rng, style, ["Return a list of the {w} numbers in {xs}.", "Return the {w} values of {xs}, in order."],
                 ["Returns only the {w} elements of {xs}.", "Builds and returns a list of the {w} entries in {xs}."]).format(w=what, xs=xs)
    body = [f"    {acc} = []", f"    for {x} in {xs}:", f"        if {x} % 2 {op} 0:", f"            {acc}.append({x})", f"    return {acc}"]
    muts = [Mutation(2, f"        if {x} % 2 {'!=' if even else '=='} 0:", "comparison", "!=" if even else "==", op),
            Mutation(0, f"    {acc} = [0]", "accumulator", "[0]", "[]"),
            Mutation(4, f"    return {xs}", "wrong_name", f"return {xs}", f"return {acc}")]
    args = lambda r: (ints(r, 1, 30, r.randint(4, 7)),)
    return [Func(name, [xs], doc, body, 2, args, muts)]


def fam_map(rng, style):
    xs, x, acc = pick(rng, style, "seq"), pick(rng, style, "elem"), pick(rng, style, "acc")
    kind = rng.choice(["square", "double", "inc"])
    expr, wrongs, word = {"square": (f"{x} * {x}", [(f"{x} + {x}", "+", "*")], "squares"),
                          "double": (f"{x} * 2", [(f"{x} + 2", "+", "*"), (f"{x} // 2", "//", "*")], "doubles"),
                          "inc": (f"{x} + 1", [(f"{x} - 1", "-", "+"), (f"{x} * 1", "*", "+")], "increments")}[kind]
    name = styled(rng, style, {"square": ["squares", "square_all"], "double": ["doubled", "double_all"], "inc": ["incremented", "add_one_each"]}[kind],
                  {"square": ["squared_values", "each_squared"], "double": ["twice_each", "times_two"], "inc": ["plus_one", "bumped"]}[kind])
    desc = {"square": "the square of each number in {xs}", "double": "each number in {xs} multiplied by 2",
            "inc": "each number in {xs} plus 1"}[kind].format(xs=xs)
    doc = styled(rng, style, ["Return a list of {d}.", "Return {d}, as a list."], ["Returns a new list holding {d}.", "Builds a list of {d} and returns it."]).format(d=desc)
    body = [f"    {acc} = []", f"    for {x} in {xs}:", f"        {acc}.append({expr})", f"    return {acc}"]
    muts = [Mutation(2, f"        {acc}.append({w})", "operator", o, r) for w, o, r in wrongs]
    muts += [Mutation(3, f"    return {xs}", "wrong_name", f"return {xs}", f"return {acc}"),
             Mutation(0, f"    {acc} = [0]", "accumulator", "[0]", "[]")]
    args = lambda r: (ints(r, 1, 12, r.randint(3, 5)),)
    return [Func(name, [xs], doc, body, 2, args, muts)]


def fam_in_range(rng, style):
    x, lo, hi = pick(rng, style, "elem"), styled(rng, style, ["lo", "low"], ["lower", "start"]), styled(rng, style, ["hi", "high"], ["upper", "stop"])
    name = styled(rng, style, ["in_range", "between", "within"], ["inside", "is_between"])
    doc = styled(rng, style, ["Return True if {x} is between {lo} and {hi} inclusive.", "Return whether {lo} <= {x} <= {hi}."],
                 ["Returns True when {x} lies from {lo} to {hi}, both ends included.", "Tells whether {x} is within {lo}..{hi} inclusive."]).format(x=x, lo=lo, hi=hi)
    body = [f"    return {lo} <= {x} <= {hi}"]
    muts = [Mutation(0, f"    return {lo} < {x} <= {hi}", "comparison", f"{lo} < {x}", f"{lo} <= {x}"),
            Mutation(0, f"    return {lo} <= {x} < {hi}", "comparison", f"{x} < {hi}", f"{x} <= {hi}")]
    args = lambda r: (r.choice([3, 9, 5, 2, 10]), 3, 9)
    return [Func(name, [x, lo, hi], doc, body, 0, args, muts)]


def fam_count_char(rng, style):
    t, ch, c = pick(rng, style, "text"), pick(rng, style, "char"), pick(rng, style, "count")
    loopv = styled(rng, style, ["c", "letter", "char"], ["sym", "each"])
    if loopv == ch:
        loopv = "one"
    if c == loopv:
        c = "hits" if loopv != "hits" else "count"
    name = styled(rng, style, ["count_char", "occurrences", "char_count"], ["times_seen", "frequency_of"])
    doc = styled(rng, style, ["Return how many times {ch} occurs in {t}.", "Return the number of characters in {t} equal to {ch}."],
                 ["Returns the count of {ch} in {t}.", "Counts how often {ch} appears in {t} and returns it."]).format(ch=ch, t=t)
    body = [f"    {c} = 0", f"    for {loopv} in {t}:", f"        if {loopv} == {ch}:", f"            {c} += 1", f"    return {c}"]
    muts = [Mutation(2, f"        if {loopv} != {ch}:", "comparison", "!=", "=="),
            Mutation(0, f"    {c} = 1", "accumulator", "1", "0"),
            Mutation(3, f"            {c} += 2", "off_by_one", "+= 2", "+= 1")]
    args = lambda r: (r.choice(["banana", "mississippi", "letter", "abracadabra", "committee", "bookkeeper"]), r.choice("aeiost"))
    return [Func(name, [t, ch], doc, body, 2, args, muts)]


def fam_index_of(rng, style):
    xs, i, tgt = pick(rng, style, "seq"), pick(rng, style, "idx"), styled(rng, style, ["target", "wanted", "goal"], ["needle", "sought"])
    name = styled(rng, style, ["index_of", "find_index", "position"], ["locate", "where_is"])
    doc = styled(rng, style, ["Return the index of the first {t} in {xs}, or -1 if absent.", "Return the position of {t} in {xs}, or -1 when it is missing."],
                 ["Returns where {t} first appears in {xs}, else -1.", "Finds the first index of {t} in {xs}; returns -1 if not found."]).format(t=tgt, xs=xs)
    body = [f"    for {i} in range(len({xs})):", f"        if {xs}[{i}] == {tgt}:", f"            return {i}", "    return -1"]
    muts = [Mutation(0, f"    for {i} in range(1, len({xs})):", "off_by_one", f"range(1, len({xs}))", f"range(len({xs}))"),
            Mutation(0, f"    for {i} in range(len({xs}) - 1):", "off_by_one", f"range(len({xs}) - 1)", f"range(len({xs}))"),
            Mutation(1, f"        if {xs}[{i}] != {tgt}:", "comparison", "!=", "=="),
            Mutation(2, f"            return {tgt}", "wrong_name", f"return {tgt}", f"return {i}")]

    def args(r):
        v = r.sample(range(1, 40), r.randint(4, 6))
        return (v, r.choice([v[0], v[-1], v[1], 99]))
    return [Func(name, [xs, tgt], doc, body, 1, args, muts)]


def fam_dot(rng, style):
    xs, ys = rng.choice([("xs", "ys"), ("a", "b"), ("left", "right")] if style == "train" else [("us", "vs"), ("row", "col")])
    i, acc = pick(rng, style, "idx"), pick(rng, style, "acc")
    name = styled(rng, style, ["dot", "dot_product"], ["inner", "inner_product"])
    doc = styled(rng, style, ["Return the dot product of {xs} and {ys}."], ["Returns the sum of {xs}[i] * {ys}[i] over all i."]).format(xs=xs, ys=ys)
    body = [f"    {acc} = 0", f"    for {i} in range(len({xs})):", f"        {acc} += {xs}[{i}] * {ys}[{i}]", f"    return {acc}"]
    muts = [Mutation(0, f"    {acc} = 1", "accumulator", "1", "0"),
            Mutation(1, f"    for {i} in range(len({xs}) - 1):", "off_by_one", f"range(len({xs}) - 1)", f"range(len({xs}))"),
            Mutation(2, f"        {acc} += {xs}[{i}] + {ys}[{i}]", "operator", "+", "*"),
            Mutation(2, f"        {acc} += {xs}[{i}] * {xs}[{i}]", "wrong_name", f"{xs}[{i}] * {xs}[{i}]", f"{xs}[{i}] * {ys}[{i}]")]
    args = lambda r: (lambda k: (ints(r, 1, 9, k), ints(r, 1, 9, k)))(r.randint(3, 5))
    return [Func(name, [xs, ys], doc, body, 2, args, muts)]


def fam_join(rng, style):
    ws, w, out = pick(rng, style, "seq"), pick(rng, style, "elem"), pick(rng, style, "acc")
    sep = rng.choice(["-", ",", "+", "/"])
    name = styled(rng, style, ["concat", "join_all", "glue"], ["chain_text", "stitch"])
    doc = styled(rng, style, ["Return the strings in {ws} each followed by '{s}', joined together."],
                 ["Returns one string: every item of {ws} with '{s}' after it."]).format(ws=ws, s=sep)
    body = [f"    {out} = \"\"", f"    for {w} in {ws}:", f"        {out} += {w} + \"{sep}\"", f"    return {out}"]
    muts = [Mutation(0, f"    {out} = \" \"", "accumulator", "\" \"", "\"\""),
            Mutation(2, f"        {out} += \"{sep}\" + {w}", "wrong_name", f"\"{sep}\" + {w}", f"{w} + \"{sep}\""),
            Mutation(3, f"    return {w}", "wrong_name", f"return {w}", f"return {out}")]
    args = lambda r: (r.sample(["ab", "cd", "x", "yz", "q", "red", "sun", "io"], r.randint(2, 4)),)
    return [Func(name, [ws], doc, body, 2, args, muts)]


# Helper + caller pairs: the caller's bug is swapped arguments in the call.
HELPERS = [
    # (train names, heldout names, params train/heldout, doc train/heldout, expr, callers)
    dict(names=(["power", "raise_to"], ["pow_of", "exponent"]), params=(("base", "exp"), ("root", "degree")),
         doc=("Return {0} raised to the power {1}.", "Returns {0} to the power of {1}."), expr="{0} ** {1}",
         callers=[(["cube", "cubed"], ["third_power"], "Return {x} raised to the power 3.", "Returns {x} cubed.", ("{x}", "3")),
                  (["square_of", "sq"], ["second_power"], "Return {x} raised to the power 2.", "Returns {x} squared.", ("{x}", "2")),
                  (["power_of_two", "two_to"], ["pow2"], "Return 2 raised to the power {x}.", "Returns 2 to the power {x}.", ("2", "{x}"))],
         arg=lambda r: (r.randint(3, 6),)),
    dict(names=(["subtract", "minus"], ["take_off", "less_by"]), params=(("a", "b"), ("big", "small")),
         doc=("Return {0} minus {1}.", "Returns {0} take away {1}."), expr="{0} - {1}",
         callers=[(["decrement", "one_less"], ["predecessor"], "Return {x} minus 1.", "Returns one less than {x}.", ("{x}", "1")),
                  (["distance_to_ten", "gap_to_ten"], ["shortfall"], "Return 10 minus {x}.", "Returns how far {x} is below 10.", ("10", "{x}")),
                  (["complement", "to_hundred"], ["rest_of_hundred"], "Return 100 minus {x}.", "Returns 100 take away {x}.", ("100", "{x}"))],
         arg=lambda r: (r.randint(2, 9),)),
    dict(names=(["divide", "div"], ["quot", "divide_down"]), params=(("num", "den"), ("top", "bottom")),
         doc=("Return {0} divided by {1}, rounded down.", "Returns the integer quotient {0} // {1}."), expr="{0} // {1}",
         callers=[(["half", "halve"], ["half_of"], "Return {x} divided by 2, rounded down.", "Returns half of {x}, rounded down.", ("{x}", "2")),
                  (["tenth", "per_ten"], ["tenths"], "Return {x} divided by 10, rounded down.", "Returns {x} // 10.", ("{x}", "10"))],
         arg=lambda r: (r.randint(21, 99),)),
    dict(names=(["repeat", "repeated"], ["copies", "replicate"]), params=(("text", "times"), ("unit", "reps"))
         , doc=("Return {0} repeated {1} times.", "Returns {1} copies of {0} joined."), expr="{0} * {1}",
         callers=[(["triple", "three_times"], ["thrice"], "Return {x} repeated 3 times.", "Returns three copies of {x}.", ("{x}", "3")),
                  (["stars", "star_bar"], ["asterisks"], "Return '*' repeated {x} times.", "Returns {x} copies of '*'.", ("'*'", "{x}"))],
         arg=None),
]


def fam_helper_call(rng, style):
    h = rng.choice(HELPERS)
    si = 0 if style == "train" else 1
    hname = rng.choice(h["names"][si]) if si or rng.random() >= RANDOM_NAME_P else random_name(rng)
    p0, p1 = h["params"][si]
    helper = Func(hname, [p0, p1], train_doc(rng, style, h["doc"][si].format(p0, p1)), ["    return " + h["expr"].format(p0, p1)], 0,
                  None, [])
    cnames_tr, cnames_ho, cdoc_tr, cdoc_ho, cargs = rng.choice(h["callers"])
    cname = rng.choice(cnames_tr if style == "train" else cnames_ho)
    if style == "train" and rng.random() < RANDOM_NAME_P:
        cname = random_name(rng)
    x = pick(rng, style, "elem", avoid=(p0, p1))
    if h["names"][0][0] == "repeat":
        x = pick(rng, style, "text", avoid=(p0, p1)) if cargs[0] == "{x}" else pick(rng, style, "num", avoid=(p0, p1))
    a0, a1 = (s.format(x=x) for s in cargs)
    doc = train_doc(rng, style, (cdoc_tr if style == "train" else cdoc_ho).format(x=x))
    body = [f"    return {hname}({a0}, {a1})"]
    caller = Func(cname, [x], doc, body, 0, None, [Mutation(0, f"    return {hname}({a1}, {a0})", "swapped_args",
                                                               f"{hname}({a1}, {a0})", f"{hname}({a0}, {a1})")], calls=hname)
    if h["names"][0][0] == "repeat":
        caller.args = (lambda r: (r.choice(["ab", "xy", "hi", "ok"]),)) if cargs[0] == "{x}" else (lambda r: (r.randint(2, 6),))
        helper.args = lambda r: (r.choice(["ab", "z", "hey"]), r.randint(2, 4))
    else:
        caller.args = h["arg"]
        helper.args = lambda r: (r.randint(3, 9), r.randint(2, 3))
    return [helper, caller]


FAMILIES = [fam_binary, fam_two_step, fam_sum_list, fam_count_if, fam_extreme, fam_slice, fam_range_sum,
            fam_filter, fam_map, fam_in_range, fam_count_char, fam_index_of, fam_dot, fam_join, fam_helper_call]
WEIGHTS = [3, 2, 3, 3, 2, 2, 3, 2, 2, 1, 1, 2, 1, 1, 3]


# ---------------------------------------------------------------------------- assembling

def render_funcs(funcs: list[Func], override: dict[int, list[str]] | None = None) -> str:
    override = override or {}
    chunks = ["\n".join(f.lines(override.get(i))) for i, f in enumerate(funcs)]
    return "\n\n\n".join(chunks) + "\n"


def _run(source: str, calls):
    """Run each call against ``source``; an exception is an outcome too."""
    env: dict = {}
    exec(compile(source, "<module>", "exec"), env)
    out = []
    for name, args in calls:
        try:
            out.append(("ok", env[name](*_copy(args))))
        except Exception as e:  # noqa: BLE001 - the buggy code may raise anything
            out.append(("err", type(e).__name__))
    return out


def _copy(args):
    return tuple(list(a) if isinstance(a, list) else a for a in args)


def make_module(rng: random.Random, style: str = "train", *, n_funcs: int | None = None,
                kind: str | None = None, path: str | None = None, tries: int = 200) -> Module:
    """One module with one planted bug (of ``kind`` if given) that its tests catch."""
    for _ in range(tries):
        m = _try_module(rng, style, n_funcs, kind, path)
        if m is not None:
            return m
    raise RuntimeError("could not build a module (kind too rare for the families?)")


def _try_module(rng, style, n_funcs, kind, path=None):
    want = n_funcs or rng.choice([1, 2, 2, 3, 3, 4])
    funcs: list[Func] = []
    names: set[str] = set()
    if kind == "swapped_args":
        funcs += fam_helper_call(rng, style)
        names.update(f.name for f in funcs)
    guard = 0
    while len(funcs) < want and guard < 30:
        guard += 1
        fam = rng.choices(FAMILIES, WEIGHTS)[0]
        new = fam(rng, style)
        if len(funcs) + len(new) > max(want, 2 if fam is fam_helper_call else want):
            continue
        if any(f.name in names for f in new):
            continue
        funcs += new
        names.update(f.name for f in new)
    rng.shuffle(funcs)
    # keep helpers before their callers
    order = []
    for f in funcs:
        if f.calls and f.calls not in [g.name for g in order]:
            helper = next(g for g in funcs if g.name == f.calls)
            order.append(helper)
        if f not in order:
            order.append(f)
    funcs = order
    candidates = [(i, m) for i, f in enumerate(funcs) for m in f.muts if kind is None or m.kind == kind]
    if not candidates:
        return None
    if kind is None:  # balance the kinds: pick a kind first, then a site
        kinds = sorted({m.kind for _, m in candidates})
        k = rng.choice(kinds)
        candidates = [(i, m) for i, m in candidates if m.kind == k]
    fi, mut = rng.choice(candidates)
    fixed = render_funcs(funcs)
    body = list(funcs[fi].body)
    body[mut.line] = mut.new
    buggy = render_funcs(funcs, {fi: body})
    if buggy.count(mut.new + "\n") != 1 or fixed.count(funcs[fi].body[mut.line] + "\n") != 1:
        return None
    # tests: 2-3 asserts per function, from the correct code
    calls = []
    for f in funcs:
        seen = set()
        for _ in range(8):
            args = f.args(rng)
            if repr(args) not in seen:
                seen.add(repr(args))
                calls.append((f.name, args))
            if len(seen) >= 3:
                break
    try:
        good = _run(fixed, calls)
        bad = _run(buggy, calls)
    except Exception:
        return None
    if any(k != "ok" for k, _ in good):
        return None
    if not any(g != b for (g, b) in zip(good, bad)):
        return None
    path = path or pick(rng, style, "files")
    modname = path[:-3]
    test_lines = [f"from {modname} import {', '.join(f.name for f in funcs)}", ""]
    for (name, args), (_, value) in zip(calls, good):
        test_lines.append(f"assert {name}({', '.join(repr(a) for a in args)}) == {value!r}")
    test_src = "\n".join(test_lines) + "\n"
    return Module(path, funcs, fi, mut, buggy, fixed, f"test_{path}", test_src, style)


if __name__ == "__main__":  # a look at a few modules
    import sys

    r = random.Random(int(sys.argv[1]) if len(sys.argv) > 1 else 0)
    for _ in range(3):
        m = make_module(r, sys.argv[2] if len(sys.argv) > 2 else "train")
        print(f"# {m.path}  bug: {m.func.name} {m.mutation.kind} {m.mutation.wrong!r} -> {m.mutation.right!r}")
        print(m.source)
        print(m.test_source)
