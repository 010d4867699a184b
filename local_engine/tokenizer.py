"""The checkpoint's own tokenizer (tokenizer.json, or a GGUF file's ``tokenizer.ggml.*``) and chat
template (chat_template.jinja, tokenizer_config.json or the GGUF metadata), rendered in a
sandboxed Jinja environment; plus incremental, UTF-8-safe detokenization."""

from __future__ import annotations

import json
from pathlib import Path

from local_engine.errors import ModelError

THINK_OPEN, THINK_CLOSE = "<think>", "</think>"


def _token_text(value) -> str | None:
    if isinstance(value, dict):
        return value.get("content")
    return value


class Tokenizer:
    def __init__(self, folder):
        from tokenizers import Tokenizer as HFTokenizer

        folder = Path(folder)
        path = folder / "tokenizer.json"
        if not path.is_file():
            raise ModelError(f"{path}: missing (the model folder needs its tokenizer.json)")
        try:
            tok = HFTokenizer.from_file(str(path))
        except Exception as e:
            raise ModelError(f"{path}: unreadable tokenizer ({e})") from None
        cfg_path = folder / "tokenizer_config.json"
        cfg = {}
        if cfg_path.is_file():
            try:
                cfg = json.loads(cfg_path.read_text(encoding="utf-8"))
            except (OSError, ValueError) as e:
                raise ModelError(f"{cfg_path}: unreadable JSON ({e})") from None
        template = cfg.get("chat_template")
        if isinstance(template, list):  # [{"name": "default", "template": ...}, ...]
            named = {t.get("name"): t.get("template") for t in template if isinstance(t, dict)}
            template = named.get("default") or next(iter(named.values()), None)
        source = cfg_path
        jinja = folder / "chat_template.jinja"  # transformers >= 4.43 saves the template here
        if jinja.is_file():
            try:
                template = jinja.read_text(encoding="utf-8")
            except (OSError, UnicodeDecodeError) as e:
                raise ModelError(f"{jinja}: unreadable ({e})") from None
            source = jinja
        self._setup(tok, _token_text(cfg.get("bos_token")), _token_text(cfg.get("eos_token")), template, source)

    @classmethod
    def from_gguf(cls, meta: dict, source) -> "Tokenizer":
        """The tokenizer a GGUF file describes (``tokenizer.ggml.*``, GPT-2-style byte-level BPE),
        rebuilt to split text as llama.cpp does; chat template from ``tokenizer.chat_template``."""
        from local_engine.gguf_tokenizer import build_bpe

        tok, bos, eos = build_bpe(meta, source)
        self = cls.__new__(cls)
        self._setup(tok, bos, eos, meta.get("tokenizer.chat_template"), source)
        self.add_bos = bool(meta.get("tokenizer.ggml.add_bos_token", False))
        return self

    def _setup(self, tok, bos_token, eos_token, template, source) -> None:
        self._tok = tok
        self.bos_token, self.eos_token = bos_token, eos_token
        self.bos_token_id = self._tok.token_to_id(self.bos_token) if self.bos_token else None
        self.eos_token_id = self._tok.token_to_id(self.eos_token) if self.eos_token else None
        self.chat_template: str | None = template
        # R1-style templates strip earlier reasoning ("</think>" appears in them): such models
        # are started inside a think block, as DeepSeek recommends.
        self.reasoning = bool(template and "</think>" in template)
        self._compiled = None
        self._source = source
        self.add_bos = False

    @property
    def vocab_size(self) -> int:
        return self._tok.get_vocab_size()

    def encode(self, text: str, *, add_bos: bool = False) -> list[int]:
        ids = self._tok.encode(text, add_special_tokens=False).ids
        if add_bos and self.bos_token_id is not None and (not ids or ids[0] != self.bos_token_id):
            ids = [self.bos_token_id] + ids
        return ids

    def decode(self, ids, *, skip_special_tokens: bool = False) -> str:
        return self._tok.decode([int(i) for i in ids], skip_special_tokens=skip_special_tokens)

    def token_bytes(self) -> list[bytes]:
        """Each token's bytes as ``decode`` writes them (a special token as its text). Byte-level
        BPE spells bytes in GPT-2's printable alphabet, mapped back here; another model is read
        through ``decode`` one token at a time (a token that is part of a character then reads
        as U+FFFD)."""
        from tokenizers import decoders

        n = self._tok.get_vocab_size()
        added = self._tok.get_added_tokens_decoder()
        if not isinstance(self._tok.decoder, decoders.ByteLevel):
            return [self.decode([i]).encode("utf-8") for i in range(n)]
        back = {ch: b for b, ch in _byte_alphabet().items()}
        return [added[i].content.encode("utf-8") if i in added
                else bytes(back[ch] for ch in (self._tok.id_to_token(i) or "") if ch in back) for i in range(n)]

    def turn_markers(self, prompt_ids) -> set[int]:
        """The special tokens among ``prompt_ids`` but the thinking tags: the ones the chat
        template writes around turns (DeepSeek's ``<｜User｜>``, ``<｜Assistant｜>``, BOS). A reply
        that writes one has begun a turn the dialogue never had, so a chat reply ends there (as
        Ollama's stop list for DeepSeek-R1 has it); EOS ends it anyway."""
        added = self._tok.get_added_tokens_decoder()
        return {int(i) for i in set(prompt_ids)
                if int(i) in added and added[int(i)].special and added[int(i)].content not in (THINK_OPEN, THINK_CLOSE)}

    def apply_chat_template(self, messages, add_generation_prompt: bool = True) -> str:
        if not self.chat_template:
            raise ModelError(f"{self._source}: no chat_template")
        if self._compiled is None:
            self._compiled = _compile(self.chat_template, self._source)
        msgs = [m if isinstance(m, dict) else {"role": m.role, "content": m.content} for m in messages]
        try:
            text = self._compiled.render(messages=msgs, add_generation_prompt=add_generation_prompt,
                                         bos_token=self.bos_token or "", eos_token=self.eos_token or "")
        except Exception as e:
            raise ModelError(f"{self._source}: chat_template failed ({type(e).__name__}: {e})") from None
        # A prompt that already opens the block, or closes it (V3.1's non-thinking mode), is left as is.
        if add_generation_prompt and self.reasoning and not text.rstrip().endswith((THINK_OPEN, THINK_CLOSE)):
            text += THINK_OPEN + "\n"
        return text

    def encode_chat(self, messages, add_generation_prompt: bool = True) -> list[int]:
        """Token ids of ``apply_chat_template(messages)``, where a control token typed in a message
        (a file that holds "<｜end▁of▁sentence｜>", say) is encoded as plain text: only the ones the
        template writes are control tokens. As transformers' ``apply_chat_template(tokenize=True,
        sanitize_control_tokens=True)``: control tokens are the special tokens and the added tokens
        the template's text holds; they are marked in the messages, and the marked ones encoded
        without added tokens."""
        import re

        if self._compiled is None and self.chat_template:
            self._compiled = _compile(self.chat_template, self._source)
        added = self._tok.get_added_tokens_decoder().values()
        literal = _template_literal_text(self._compiled, self.chat_template) if self._compiled else ""
        control = [t.content for t in added if t.special or (t.content in literal and not t.content.isspace())]
        any_of = lambda names: "|".join(map(re.escape, sorted(names, key=len, reverse=True))) or "(?!)"
        control_re = re.compile(any_of(control))

        def mark(value):
            if isinstance(value, str):
                value = value.replace(_MARK_START, "").replace(_MARK_END, "")
                return control_re.sub(f"{_MARK_START}\\g<0>{_MARK_END}", value)
            if isinstance(value, dict):
                return {k: mark(v) for k, v in value.items()}
            if isinstance(value, (list, tuple)):
                return [mark(v) for v in value]
            return value

        msgs = [m if isinstance(m, dict) else {"role": m.role, "content": m.content} for m in messages]
        text = self.apply_chat_template(mark(msgs), add_generation_prompt)
        markers = re.compile(f"{_MARK_START}({any_of(t.content for t in added)}){_MARK_END}|[{_MARK_START}{_MARK_END}]")
        pieces = markers.split(text)  # [text, marked token, text, ...]; None for a lone marker
        newline = self.encode("\n")
        ids = self.encode(pieces[0])
        for i, piece in enumerate(pieces[1:], start=1):
            if piece:
                ids += self._encode_piece(piece, as_text=i % 2 == 1, newline=newline)
        return ids

    def _encode_piece(self, piece: str, *, as_text: bool, newline: list[int]) -> list[int]:
        """A piece from the middle of a chat (encoded after a newline that is then dropped, as
        transformers does); ``as_text``: through the normalizer, pre-tokenizer and model only, so
        no added token, special or not, is matched."""
        def encode(text):
            if not as_text:
                return self._tok.encode(text, add_special_tokens=False).ids
            if self._tok.normalizer is not None:
                text = self._tok.normalizer.normalize_str(text)
            splits = [s for s, _ in self._tok.pre_tokenizer.pre_tokenize_str(text)] if self._tok.pre_tokenizer else [text]
            return [t.id for s in splits for t in self._tok.model.tokenize(s)]

        ids = encode("\n" + piece)
        return ids[len(newline):] if ids[:len(newline)] == newline else encode(piece)


