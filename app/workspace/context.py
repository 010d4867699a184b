"""The files the coder sees: add/drop files and folders, token estimates, outline.

Folders are walked with ``.gitignore`` rules (every ``.gitignore`` on the way,
matched by ``pathspec``'s git-ignore semantics); ``.git/`` is always skipped;
files the safety rules refuse (binary, non-UTF-8, too large, outside the root)
are skipped with the reason. A file named explicitly is added even if ignored,
as ``git add -f`` would.

Token counts are estimates (about four characters a token) unless a counter
is passed in. The outline lists paths and top-level symbols parsed with
tree-sitter: grammars come from ``tree_sitter_language_pack`` when it has them
locally, else from a per-language grammar package (``tree_sitter_python``, ...);
files of a language with neither are listed by path only.
"""

from __future__ import annotations

import importlib
import os
import re
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Callable

import pathspec

from app.workspace import safety


_PATHLIKE = re.compile(r"[\w./-]*\w\.[A-Za-z][A-Za-z0-9]*")  # "calc.py", "src/app/x.toml" (a dot and an extension)


def paths_named(text: str) -> list[str]:
    """The relative paths ``text`` names ("src/calc.py", "`test_calc.py`"; a dot and an
    extension make a word a path), once each, in order; none that would leave the root."""
    out: list[str] = []
    for word in _PATHLIKE.findall(text):
        word = word[2:] if word.startswith("./") else word
        try:
            rel = safety.clean_relative(word)
        except safety.Unsafe:
            continue
        if rel not in out:
            out.append(rel)
    return out


_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_QUALIFIED = re.compile(r"[A-Za-z_]\w*(?:(?:\.|::)[A-Za-z_]\w*)+")  # Cart.add, Cart::add, shop.Cart.add
DEFINITION_SCAN_FILES = 400  # a tree with more source files is not searched for a request's names
_TEST_NAME = re.compile(r"^test_|_test\.\w+$|\.(?:test|spec)\.\w+$|^conftest\.py$")
_TEST_DIRS = {"tests", "test", "__tests__"}


_CODE_SPAN = re.compile(r"`([^`\n]+)`")
_CALLED = re.compile(r"([A-Za-z_]\w*)\s*\(")
_SHAPED = re.compile(r"[A-Za-z_]*(?:_[A-Za-z0-9]|[a-z][A-Z]|[A-Za-z][0-9])\w*")  # add_item, addItem, v2


def code_words(text: str) -> set[str]:
    """The identifiers ``text`` writes as code: in backticks, called (``add()``), or shaped as
    only code is (``add_item``, ``addItem``, ``parse2``), not a word of the sentence ("add")."""
    out = {m.group(1) for m in _CALLED.finditer(text)}
    for span in _CODE_SPAN.finditer(text):
        out.update(_IDENTIFIER.findall(span.group(1)))
    out.update(w for w in _IDENTIFIER.findall(text) if _SHAPED.fullmatch(w))
    return out


def is_test_path(rel: str) -> bool:
    """A test file by the usual conventions (``test_x.py``, ``x_test.go``, ``x.test.ts``,
    ``x.spec.js``, ``conftest.py``, or under ``tests/``, ``test/``, ``__tests__/``)."""
    *folders, name = rel.split("/")
    return bool(_TEST_NAME.search(name)) or any(f in _TEST_DIRS for f in folders)


_CREATE = re.compile(r"\b(?:create[sd]?|creating|add(?:s|ed|ing)?|new|write|writes|writing)\b|新建|创建|新增|添加|新文件|编写",
                     re.IGNORECASE)


def paths_to_create(text: str) -> list[str]:
    """The paths ``text`` names on a line that also says to make something ("1. Create
    `cache.py` with ...", "新建 `cache.py`"): what a plan asks to create, not every file it
    mentions ("check that `test_calc.py` passes" is not one)."""
    out: list[str] = []
    for line in text.splitlines():
        if _CREATE.search(line):
            out += [p for p in paths_named(line) if p not in out]
    return out


