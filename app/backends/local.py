"""Our own engine (`local_engine.Engine`) in process, in the calling thread.

The TUI calls `stream` from a worker thread; cancelling is checked between tokens. The
prompt comes from the checkpoint's own chat template, so an R1 template that ends with
`<think>` tells the splitter the output starts inside the thinking.

The Engine stays loaded across turns and keeps its latent cache: a follow-up turn prefills
only what is new since the tokens the cache holds (the prompt is rendered exactly as
without reuse; an R1 history without earlier traces simply shares less). A checkpoint with
an MTP module decodes speculatively (same greedy output, same sampling distribution). The
Usage event tells cached, drafted and accepted tokens. With ``quotes_from`` (the role's
``exact_quotes``) the lines the reply writes in the prompt's numbered form are held to the
files' lines, and the inline code of its answer to code its thinking or the files have
(app.exact_quotes), token by token (sampled: without drafts); with ``known_names`` too, the
names in its inline code to the files' names; after failing tests, its reading to the
functions they reach, with one look back (app.held_reply). A reply ends at EOS or at a turn
marker of the template's (``<｜User｜>``, ``<｜Assistant｜>``): the model starting a turn of its
own.
"""

from __future__ import annotations

import functools
import threading
from collections.abc import Iterator
from pathlib import Path

from app.backends.base import Clock, cancelled, failed_from, no_grammar, no_output_fields
from app.held_reply import HeldReply
from vocab.events import Event, Failed, Usage, piece_events
from vocab.messages import ChatMessage, wire_messages
from app.config import RoleConfig, Sampling
from app.errors import DuetError, ModelLoadError
from vocab.reasoning import ThinkSplitter, prompt_opens_thinking

DEFAULT_CONTEXT = 4096


class LocalModel:
    """One loaded Engine, shared by every backend on the same folder and settings."""

    def __init__(self, path: Path, *, device: str, dtype: str, quant: str | None, context: int | None):
        self.path = Path(path)
        self.device, self.dtype, self.quant = device, dtype, quant
        self.context = context or DEFAULT_CONTEXT
        self.lock = threading.Lock()  # one generation at a time
        self._load_lock = threading.Lock()
        self.engine = None
        self._token_bytes = None

    def token_bytes(self):
        """The loaded tokenizer's bytes per token (computed once)."""
        if self._token_bytes is None:
            self._token_bytes = self.load().tokenizer.token_bytes()
        return self._token_bytes

    def load(self, progress=None):
        """The loaded Engine; the first call loads it (safe from several threads).
        ``progress(fraction)`` hears how far the load is, from the loading thread."""
        with self._load_lock:
            return self._load(progress)

    def _load(self, progress=None):
        if self.engine is None:
            try:
                from local_engine import Engine
            except ImportError as exc:
                raise DuetError(f"the local backend cannot start: {exc}") from None
            from local_engine.errors import ModelError

            try:
                self.engine = Engine.load(str(self.path), device=self.device, dtype=self.dtype, quant=self.quant,
                                          max_seq_len=self.context, progress=progress)
            except ModelError as exc:
                raise ModelLoadError(str(exc)) from None
        return self.engine

    def close(self) -> None:
        self.engine = self._token_bytes = None


class LocalBackend:
    def __init__(self, rc: RoleConfig, model: LocalModel):
        self.rc = rc
        self.label = rc.label
        self.model = model

    def close(self) -> None:
        self.model.close()

    def stream(self, messages: list[ChatMessage], sampling: Sampling, *,
               cancel: threading.Event | None = None, grammar: str | None = None,
               quotes_from=None, output: dict | None = None) -> Iterator[Event]:
        if output is not None:
            yield no_output_fields("local", self.rc.role)
            return
        if grammar is not None:
            yield no_grammar("local", self.rc.role)
            return
        clock = Clock()
        with self.model.lock:
            try:
                engine = self.model.load()
                tokenizer = engine.tokenizer
                wire = wire_messages(messages)
                prompt = tokenizer.apply_chat_template(wire, add_generation_prompt=True)
                ids = list(tokenizer.encode_chat(wire, add_generation_prompt=True))  # typed control tokens as text
            except DuetError as exc:
                yield failed_from(exc)
                return
            except Exception as exc:  # a bad checkpoint or template: report it, keep the app alive
                yield Failed(f"{self.model.path}: could not start the local engine ({type(exc).__name__}: {exc})")
                return
            room = self.model.context - len(ids)
            if room <= 0:
                yield Failed(f"the prompt is {len(ids)} tokens but {self.rc.role}.context is {self.model.context}: "
                             f"start a new session or raise {self.rc.role}.context")
                return
            from local_engine.tokenizer import IncrementalDecoder

            opened = prompt_opens_thinking(prompt)  # the reply starts inside the thinking
            splitter = ThinkSplitter(opened=opened)
            text = IncrementalDecoder(tokenizer)  # never splits a UTF-8 character
            limit = min(sampling.max_tokens, room)
            produced = 0
            held = None
            if quotes_from is not None:  # exact_quotes (and known_names): app.exact_quotes.line_rules
                held = HeldReply(engine, ids, quotes_from, thinking=opened, names=self.rc.known_names,
                                 token_bytes=self.model.token_bytes())
            try:  # the engine checks ``cancel`` between tokens and stops at EOS
                speculative = "mtp" if engine.has_mtp and self.rc.speculative == "mtp" else None
                run = held.tokens if held is not None else functools.partial(engine.generate, ids)
                for token in run(max_new_tokens=limit, temperature=sampling.temperature, top_p=sampling.top_p,
                                 seed=sampling.seed, cancel=cancel, stop_ids=tokenizer.turn_markers(ids),
                                 speculative=speculative):
                    produced += 1
                    clock.token()
                    yield from piece_events(splitter.feed(text.add(int(token))))
                    if cancelled(cancel):
                        break
                yield from piece_events(splitter.feed(text.flush()))
            except Exception as exc:
                yield from piece_events(splitter.finish(interrupted=True))
                yield Failed(f"the local engine stopped mid-answer ({type(exc).__name__}: {exc})")
                return
            if cancelled(cancel):
                yield from piece_events(splitter.finish(interrupted=True))
                yield Usage(prompt_tokens=len(ids), completion_tokens=produced)
                yield clock.done("cancelled")
                return
            yield from piece_events(splitter.finish())
            stats = held.stats if held is not None else engine.last_stats
            yield Usage(prompt_tokens=len(ids), completion_tokens=produced,
                        cached_tokens=int(stats.get("cached_tokens", 0)), drafted=int(stats.get("drafted", 0)),
                        accepted=int(stats.get("accepted", 0)))
            yield clock.done("length" if produced >= limit else "stop")