_MARK_START, _MARK_END = "\U000f0000", "\U000f0001"  # private-use markers, as transformers'


def _template_literal_text(compiled, template: str) -> str:
    """The template's own text and string constants, joined by NULs (so no match spans two)."""
    from jinja2 import nodes

    ast = compiled.environment.parse(template)
    parts = {n.data for n in ast.find_all(nodes.TemplateData)}
    parts |= {n.value for n in ast.find_all(nodes.Const) if isinstance(n.value, str)}
    return "\0".join(parts)


def _byte_alphabet() -> dict[int, str]:
    """GPT-2's byte-level alphabet: each byte as a printable character (printable Latin-1 stays
    itself; the rest move to code points from 256 up, in byte order)."""
    kept = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    moved = [b for b in range(256) if b not in kept]
    return {**{b: chr(b) for b in kept}, **{b: chr(256 + k) for k, b in enumerate(moved)}}


def _compile(template: str, source):
    from datetime import datetime

    from jinja2.exceptions import TemplateError
    from jinja2.ext import loopcontrols
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    def raise_exception(message):
        raise TemplateError(message)

    def tojson(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
        return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)

    # as transformers renders templates: {% break %}/{% continue %}, its tojson, strftime_now
    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=[loopcontrols])
    env.filters["tojson"] = tojson
    env.globals["raise_exception"] = raise_exception
    env.globals["strftime_now"] = lambda fmt: datetime.now().strftime(fmt)
    try:
        return env.from_string(template)
    except TemplateError as e:
        raise ModelError(f"{source}: chat_template does not parse ({e})") from None


class IncrementalDecoder:
    """Token ids in, text out; holds back bytes until they form whole UTF-8 characters."""

    def __init__(self, tokenizer: Tokenizer, *, skip_special_tokens: bool = False):
        self.tok, self.skip = tokenizer, skip_special_tokens
        self.ids: list[int] = []
        self._prefix = 0  # ids[_prefix:_read]: context already emitted, decoded again for spacing
        self._read = 0

    def add(self, token_id: int) -> str:
        self.ids.append(int(token_id))
        before = self.tok.decode(self.ids[self._prefix:self._read], skip_special_tokens=self.skip)
        now = self.tok.decode(self.ids[self._prefix:], skip_special_tokens=self.skip)
        if len(now) > len(before) and not now.endswith("\ufffd"):
            self._prefix, self._read = self._read, len(self.ids)
            return now[len(before):]
        return ""

    def flush(self) -> str:
        """Whatever is still held (an unfinished character comes out as U+FFFD)."""
        before = self.tok.decode(self.ids[self._prefix:self._read], skip_special_tokens=self.skip)
        now = self.tok.decode(self.ids[self._prefix:], skip_special_tokens=self.skip)
        self._prefix = self._read = len(self.ids)
        return now[len(before):]