def estimate_tokens(text: str) -> int:
    """About four characters a token: what code averages with BPE vocabularies."""
    return (len(text) + 3) // 4


@dataclass(frozen=True)
class Added:
    added: tuple[str, ...]
    skipped: tuple[tuple[str, str], ...]  # (path, reason)


@dataclass(frozen=True)
class Budget:
    per_file: dict[str, int]
    total: int
    window: int | None

    @property
    def fits(self) -> bool:
        return self.window is None or self.total <= self.window

    def describe(self) -> str:
        if self.window is None:
            return f"~{self.total:,} tokens in {len(self.per_file)} files"
        pct = 100 * self.total / max(1, self.window)
        return f"~{self.total:,} of {self.window:,} tokens ({pct:.0f}%) in {len(self.per_file)} files"


class Ignore:
    """``.gitignore`` rules of a tree; each file's patterns apply below its folder."""

    def __init__(self, root: Path):
        self.root = root
        self._specs: dict[str, pathspec.GitIgnoreSpec | None] = {}

    def _spec(self, folder: str) -> pathspec.GitIgnoreSpec | None:
        if folder not in self._specs:
            file = self.root / folder / ".gitignore"
            try:
                lines = file.read_text(encoding="utf-8", errors="replace").splitlines()
                self._specs[folder] = pathspec.GitIgnoreSpec.from_lines(lines)
            except OSError:
                self._specs[folder] = None
        return self._specs[folder]

    def ignored(self, rel: str, is_dir: bool = False) -> bool:
        parts = rel.split("/")
        if ".git" in (p.lower() for p in parts):
            return True
        for depth in range(len(parts)):
            folder = "/".join(parts[:depth])
            spec = self._spec(folder)
            if spec is None:
                continue
            sub = "/".join(parts[depth:]) + ("/" if is_dir else "")
            if spec.match_file(sub):
                return True
        return False


