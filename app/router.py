"""Which model answers a request: a typed prefix decides, else cues scored from data.

The cues, weights and prefixes live in ``router_rules.toml`` beside this file (read once);
this module only splits the request into prose and pasted material, scores, and explains.
Pure and offline: no model call, a few dozen regex searches per request.
"""

from __future__ import annotations

import functools
import re
import tomllib
from dataclasses import dataclass
from pathlib import Path

from app.errors import ConfigError

RULES_PATH = Path(__file__).with_name("router_rules.toml")
ROLES = ("reasoner", "coder")
ROLE_KEY = "role:"  # scores under "role:reasoner" come from cues that pick a role, not an intent
FEATURES = ("diff", "code", "traceback", "math", "question", "after_plan")
_FEATURE_WORDS = {"diff": "pasted diff", "code": "pasted code", "traceback": "traceback",
                  "math": "formula", "question": "open question", "after_plan": "after a plan"}


@dataclass(frozen=True)
class Route:
    """The decision: ``text`` is the request without its /prefix; ``forced`` when a prefix decided."""

    role: str
    intent: str
    why: str
    text: str = ""
    forced: bool = False


@dataclass(frozen=True)
class Cue:
    intent: str  # or "role:<role>" for a cue that only leans towards a role
    weight: float
    en: re.Pattern | None  # tried only on prose with Latin letters
    zh: re.Pattern | None  # tried only on prose with Chinese characters
    when: str | None  # with neither pattern, this feature is the cue
    unless: str | None = None  # the cue is skipped when this feature holds
    verb: bool = False  # an English match counts fully only where it opens a clause (imperative)


@dataclass(frozen=True)
class Rules:
    intents: dict[str, tuple[str, str]]  # intent -> (role, label)
    cues: tuple[Cue, ...]
    prefixes: dict[str, tuple[str, str | None]]  # "/plan" -> (role, intent or None)
    role_default: dict[str, str]  # role -> intent when a prefix names no intent and no cue fits
    fallback: str
    after_plan_fallback: str
    first_clause_bonus: float
    last_clause_bonus: float
    later_clause_factor: float
    sequencing: re.Pattern
    imperative_lead: re.Pattern  # what may stand before an imperative verb: "please", "can you", "ok so"
    non_imperative_factor: float


# ---------------------------------------------------------------------------- loading

