"""Any OpenAI-compatible server: streaming /v1/chat/completions over httpx + httpx-sse.

Reasoning may arrive in `delta.reasoning_content` (DeepSeek API, SGLang, llama-server
--reasoning-format deepseek, vLLM <= 0.10), `delta.reasoning` (vLLM >= 0.11, Ollama) or
inline `<think>` tags in `delta.content`: all go through the one ThinkSplitter.

Timeouts suit R1: connecting is quick or it fails; once connected there is no limit on a
whole answer, only on silence (``timeout`` seconds without a byte = a stalled server).
"""

from __future__ import annotations

import json
import socket
import threading
from collections.abc import Iterator

from app.backends.base import Clock, cancelled, no_exact_quotes, one_line
from vocab.events import Event, Failed, RequestRefused, ServerUnreachable, Usage, piece_events
from vocab.messages import ChatMessage, wire_messages
from app.backends.probe import auth_headers
from app.config import RoleConfig, Sampling
from vocab.reasoning import ThinkSplitter

CONNECT_TIMEOUT = 5.0


class OpenAIBackend:
    def __init__(self, rc: RoleConfig):
        self.rc = rc
        self.label = rc.label
        self.base = (rc.url or "").rstrip("/")
        self._client = None  # httpx.Client, made on first use and kept (connection reuse)

    def close(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None

    def _http(self):
        import httpx

        if self._client is None:
            t = float(self.rc.timeout)
            self._client = httpx.Client(timeout=httpx.Timeout(t, connect=min(CONNECT_TIMEOUT, t)))
        return self._client

    def request_body(self, messages: list[ChatMessage], sampling: Sampling, *, usage: bool = True) -> dict:
        body = {"messages": wire_messages(messages), "stream": True,
                "temperature": sampling.temperature, "top_p": sampling.top_p, "max_tokens": sampling.max_tokens}
        if self.rc.model:  # none configured: the server's own (a made-up name is a 404 on vLLM and duet serve)
            body = {"model": self.rc.model, **body}
        if sampling.seed is not None:
            body["seed"] = sampling.seed
        if usage:
            body["stream_options"] = {"include_usage": True}
        return body

    def stream(self, messages: list[ChatMessage], sampling: Sampling, *,
               cancel: threading.Event | None = None, grammar: str | None = None,
               quotes_from=None, output: dict | None = None) -> Iterator[Event]:
        """``output``: request fields that hold the reply (`response_format`, llama.cpp's
        `grammar`), sent as they are (`duet serve` passing on its client's)."""
        if quotes_from is not None:
            yield no_exact_quotes("openai", self.rc.role)
            return
        body = self.request_body(messages, sampling)
        if grammar is not None:  # constrain_edits: llama.cpp's GBNF field (llama-server, llama_cpp.server)
            body["grammar"] = grammar
        body.update(output or {})
        events = self._stream(body, cancel)
        first = next(events)
        if isinstance(first, _Retry):  # the server rejects stream_options: ask again without
            events.close()
            body = {k: v for k, v in body.items() if k != "stream_options"}
            events = self._stream(body, cancel)
            first = next(events)
        yield first
        yield from events

    def _stream(self, body: dict, cancel: threading.Event | None) -> Iterator[Event]:
        import httpx
        from httpx_sse import EventSource

        clock = Clock()
        # A model whose template opened `<think>` sends its thinking untagged: for a reasoner
        # the split waits for `</think>`; a coder's untagged text is its answer.
        splitter = ThinkSplitter(opened=None if self.rc.role == "reasoner" else False)
        finish, usage, ended = None, None, False
        url = f"{self.base}/chat/completions"
        try:
            with self._http().stream("POST", url, json=body, headers=auth_headers(self.rc)) as response:
                watcher = _CancelWatcher(cancel, response)
                try:
                    if response.status_code != 200:
                        response.read()
                        message = _error_text(response)
                        if "stream_options" in message and "stream_options" in body:
                            yield _Retry("")
                            return
                        yield RequestRefused(self._http_error(response.status_code, message, grammar="grammar" in body),
                                             response.status_code)
                        return
                    if not response.headers.get("content-type", "").startswith("text/event-stream"):
                        yield from self._whole_answer(response, splitter, clock)
                        return
                    for sse in EventSource(response).iter_sse():
                        if cancelled(cancel):
                            break
                        data = sse.data.strip()
                        if not data:
                            continue
                        if data == "[DONE]":
                            ended = True
                            break
                        try:
                            chunk = json.loads(data)
                        except ValueError:
                            yield from self._end(splitter, interrupted=True)
                            yield Failed(f"{self.base} sent a malformed stream line: {one_line(data, 80)!r}")
                            return
                        if not isinstance(chunk, dict):
                            continue
                        if chunk.get("error"):
                            yield from self._end(splitter, interrupted=True)
                            yield Failed(f"{self.base} reported an error mid-answer: {_message_of(chunk)}")
                            return
                        pieces = []
                        for choice in chunk.get("choices") or []:
                            delta = choice.get("delta") or {}
                            reasoning = delta.get("reasoning_content") or delta.get("reasoning")
                            if reasoning:
                                clock.token()
                                pieces += splitter.feed_reasoning(reasoning)
                            if delta.get("content"):
                                clock.token()
                                pieces += splitter.feed(delta["content"])
                            finish = choice.get("finish_reason") or finish
                        if isinstance(chunk.get("usage"), dict):
                            usage = _usage(chunk["usage"]) or usage
                        yield from piece_events(pieces)
                finally:
                    watcher.stop()
        except httpx.ConnectError as exc:
            if not cancelled(cancel):
                yield ServerUnreachable(f"{self.base} is unreachable ({_reason(exc)})")
                return
        except httpx.ConnectTimeout:
            if not cancelled(cancel):
                yield ServerUnreachable(f"{self.base} did not accept a connection within {CONNECT_TIMEOUT:g} s")
                return
        except httpx.TimeoutException:
            if not cancelled(cancel):
                yield from self._end(splitter, interrupted=True)
                yield Failed(f"{self.base} stalled: nothing received for {self.rc.timeout:g} s "
                             f"(raise {self.rc.role}.timeout if the server is just slow)")
                return
        except httpx.HTTPError as exc:
            if not cancelled(cancel):
                yield from self._end(splitter, interrupted=True)
                yield Failed(f"lost the connection to {self.base} mid-answer ({_reason(exc)})")
                return
        if cancelled(cancel):
            yield from self._end(splitter, interrupted=True)
            yield clock.done("cancelled")
            return
        if not ended and finish is None:
            yield from self._end(splitter, interrupted=True)
            yield Failed(f"the stream from {self.base} ended before the answer was finished")
            return
        # cut at max_tokens: text still undecided (no `</think>` yet) is a trace cut short, not a plan
        yield from self._end(splitter, interrupted=finish == "length")
        if usage is not None:
            yield usage
        yield clock.done(finish or "stop")

    def _whole_answer(self, response, splitter: ThinkSplitter, clock: Clock) -> Iterator[Event]:
        """A server that ignored stream=true and answered in one JSON body."""
        response.read()
        try:
            data = response.json()
            choice = data["choices"][0]
            message = choice.get("message") or {}
        except (ValueError, KeyError, IndexError, TypeError, AttributeError):
            yield Failed(f"{self.base} did not answer like an OpenAI-compatible server: {one_line(response.text, 80)!r}")
            return
        clock.token()
        pieces = []
        reasoning = message.get("reasoning_content") or message.get("reasoning")
        if reasoning:
            pieces += splitter.feed_reasoning(reasoning)
        pieces += splitter.feed(message.get("content") or "")
        yield from piece_events(pieces)
        yield from self._end(splitter, interrupted=choice.get("finish_reason") == "length")
        usage = _usage(data.get("usage") or {})
        if usage is not None:
            yield usage
        yield clock.done(choice.get("finish_reason") or "stop")

    def _end(self, splitter: ThinkSplitter, *, interrupted: bool = False) -> Iterator[Event]:
        yield from piece_events(splitter.finish(interrupted=interrupted))

    def _http_error(self, status: int, message: str, *, grammar: bool = False) -> str:
        text = f"{self.base} answered HTTP {status}: {message}"
        lower = message.lower()
        if status in (401, 403):
            text += f" (set ${self.rc.api_key_env})" if self.rc.api_key_env else f" (set {self.rc.role}.api_key_env)"
        elif status == 404 and "model" in lower:
            text += f" (check {self.rc.role}.model)"
        elif "context" in lower and any(w in lower for w in ("length", "size", "window", "exceed", "too long")):
            text += " (the conversation is longer than the model's context: start a new session or serve a larger context)"
        elif grammar and ("grammar" in lower or status in (400, 422)):
            text += (f" ({self.rc.role}.constrain_edits sends llama.cpp's `grammar` field, which llama-server and "
                     "llama_cpp.server take; turn it off for this server)")
        return text


class _Retry(Failed):
    """Internal: ask again without stream_options."""


class _CancelWatcher:
    """Shuts the socket when ``cancel`` is set, so a read blocked on a silent server returns now."""

    def __init__(self, cancel: threading.Event | None, response):
        self._done = threading.Event()
        self._thread = None
        if cancel is None:
            return
        stream = response.extensions.get("network_stream")
        sock = stream.get_extra_info("socket") if stream is not None else None
        if sock is None:
            return

        def watch():
            while not self._done.wait(0.02):
                if cancel.is_set():
                    try:
                        sock.shutdown(socket.SHUT_RDWR)
                    except OSError:
                        pass
                    return

        self._thread = threading.Thread(target=watch, name="duet-cancel-watch", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._done.set()


def _usage(data: dict) -> Usage | None:
    p, c = data.get("prompt_tokens"), data.get("completion_tokens")
    details = data.get("prompt_tokens_details")
    cached = details.get("cached_tokens") if isinstance(details, dict) else None
    if isinstance(p, int) and isinstance(c, int):
        return Usage(prompt_tokens=p, completion_tokens=c, cached_tokens=cached if isinstance(cached, int) else 0)
    return None


def _error_text(response) -> str:
    try:
        data = response.json()
    except ValueError:
        return one_line(response.text or response.reason_phrase or "no message", 200)
    return _message_of(data) if isinstance(data, dict) else one_line(str(data), 200)


def _message_of(data: dict) -> str:
    """The human message in the error bodies servers send (OpenAI, vLLM, llama-server, Ollama)."""
    err = data.get("error")
    if isinstance(err, dict):
        msg = err.get("message") or err.get("msg") or json.dumps(err)
    elif isinstance(err, str):
        msg = err
    else:
        msg = data.get("message") or data.get("detail") or json.dumps(data)
    return one_line(msg if isinstance(msg, str) else json.dumps(msg), 240)


def _reason(exc: Exception) -> str:
    text = str(exc) or type(exc).__name__
    if "refused" in text.lower():
        return "connection refused"
    return one_line(f"{type(exc).__name__}: {text}", 160)