class FileContext:
    """The set of files in the coder's context, relative to ``root``, in the order added."""

    def __init__(self, root: str | Path, *, max_file_bytes: int = safety.DEFAULT_MAX_BYTES,
                 count_tokens: Callable[[str], int] = estimate_tokens):
        self.root = Path(os.path.realpath(root))
        self.max_file_bytes = max_file_bytes
        self.count_tokens = count_tokens
        self.ignore = Ignore(self.root)
        self._files: list[str] = []
        self._definitions: dict[str, tuple[tuple[int, int], list[str]]] = {}  # rel -> (mtime, size), names

    @property
    def files(self) -> list[str]:
        return list(self._files)

    def add(self, path: str) -> Added:
        """Add a file, or every non-ignored text file under a folder."""
        added, skipped = [], []
        try:
            rel = "." if path.strip() in ("", ".", "./") else safety.clean_relative(path)
        except safety.Unsafe as exc:
            return Added((), ((path, str(exc)),))
        start = self.root / rel
        if start.is_dir() and not start.is_symlink():
            names = self.walk(rel)
        elif start.exists() or start.is_symlink():
            names = [rel]
        else:
            return Added((), ((path, "no such file or folder"),))
        for name in names:
            reason = self._check(name)
            if reason:
                skipped.append((name, reason))
            elif name not in self._files:
                self._files.append(name)
                added.append(name)
        return Added(tuple(added), tuple(skipped))

    def named_in(self, text: str) -> list[str]:
        """Files of the workspace that ``text`` names by relative path ("fix the bug in
        src/calc.py", "审查 `calc.py`"), not yet in context; a bare file name counts when exactly
        one file in the tree has it."""
        out: list[str] = []
        tree: list[str] | None = None
        for rel in paths_named(text):
            if not (self.root / rel).is_file():
                if "/" in rel:
                    continue
                tree = self.walk() if tree is None else tree
                same = [f for f in tree if f.rsplit("/", 1)[-1] == rel]
                if len(same) != 1:
                    continue
                rel = same[0]
            if rel not in self._files and rel not in out and not self._check(rel):
                out.append(rel)
        return out

    def defining(self, text: str) -> list[tuple[str, str]]:
        """When ``text`` names no file: ``(path, name)`` for each top-level function, class or
        type it names, or method as ``Owner.method`` (``Cart::add`` in Rust) or by its bare name
        written as code (`` `add` ``, ``add()``, ``add_item``, ``addItem``: not the word "add"),
        that exactly one source file of the tree defines ("why does only_odd fail its test?" →
        ``stats.py``; "Cart.add drops items" → ``cart.py``; Python, JavaScript, TypeScript, Go,
        Rust), test files aside, not yet in context. Trees of up to ``DEFINITION_SCAN_FILES``
        source files (a larger one is not searched)."""
        words: dict[str, int] = {}  # each identifier of the text (and Owner.method), at its first place
        for m in _IDENTIFIER.finditer(text):
            words.setdefault(m.group(), m.start())
        for m in _QUALIFIED.finditer(text):
            parts = re.split(r"\.|::", m.group())
            for owner, member in zip(parts, parts[1:]):
                words.setdefault(f"{owner}.{member}", m.start())
        if not words or self._names_a_file(text):
            return []
        as_code = code_words(text)
        sources = []
        for rel in self.iter_files():
            if language_of(rel) in GRAMMAR_PACKAGES and not is_test_path(rel):
                sources.append(rel)
                if len(sources) > DEFINITION_SCAN_FILES:
                    return []
        where: dict[str, set[str]] = {}  # a name of the text: the files that define it
        shown: dict[str, str] = {}  # a bare method name no function has: the first Owner.method
        for rel in sources:
            for name in self._defined_in(rel):
                member = name.rsplit(".", 1)[-1]
                if name in words:
                    where.setdefault(name, set()).add(rel)
                    shown[name] = name
                elif "." in name and member in as_code:
                    where.setdefault(member, set()).add(rel)
                    shown.setdefault(member, name)
        out: list[tuple[str, str]] = []
        for name in sorted(where, key=words.__getitem__):
            (rel, *others) = where[name]
            if not others and rel not in self._files and all(rel != r for r, _ in out) and not self._check(rel):
                out.append((rel, shown.get(name, name)))
        return out

    def _names_a_file(self, text: str) -> bool:
        """``text`` names a file of the tree, by path or by a bare name one file has ("Cart.add"
        looks like a path too, but names no file)."""
        named = paths_named(text)
        if any((self.root / rel).is_file() for rel in named):
            return True
        bare = {rel for rel in named if "/" not in rel}
        return bool(bare) and any(f.rsplit("/", 1)[-1] in bare for f in self.walk())

    def _defined_in(self, rel: str) -> list[str]:
        """``definition_names`` of a source file, read again only when it changed."""
        try:
            st = (self.root / rel).stat()
        except OSError:
            return []
        stamp = (st.st_mtime_ns, st.st_size)
        cached = self._definitions.get(rel)
        if cached is None or cached[0] != stamp:
            cached = self._definitions[rel] = (stamp, definition_names(rel, self.read(rel) or ""))
        return cached[1]

    def drop(self, path: str) -> list[str]:
        """Remove a file, or every file under a folder; returns what was removed."""
        rel = path.strip().replace("\\", "/").strip("/")
        gone = [f for f in self._files if rel in ("", ".") or f == rel or f.startswith(rel + "/")]
        self._files = [f for f in self._files if f not in gone]
        return gone

    def clear(self) -> None:
        self._files = []

    def read(self, rel: str) -> str | None:
        try:
            target = safety.resolve(self.root, rel)
            data = safety.read_existing(target, self.max_file_bytes)
            return None if data is None else safety.decode_text(data, self.max_file_bytes)[0]
        except (safety.Unsafe, OSError):
            return None

    def pairs(self) -> list[tuple[str, str]]:
        """``(path, text)`` of each readable file in context: what ``app.prompts.build_prompt(files=)`` takes."""
        return [(f, text) for f in self._files if (text := self.read(f)) is not None]

    def budget(self, window: int | None = None) -> Budget:
        """Token estimate per file and in total, against ``window`` (the coder's context)."""
        per = {f: self.count_tokens(self.read(f) or "") for f in self._files}
        return Budget(per, sum(per.values()), window)

    def render(self, *, numbered: bool = False) -> str:
        """The files' contents for a prompt, each under its path in a fence."""
        out = []
        for f in self._files:
            text = self.read(f)
            if text is None:
                continue
            out.append(f"{f}\n```\n{number_lines(text) if numbered else text.rstrip(chr(10))}\n```")
        return "\n\n".join(out)

    def for_prompt(self, window: int | None, *, reserve: int = 0) -> tuple[str, bool]:
        """``(text, full)``: the files in full if they fit in ``window - reserve``
        tokens, else the outline of those files (``full`` False), cut to fit."""
        if not self._files:
            return "", True
        if window is None or self.budget().total <= window - reserve:
            return self.render(), True
        room_chars = max(0, (window - reserve) * 4)
        return self.outline(self.files, max_chars=room_chars), False

    def walk(self, start: str = ".") -> list[str]:
        """Every non-ignored file under ``start`` (relative paths, sorted; symlinked folders not followed)."""
        return list(self.iter_files(start))

    def iter_files(self, start: str = "."):
        """``walk``, one path at a time (a caller may stop early)."""
        for folder, dirs, names in os.walk(self.root / start):
            rel_folder = Path(folder).relative_to(self.root).as_posix()
            prefix = "" if rel_folder == "." else rel_folder + "/"
            dirs[:] = sorted(d for d in dirs if not self.ignore.ignored(prefix + d, is_dir=True))
            yield from (prefix + n for n in sorted(names) if not self.ignore.ignored(prefix + n))

    def outline(self, paths: list[str] | None = None, *, max_chars: int = 20_000) -> str:
        """Paths with their top-level symbols (all project files unless ``paths``)."""
        lines: list[str] = []
        size = 0
        names = paths if paths is not None else [p for p in self.walk() if not self._check(p)]
        for rel in names:
            text = self.read(rel)
            entry = [rel] + ["  " + s for s in (symbols(rel, text) if text is not None else [])]
            size += sum(len(x) + 1 for x in entry)
            if size > max_chars:
                lines.append(f"... ({len(names) - names.index(rel)} more files)")
                break
            lines += entry
        return "\n".join(lines)

    def _check(self, rel: str) -> str | None:
        try:
            target = safety.resolve(self.root, rel)
            data = safety.read_existing(target, self.max_file_bytes)
            if data is None:
                return "no such file"
            safety.decode_text(data, self.max_file_bytes)
        except safety.Unsafe as exc:
            return str(exc)
        except OSError as exc:
            return exc.strerror or str(exc)
        return None