def load_rules(path: Path = RULES_PATH) -> Rules:
    """Parse and check a rules file; any problem is a ConfigError naming file and key."""
    name = str(path)
    try:
        data = tomllib.loads(Path(path).read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigError(name, "", f"cannot read router rules ({exc.strerror})") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(name, "", f"not valid TOML ({exc})") from None

    intents: dict[str, tuple[str, str]] = {}
    for intent, spec in _table(data, "intents", name).items():
        role = spec.get("role") if isinstance(spec, dict) else None
        if role not in ROLES:
            raise ConfigError(name, f"intents.{intent}.role", f"must be one of {', '.join(ROLES)}")
        intents[intent] = (role, str(spec.get("label", intent)))

    def known(intent, key: str) -> str:
        if intent not in intents:
            raise ConfigError(name, key, f"unknown intent {intent!r} (known: {', '.join(intents)})")
        return intent

    cues = []
    for i, spec in enumerate(data.get("cues", [])):
        key = f"cues[{i}]"
        if spec.get("role") is not None and spec.get("intent") is None:  # a cue for the role alone
            if spec["role"] not in ROLES:
                raise ConfigError(name, f"{key}.role", f"must be one of {', '.join(ROLES)}")
            intent = ROLE_KEY + spec["role"]
        else:
            intent = known(spec.get("intent"), f"{key}.intent")
        weight = spec.get("weight")
        if not isinstance(weight, (int, float)) or isinstance(weight, bool):
            raise ConfigError(name, f"{key}.weight", "must be a number")
        when = spec.get("when")
        if when is not None and when not in FEATURES:
            raise ConfigError(name, f"{key}.when", f"must be one of {', '.join(FEATURES)}")
        unless = spec.get("unless")
        if unless is not None and unless not in FEATURES:
            raise ConfigError(name, f"{key}.unless", f"must be one of {', '.join(FEATURES)}")
        en, zh = _strings(spec, "en", name, key), _strings(spec, "zh", name, key)
        if not en and not zh and when is None:
            raise ConfigError(name, key, "needs `en` or `zh` patterns, or a `when` feature")
        cues.append(Cue(intent, float(weight), _compile(_english(en), name, f"{key}.en") if en else None,
                        _compile("|".join(zh), name, f"{key}.zh") if zh else None, when, unless,
                        bool(spec.get("verb", False))))

    prefixes = {}
    for prefix, spec in _table(data, "prefixes", name).items():
        role, intent = spec.get("role"), spec.get("intent")
        if role not in ROLES:
            raise ConfigError(name, f"prefixes.{prefix}.role", f"must be one of {', '.join(ROLES)}")
        if intent is not None and intents.get(known(intent, f"prefixes.{prefix}.intent"))[0] != role:
            raise ConfigError(name, f"prefixes.{prefix}.intent", f"{intent!r} is not a {role} intent")
        prefixes[prefix.lower()] = (role, intent)

    role_default = {role: known(_table(data, "role_default", name).get(role), f"role_default.{role}")
                    for role in ROLES}
    return Rules(
        intents=intents,
        cues=tuple(cues),
        prefixes=prefixes,
        role_default=role_default,
        fallback=known(data.get("fallback"), "fallback"),
        after_plan_fallback=known(data.get("after_plan_fallback"), "after_plan_fallback"),
        first_clause_bonus=float(data.get("first_clause_bonus", 0)),
        last_clause_bonus=float(data.get("last_clause_bonus", 0)),
        later_clause_factor=float(data.get("later_clause_factor", 1)),
        imperative_lead=_compile(r"(?:^|[\n,.;:!?，。；：！？]|\b(?:and|then)\b)\s*(?:(?:" + "|".join(_strings(data, "imperative_lead", name, ""))
                                 + r")[\s,]+)*$", name, "imperative_lead"),
        non_imperative_factor=float(data.get("non_imperative_factor", 1)),
        sequencing=_compile("|".join(_strings(data, "sequencing", name, "")) or r"(?!)", name, "sequencing"),
    )


def _table(data: dict, key: str, name: str) -> dict:
    value = data.get(key)
    if not isinstance(value, dict):
        raise ConfigError(name, key, "missing table")
    return value


def _strings(spec: dict, field: str, name: str, key: str) -> list[str]:
    value = spec.get(field, [])
    if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
        raise ConfigError(name, f"{key}.{field}" if key else field, "must be a list of non-empty strings")
    return value


def _english(patterns: list[str]) -> str:
    # Bounded by non-letters, so "review" fits "帮我review一下" but not "preview".
    return r"(?<![A-Za-z0-9_])(?:" + "|".join(f"(?:{p})" for p in patterns) + r")(?![A-Za-z0-9_])"


def _compile(pattern: str, name: str, key: str) -> re.Pattern:
    try:
        return re.compile(pattern, re.IGNORECASE)
    except re.error as exc:
        raise ConfigError(name, key, f"bad pattern ({exc})") from None


@functools.cache
def rules() -> Rules:
    """The shipped rules, loaded on first use."""
    return load_rules(RULES_PATH)


# ---------------------------------------------------------------------------- prose vs pasted material

_FENCE = re.compile(r"^\s*(```|~~~)")
_DIFF_START = re.compile(r"^(diff --git |@@ .*@@|--- \S|\+\+\+ \S)")
_TRACE = re.compile(
    r"^(Traceback \(most recent call last\)|\s+File \".*\", line \d+|[\w.]+(Error|Exception)\b(: .*)?$"
    r"|FAILED |ERROR |panic: |Exception in thread|\s+at [\w.$<>]+\(|Segmentation fault|E\s{2,}"
    r"|\s*\[?\d{4}-\d\d-\d\d[T ]\d\d:\d\d|\s*\[?(?:INFO|WARN|WARNING|DEBUG|TRACE|FATAL)\]?[\s:])"
)
_CODE = re.compile(
    r"^(\s{2,}|\t)\S|[{};]\s*$|^\s*[})\]]"
    r"|^\s*(def|class|func|fn|for|while|if|elif|else|try|except|import|from|return|const|let|var|public|private"
    r"|static|package|struct|impl|int|char|void|#include|SELECT|INSERT|UPDATE|CREATE)\b"
    r"|^\s*@\w+|^\s*[\w.\[\]'\"]+\s*[+\-*/]?=[^=]|^\s*\w+\(.*\)\s*$|^\s*[\"'{\[]"
)
_MATH = re.compile(r"[\w)]\s*\^\s*[\w(]|\d\s*[-+*/]\s*\d|[a-z]\s*[-+*/]\s*\d|=\s*-?\d|\d%|f\(x\)|[√∑∫≤≥]", re.I)
_QUESTION = re.compile(
    r"[?？](?=\s|$|[\u3400-\u9fff])|[吗呢](?=\s|$|[，。,.!！])|(?:^|[.!;]\s+)(?:how|what|why|when|where|which|who|is|are|does|did|should|shall|any|isn'?t|doesn'?t"
    r"|(?:can|could|would|will)(?!\s+(?:you|u)\b))\b|怎么|如何|为何|为什么|哪些|哪个|哪里|是否|是不是|能不能|有没有|可不可以|行不行|要不要|该不该|值不值|到底",
    re.I | re.M)
_CLAUSE_END = re.compile(r"[，。？！；：\n]|[,.?!;:](?=\s|$)")


HEAD_LINES, TAIL_LINES = 300, 100  # a long paste is judged by its ends: the ask is at one of them
HEAD_CHARS, TAIL_CHARS = 1200, 600


def split_request(text: str) -> tuple[str, dict[str, bool]]:
    """The request's prose (pasted code, diffs and tracebacks set aside) and its features."""
    lines = text.splitlines()
    if len(lines) > HEAD_LINES + TAIL_LINES:
        lines = lines[:HEAD_LINES] + lines[-TAIL_LINES:]
    prose: list[str] = []
    features = dict.fromkeys(FEATURES, False)
    if len(lines) <= 1:
        prose = lines
    else:
        in_fence = in_diff = False
        code_lines = 0
        for line in lines:
            if _FENCE.match(line):
                in_fence = not in_fence
                features["code"] = True
            elif in_fence:
                code_lines += 1
            elif _DIFF_START.match(line):
                in_diff = features["diff"] = True
            elif in_diff and line[:1] in (" ", "+", "-", "\\"):
                pass
            elif _TRACE.match(line):
                features["traceback"] = True
            elif _CODE.search(line) and not prose_like(line):
                code_lines += 1
            else:
                in_diff = False
                prose.append(line)
        features["code"] = features["code"] or code_lines > 0
        if not any(p.strip() for p in prose):  # all pasted: judge it as written
            prose = lines
    joined = "\n".join(p for p in prose if p.strip())
    if len(joined) > HEAD_CHARS + TAIL_CHARS:
        joined = joined[:HEAD_CHARS] + "\n" + joined[-TAIL_CHARS:]
    features["math"] = bool(_MATH.search(joined))
    features["question"] = bool(_QUESTION.search(joined))
    return joined, features


_CJK = re.compile(r"[\u3400-\u9fff]")
_LATIN = re.compile(r"[A-Za-z]")


def prose_like(line: str) -> bool:
    """A line that reads as a sentence even if it ends in ':' or ';' (Chinese, or a question)."""
    return bool(_CJK.search(line)) or line.rstrip().endswith("?")


# ---------------------------------------------------------------------------- scoring

@dataclass
class Score:
    total: float = 0.0
    first: int = 1 << 30  # position of the earliest cue, for ties
    terms: list[str] | None = None


def score(text: str, *, after_plan: bool = False, table: Rules | None = None) -> dict[str, Score]:
    """Every intent that got a cue, with its score, earliest position and the words that fired."""
    table = table or rules()
    prose, features = split_request(text)
    features["after_plan"] = after_plan
    end = _CLAUSE_END.search(prose)
    clause_end = end.start() if end else len(prose)
    last_start = _last_clause_start(prose)
    later = table.sequencing.search(prose)
    later_start = later.start() if later else len(prose) + 1
    latin, cjk = _LATIN.search(prose) is not None, _CJK.search(prose) is not None
    scores: dict[str, Score] = {}
    for cue in table.cues:
        if (cue.when and not features[cue.when]) or (cue.unless and features[cue.unless]):
            continue
        en_matches = ()
        if cue.en is None and cue.zh is None:
            pos, words = len(prose), [_FEATURE_WORDS[cue.when]]
        else:
            matches = en_matches = list(cue.en.finditer(prose)) if latin and cue.en else []
            if cjk and cue.zh:
                matches = sorted(matches + list(cue.zh.finditer(prose)), key=lambda m: m.start())
            if not matches:
                continue
            pos = matches[0].start()
            words = list(dict.fromkeys(f'"{m.group(0).strip()}"' for m in matches))
            if cue.when:
                words.append(_FEATURE_WORDS[cue.when])
        weight = cue.weight
        if pos < clause_end:
            weight += table.first_clause_bonus
        if last_start and last_start <= pos < len(prose):  # a feature cue has no place in the text
            weight += table.last_clause_bonus
        if pos >= later_start:
            weight *= table.later_clause_factor
        if (cue.verb and en_matches and len(en_matches) == len(matches)
                and not any(_opens_clause(prose, m.start(), table) for m in en_matches)):
            weight *= table.non_imperative_factor
        s = scores.setdefault(cue.intent, Score(terms=[]))
        s.total += weight
        s.first = min(s.first, pos)
        s.terms.extend(w for w in words if w not in s.terms)
    return scores


def _opens_clause(prose: str, pos: int, table: Rules) -> bool:
    """Whether the word at ``pos`` starts its clause, politeness aside ("please fix", "can you add"),
    or sits in a Chinese clause, whose word order puts the verb mid-clause ("帮我 refactor 一下")."""
    if table.imperative_lead.search(prose, max(0, pos - 60), pos) is not None:
        return True
    return _CJK.search(_CLAUSE_END.split(prose[max(0, pos - 60):pos])[-1]) is not None


def _last_clause_start(prose: str) -> int:
    """Where the final clause begins (0 when there is one clause): in Chinese the ask often comes last."""
    stripped = prose.rstrip().rstrip("。？！?!.")
    ends = [m.end() for m in _CLAUSE_END.finditer(stripped)]
    return ends[-1] if ends else 0


def best(scores: dict[str, Score], intents) -> str | None:
    """The highest-scoring intent among ``intents``; ties go to the earliest cue."""
    candidates = [(s.total, -s.first, i) for i, s in scores.items() if i in intents]
    return max(candidates)[2] if candidates else None


def route(text: str, *, after_plan: bool = False) -> Route:
    """Decide which role answers ``text``; a leading /prefix from the rules always wins."""
    table = rules()
    head, _, rest = text.lstrip().partition(" ") if text.lstrip().startswith("/") else ("", "", "")
    head = head.split("\n", 1)[0]
    prefix = table.prefixes.get(head.lower()) if head else None
    if prefix:
        body = text.lstrip()[len(head):].strip()
        role, intent = prefix
        if intent is None:
            scores = score(body, after_plan=after_plan, table=table)
            intent = best(scores, {i for i, (r, _) in table.intents.items() if r == role})
            detail = f"{intent}: {_terms(scores[intent])}" if intent else None
            intent = intent or table.role_default[role]
            if intent == "test" and route(body, after_plan=after_plan).role == "reasoner":
                # "/code why does add fail its test?": a question the reasoner would take, sent to the
                # coder, asks it to fix the code, not to write tests (the test template forbids that)
                intent, detail = "edit", f"a question about {_terms(scores['test'])}: the code is to change"
        else:
            detail = None
        why = f"{head} prefix → {role}" + (f" ({detail})" if detail else "")
        return Route(role, intent, why, body, True)

    body = text.strip()
    scores = score(body, after_plan=after_plan, table=table)
    if not scores:
        intent = table.after_plan_fallback if after_plan else table.fallback
        role, label = table.intents[intent]
        reason = "follow-up to the plan" if after_plan else label
        return Route(role, intent, f"{reason} → {role}", body, False)
    # The role first, on all its evidence (every intent of it, and role-only cues); then its best intent.
    role = max(ROLES, key=lambda r: _role_total(scores, r, table))
    intent = best(scores, {i for i, (r, _) in table.intents.items() if r == role})
    if intent is None:
        intent = table.role_default[role]
        return Route(role, intent, f"{_terms(scores[ROLE_KEY + role])} → {role}", body, False)
    label = table.intents[intent][1]
    return Route(role, intent, f"{label} ({_terms(scores[intent])}) → {role}", body, False)


def _role_total(scores: dict[str, Score], role: str, table: Rules) -> tuple[float, int]:
    """A role's summed score, and (for ties) minus the position of its earliest cue."""
    mine = [s for i, s in scores.items() if i == ROLE_KEY + role or (i in table.intents and table.intents[i][0] == role)]
    return (sum(s.total for s in mine), -min((s.first for s in mine), default=1 << 30))


def _terms(s: Score, limit: int = 4) -> str:
    return ", ".join(s.terms[:limit])
