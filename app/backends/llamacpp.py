"""A GGUF model through llama-cpp-python, in process.

Loaded once on first use and kept; two roles on the same file share one `Llama` (see
`make_backend`), one turn at a time. The prompt is rendered with the GGUF's own chat
template (Gemma's format for Gemma files that carry none, ChatML for the rest), so we know
whether it ends inside an open `<think>` block and split the output accordingly.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path

from app.backends.base import Clock, cancelled, failed_from, no_exact_quotes, no_output_fields
from app.backends.llama_sampling import Grammar, drawing, require_sampler_chain
from vocab.events import Event, Failed, Usage, piece_events
from vocab.messages import ChatMessage, wire_messages
from app.config import RoleConfig, Sampling
from app.errors import DuetError, ModelLoadError
from vocab.reasoning import ThinkSplitter, prompt_opens_thinking

DEFAULT_CONTEXT = 8192  # when the config gives none: the model's own, capped here


class LlamaModel:
    """One loaded GGUF, shared by every backend that points at the same file and settings."""

    def __init__(self, path: Path, *, context: int | None, threads: int | None, gpu_layers: int, device: str):
        self.path = Path(path)
        self.context, self.threads, self.gpu_layers, self.device = context, threads, gpu_layers, device
        self.lock = threading.Lock()  # one generation at a time
        self._load_lock = threading.Lock()
        self._llm = None
        self._format = None
        self.n_ctx = 0

    def load(self):
        """The loaded Llama; the first call loads it (safe from several threads)."""
        with self._load_lock:
            return self._load()

    def _load(self):
        if self._llm is not None:
            return self._llm
        try:
            from llama_cpp import Llama
        except ImportError:
            raise DuetError("the llama.cpp backend needs llama-cpp-python: pip install llama-cpp-python") from None
        from app.gguf_meta import NotGGUF, context_length

        _quiet_llama_logs()
        try:
            trained = context_length(self.path)
        except (NotGGUF, OSError) as exc:
            raise ModelLoadError(str(exc)) from None
        n_ctx = self.context or min(trained or DEFAULT_CONTEXT, DEFAULT_CONTEXT)
        gpu_layers = -1 if self.device == "cuda" and self.gpu_layers == 0 else self.gpu_layers
        self.n_ctx = n_ctx  # llama.cpp may pad its own figure; this is what the buffers hold
        try:
            self._llm = Llama(model_path=str(self.path), n_ctx=n_ctx, n_threads=self.threads,
                              n_gpu_layers=gpu_layers, verbose=False)
        except (ValueError, RuntimeError, OSError) as exc:
            raise ModelLoadError(f"{self.path}: llama.cpp could not load it ({exc})") from None
        self._format = _chat_formatter(self._llm)
        return self._llm

    def render(self, messages: list[dict]):
        """(prompt text, stop strings, whether the template already added BOS)."""
        self.load()
        result = self._format(messages=messages)
        stop = result.stop if isinstance(result.stop, list) else [result.stop] if result.stop else []
        return result.prompt, stop, result.added_special

    def close(self) -> None:
        if self._llm is not None:
            self._llm.close()
            self._llm = None


_log_sink = None  # keeps the ctypes callback alive


def _quiet_llama_logs() -> None:
    """llama.cpp logs to stderr even with verbose=False; stderr is where `duet ask` writes the thinking."""
    global _log_sink
    if _log_sink is None:
        import ctypes

        import llama_cpp

        @llama_cpp.llama_log_callback
        def sink(level, text, user_data):  # failures reach us as exceptions instead
            pass

        _log_sink = sink
        llama_cpp.llama_log_set(sink, ctypes.c_void_p(0))


def _chat_formatter(llm):
    from llama_cpp import llama_chat_format

    template = llm.metadata.get("tokenizer.chat_template")
    if template:
        def text(token_id: int) -> str:
            return llm.detokenize([token_id], special=True).decode("utf-8", errors="replace") if token_id >= 0 else ""

        return llama_chat_format.Jinja2ChatFormatter(template=template, eos_token=text(llm.token_eos()),
                                                     bos_token=text(llm.token_bos()))
    arch = llm.metadata.get("general.architecture", "")
    return llama_chat_format.format_gemma if arch.startswith("gemma") else llama_chat_format.format_chatml


def compile_grammar(llm, grammar: str | None, role: str) -> Grammar | None:
    """llama.cpp's form of a GBNF grammar for one reply (None: sample freely), parsed now: a
    grammar it cannot parse is a one-line error here, not a crash once sampling starts."""
    return None if grammar is None else Grammar(llm, grammar, role)


def output_grammar(kind: str, value) -> str:
    """GBNF for a rule on a served reply (app.serve.protocol.OutputRule): ``kind`` "json" (any
    JSON object, llama-cpp-python's JSON grammar), "json_schema" (``value`` a schema, through its
    converter: ValueError for one it cannot convert) or "grammar" (``value`` GBNF, as given)."""
    import json

    from llama_cpp import llama_grammar

    if kind == "json":
        return llama_grammar.JSON_GBNF
    if kind == "json_schema":
        try:
            return llama_grammar.json_schema_to_gbnf(json.dumps(value))
        except Exception as exc:  # the converter raises what it meets: KeyError, ValueError, ...
            raise ValueError(f"llama.cpp's converter cannot turn this JSON schema into a grammar "
                             f"({type(exc).__name__}: {exc})") from None
    return value


PREFILL_CHUNK = 128  # prompt tokens per llama.cpp call: cancel is checked between calls


def _prefill(llm, tokens: list[int], cancel: threading.Event | None) -> int:
    """Evaluate the prompt in chunks, so Esc during a long prompt stops within one chunk.

    Whatever the cache already holds of this prompt (the earlier turns) is kept, as
    llama-cpp-python itself does; `create_completion` then finds the whole prompt cached
    and samples at once from the logits of the last chunk. Returns how many prompt tokens
    the cache already held.
    """
    held = getattr(llm, "_input_ids", None)
    if held is None or not hasattr(llm, "n_tokens"):
        return 0  # another llama-cpp-python: let create_completion read the prompt in one go
    keep = 0
    for a, b in zip(held, tokens):
        if a != b:
            break
        keep += 1
    keep = min(keep, len(tokens) - 1)  # re-read at least the last token: fresh logits
    llm.n_tokens = keep  # eval() drops the cache beyond this point
    for start in range(keep, len(tokens), PREFILL_CHUNK):
        if cancelled(cancel):
            return keep
        llm.eval(tokens[start:start + PREFILL_CHUNK])
    return keep


class LlamaCppBackend:
    def __init__(self, rc: RoleConfig, model: LlamaModel):
        self.rc = rc
        self.label = rc.label
        self.model = model

    def close(self) -> None:
        self.model.close()

    def stream(self, messages: list[ChatMessage], sampling: Sampling, *,
               cancel: threading.Event | None = None, grammar: str | None = None,
               quotes_from=None, output: dict | None = None) -> Iterator[Event]:
        if output is not None:
            yield no_output_fields("llama.cpp", self.rc.role)
            return
        if quotes_from is not None:
            yield no_exact_quotes("llama.cpp", self.rc.role)
            return
        clock = Clock()
        with self.model.lock:
            try:
                llm = self.model.load()
                prompt, stop, added_special = self.model.render(wire_messages(messages))
                tokens = llm.tokenize(prompt.encode("utf-8"), add_bos=not added_special, special=True)
                constraint = compile_grammar(llm, grammar, self.rc.role)
                require_sampler_chain(llm)
            except DuetError as exc:
                yield failed_from(exc)
                return
            except Exception as exc:  # a template that raises, a tokenizer error: report, don't crash
                yield Failed(f"{self.model.path.name}: could not build the prompt ({type(exc).__name__}: {exc})")
                return
            n_ctx = min(llm.n_ctx(), self.model.n_ctx)
            if len(tokens) >= n_ctx:
                yield Failed(f"the prompt is {len(tokens)} tokens but {self.rc.role}.context is {n_ctx}: "
                             f"start a new session or raise {self.rc.role}.context")
                return
            opened = prompt_opens_thinking(prompt)
            # a reasoning model (its prompt opens <think>, or its template strips earlier traces, as
            # R1's does): a grammar would hold its thinking, which comes first, and leave it none
            if constraint is not None and (opened or "</think>" in llm.metadata.get("tokenizer.chat_template", "")):
                yield Failed(f"the {self.rc.role}'s grammar: {self.model.path.name} is a reasoning model (it "
                             "thinks first, in <think>) and its reply cannot be held to a grammar")
                return
            splitter = ThinkSplitter(opened=opened)
            try:
                cached = _prefill(llm, tokens, cancel)
            except Exception as exc:
                yield Failed(f"llama.cpp could not read the prompt ({type(exc).__name__}: {exc})")
                return
            if cancelled(cancel):
                yield clock.done("cancelled")
                return
            max_tokens = min(sampling.max_tokens, n_ctx - len(tokens))
            finish = None
            with drawing(llm, constraint) as sampler:  # the grammar checked last, as llama-server does
                chunks = llm.create_completion(tokens, stream=True, max_tokens=max_tokens,
                                               temperature=sampling.temperature, top_p=sampling.top_p,
                                               seed=sampling.seed, stop=stop)
                try:
                    for chunk in chunks:
                        if cancelled(cancel):
                            break
                        choice = chunk["choices"][0]
                        if choice.get("text"):
                            clock.token()
                            yield from piece_events(splitter.feed(choice["text"]))
                        finish = choice.get("finish_reason") or finish
                except Exception as exc:
                    yield from piece_events(splitter.finish(interrupted=True))
                    yield Failed(f"llama.cpp stopped mid-answer ({type(exc).__name__}: {exc})")
                    return
                finally:
                    chunks.close()  # frees the model for the next turn
            usage = Usage(prompt_tokens=len(tokens), completion_tokens=sampler.drawn, cached_tokens=cached)
            if cancelled(cancel):
                yield from piece_events(splitter.finish(interrupted=True))
                yield usage
                yield clock.done("cancelled")
                return
            yield from piece_events(splitter.finish())
            yield usage
            yield clock.done(finish or "stop")