def number_lines(text: str) -> str:
    """``text`` with right-aligned 1-based line numbers: ``  12 | code``."""
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    width = len(str(len(lines)))
    return "\n".join(f"{i:>{width}} | {line}" for i, line in enumerate(lines, 1))


# ---- tree-sitter outline ----------------------------------------------------

# language -> (module, function) for the per-language grammar packages
GRAMMAR_PACKAGES = {
    "python": ("tree_sitter_python", "language"),
    "javascript": ("tree_sitter_javascript", "language"),
    "typescript": ("tree_sitter_typescript", "language_typescript"),
    "tsx": ("tree_sitter_typescript", "language_tsx"),
    "go": ("tree_sitter_go", "language"),
    "rust": ("tree_sitter_rust", "language"),
}
_DEFINITIONS = ("definition", "declaration", "_item", "class", "function", "method", "struct",
                "enum", "trait", "impl", "interface", "type_alias", "module")


def language_of(rel: str) -> str | None:
    try:
        import tree_sitter_language_pack as pack

        return pack.detect_language_from_path(rel)
    except Exception:  # noqa: BLE001 - unknown extension or a pack without the function
        return None


@lru_cache(maxsize=None)
def parser_for(language: str):
    """A tree-sitter Parser for ``language`` available offline, or None."""
    try:
        import tree_sitter_language_pack as pack

        if language in set(pack.downloaded_languages()):
            return pack.get_parser(language)
    except Exception:  # noqa: BLE001 - the pack is optional at run time
        pass
    spec = GRAMMAR_PACKAGES.get(language)
    if spec is None:
        return None
    try:
        import tree_sitter

        module = importlib.import_module(spec[0])
        return tree_sitter.Parser(tree_sitter.Language(getattr(module, spec[1])()))
    except (ImportError, AttributeError, ValueError):
        return None


def parser_of(rel: str):
    language = language_of(rel)
    return parser_for(language) if language else None


def definition_names(rel: str, text: str) -> list[str]:
    """The names a source file's top-level functions, classes and types define (not its
    variables), in order, each class's (or Rust impl's) methods after it as ``Owner.method``;
    [] for a language without a parser."""
    parser = parser_of(rel)
    if parser is None:
        return []
    source = text.encode("utf-8")
    out = []
    for node in parser.parse(source).root_node.named_children:
        node = _unwrap(node)
        if node is None:
            continue
        specs = [c for c in node.named_children if c.type == "type_spec"]  # Go: type X struct {...}
        for named in [node] + specs:
            name = named.child_by_field_name("name")
            if name is not None:
                out.append(source[name.start_byte:name.end_byte].decode("utf-8", "replace"))
        owner = node.child_by_field_name("name") or node.child_by_field_name("type")  # Rust: impl Cart { ... }
        if owner is not None:
            owner_name = source[owner.start_byte:owner.end_byte].decode("utf-8", "replace")
            out += [f"{owner_name}.{m}" for m in _members(source, node)]
    return out


def symbols(rel: str, text: str) -> list[str]:
    """Top-level definitions of a source file, one short line each (classes list their methods)."""
    parser = parser_of(rel)
    if parser is None:
        return []
    source = text.encode("utf-8")
    tree = parser.parse(source)
    out = []
    for node in tree.root_node.named_children:
        node = _unwrap(node)
        if node is None:
            continue
        line = _signature(source, node)
        members = _members(source, node)
        if members:
            line += f"  [{', '.join(members[:12])}{', ...' if len(members) > 12 else ''}]"
        out.append(line)
    return out


def _unwrap(node):
    """The definition inside decorators/exports, or None if ``node`` defines nothing."""
    if node.type in ("decorated_definition", "export_statement"):
        inner = node.child_by_field_name("definition") or node.child_by_field_name("declaration")
        return _unwrap(inner) if inner is not None else None
    if node.type == "expression_statement" and node.named_child_count == 1:
        child = node.named_children[0]
        if child.type == "assignment" and child.child_by_field_name("left") is not None \
                and child.child_by_field_name("left").type == "identifier":
            return child
        return None
    if node.type in ("lexical_declaration", "variable_declaration", "const_declaration", "var_declaration"):
        return node
    return node if any(k in node.type for k in _DEFINITIONS) else None


def _signature(source: bytes, node) -> str:
    if node.type == "assignment":
        return source[node.child_by_field_name("left").start_byte:node.child_by_field_name("left").end_byte] \
            .decode("utf-8", "replace") + " = ..."
    body = node.child_by_field_name("body")
    end = body.start_byte if body is not None else node.end_byte
    head = source[node.start_byte:end].decode("utf-8", "replace")
    head = " ".join(head.split())
    head = head.rstrip(":{ ").rstrip()
    return head if len(head) <= 100 else head[:97] + "..."


def _members(source: bytes, node) -> list[str]:
    body = node.child_by_field_name("body")
    if body is None or "class" not in node.type and "impl" not in node.type and "trait" not in node.type:
        return []
    names = []
    for child in body.named_children:
        child = _unwrap(child) if child.type in ("decorated_definition",) else child
        if child is None:
            continue
        name = child.child_by_field_name("name")
        if name is not None and ("function" in child.type or "method" in child.type):
            names.append(source[name.start_byte:name.end_byte].decode("utf-8", "replace"))
    return names
