"""A scripted OpenAI-compatible server on 127.0.0.1, for tests: real HTTP, real SSE, real sockets.

It replays what real servers send — each provider's reasoning placement, tags split
anywhere, slow streams — and each fault: HTTP errors with JSON bodies, a connection reset
mid-stream, malformed SSE lines, an error event inside the stream, a stall.

    from tests.sse_server import ScriptedServer, reasoner_reply, text_reply, error_reply, RESET

    with ScriptedServer(reasoner_reply("Let me add.", "5", placement="reasoning")) as server:
        server.base_url                    # "http://127.0.0.1:PORT/v1" (the openai backend's url)
        ...                                # every POST /v1/chat/completions replays the script
        server.requests[-1].json           # the body the client sent; .headers too
        server.requests[-1].client_gone    # threading.Event: the client hung up mid-stream

    server.set_script(reply)               # the reply for every chat request from now on
    server.enqueue(reply1, reply2)         # the next requests get these, in order, then the script
    ScriptedServer.launch(reply)           # started; call .stop() (or use it as a context manager)

A `Reply` is a status, a JSON body for non-streaming answers, and `events` for SSE:
a dict is sent as `data: <json>`, a str is written as is (raw, possibly malformed), a float
sleeps that many seconds, and the markers DONE / RESET / STALL send `data: [DONE]`, reset the
TCP connection, or go silent until the server stops. `delay` sleeps before each event;
`split_bytes` writes the byte stream in pieces that cut lines and UTF-8 characters apart;
`ignore_stream` answers with one JSON body even when the client asked for a stream.
Requests naming a model the server does not list get a 404 like vLLM's.
"""

from __future__ import annotations

import json
import socket
import struct
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

DONE = "[DONE]"
RESET = object()
STALL = object()

PLACEMENTS = ("reasoning_content", "reasoning", "inline", "inline_no_open", "answer_only")


@dataclass
class Reply:
    status: int = 200
    events: list = field(default_factory=list)  # SSE script (see module docstring)
    body: dict | str | None = None  # non-200 body, or the whole answer to a stream=False request
    delay: float = 0.0  # seconds before each event
    split_bytes: int | None = None  # write the SSE bytes in pieces of this size
    ignore_stream: bool = False  # answer a stream=true request with the whole JSON body, as some servers do


@dataclass
class Request:
    method: str
    path: str
    headers: dict
    json: dict | None
    client_gone: threading.Event = field(default_factory=threading.Event)
    finished: threading.Event = field(default_factory=threading.Event)


# -- script builders ------------------------------------------------------------------

def chunk(delta: dict | None = None, finish_reason: str | None = None, *, usage: dict | None = None,
          model: str = "scripted-model") -> dict:
    """One `chat.completion.chunk` as OpenAI-compatible servers send it."""
    choices = [] if delta is None and finish_reason is None else [
        {"index": 0, "delta": delta or {}, "logprobs": None, "finish_reason": finish_reason}]
    out = {"id": "chatcmpl-scripted", "object": "chat.completion.chunk", "created": 1700000000,
           "model": model, "choices": choices}
    if usage is not None:
        out["usage"] = usage
    return out


def pieces(text: str, size: int = 3, cuts: list[int] | None = None) -> list[str]:
    """Cut text every ``size`` characters, or at the given offsets."""
    if cuts is not None:
        bounds = [0, *sorted(c for c in cuts if 0 < c < len(text)), len(text)]
        return [text[a:b] for a, b in zip(bounds, bounds[1:]) if b > a]
    return [text[i:i + size] for i in range(0, len(text), size)] if size > 0 else [text]


def inline_text(thinking: str, answer: str, placement: str) -> str:
    if placement == "inline":
        return f"<think>\n{thinking}\n</think>\n\n{answer}"
    if placement == "inline_no_open":
        return f"{thinking}\n</think>\n\n{answer}"
    return answer


def reasoner_reply(thinking: str, answer: str, *, placement: str = "reasoning_content", chunk_size: int = 3,
                   cuts: list[int] | None = None, delay: float = 0.0, usage: tuple[int, int] | None = (12, 34),
                   finish_reason: str = "stop", done: bool = True, split_bytes: int | None = None) -> Reply:
    """A reasoning model's reply as one provider sends it.

    placement: "reasoning_content" (DeepSeek API, SGLang, llama-server --reasoning-format
    deepseek, vLLM <= 0.10), "reasoning" (vLLM >= 0.11, Ollama /v1), "inline" (`<think>` tags
    in content: llama-server --reasoning-format none), "inline_no_open" (R1 whose template
    already emitted `<think>`), "answer_only" (no reasoning at all).
    ``cuts`` (content offsets) overrides ``chunk_size`` for the inline placements.
    """
    if placement not in PLACEMENTS:
        raise ValueError(f"placement must be one of {PLACEMENTS}")
    events: list = [chunk({"role": "assistant", "content": ""})]
    if placement in ("reasoning_content", "reasoning"):
        events += [chunk({placement: p, "content": None}) for p in pieces(thinking, chunk_size)]
        events += [chunk({"content": p}) for p in pieces(answer, chunk_size)]
    else:
        text = inline_text(thinking, answer, placement)
        events += [chunk({"content": p}) for p in pieces(text, chunk_size, cuts)]
    events.append(chunk({}, finish_reason))
    if usage is not None:
        events.append(chunk(usage={"prompt_tokens": usage[0], "completion_tokens": usage[1],
                                   "total_tokens": sum(usage)}))
    if done:
        events.append(DONE)
    message = {"role": "assistant", "content": inline_text(thinking, answer, placement)}
    if placement in ("reasoning_content", "reasoning"):
        message[placement] = thinking
    body = {"id": "chatcmpl-scripted", "object": "chat.completion", "created": 1700000000, "model": "scripted-model",
            "choices": [{"index": 0, "message": message, "finish_reason": finish_reason}]}
    if usage is not None:
        body["usage"] = {"prompt_tokens": usage[0], "completion_tokens": usage[1], "total_tokens": sum(usage)}
    return Reply(events=events, body=body, delay=delay, split_bytes=split_bytes)


def text_reply(answer: str, **kw) -> Reply:
    """A plain model's reply: content only."""
    return reasoner_reply("", answer, placement="answer_only", **kw)


def error_reply(status: int, message: str, *, style: str = "openai") -> Reply:
    """An HTTP error with the JSON body a given server sends.

    style: "openai" ({"error": {"message", "type", "code"}}: OpenAI, DeepSeek, LM Studio),
    "vllm" ({"object": "error", "message", ...}), "llama" (llama-server's {"error": {"code",
    "message", "type"}}), "ollama" ({"error": "message"}), "text" (a plain-text body).
    """
    bodies = {
        "openai": {"error": {"message": message, "type": "invalid_request_error", "param": None, "code": None}},
        "vllm": {"object": "error", "message": message, "type": "BadRequestError", "param": None, "code": status},
        "llama": {"error": {"code": status, "message": message, "type": "invalid_request_error"}},
        "ollama": {"error": message},
        "text": message,
    }
    return Reply(status=status, body=bodies[style])


def with_fault(reply: Reply, fault, *, after: int) -> Reply:
    """The reply cut after ``after`` events, then the fault (RESET, STALL, a raw str, a dict)."""
    return Reply(status=reply.status, events=[*reply.events[:after], fault], body=reply.body, delay=reply.delay,
                 split_bytes=reply.split_bytes)


def context_overflow_reply(style: str = "openai") -> Reply:
    return error_reply(400, "This model's maximum context length is 1024 tokens. However, you requested "
                            "5000 tokens (4000 in the messages, 1000 in the completion). Please reduce "
                            "the length of the messages or completion.", style=style)


# -- the server -------------------------------------------------------------------------

class ScriptedServer:
    """An OpenAI-compatible HTTP server in a thread on 127.0.0.1, replaying a script."""

    def __init__(self, script: Reply | None = None, *, models: tuple[str, ...] = ("scripted-model",)):
        self.script = script or text_reply("Hello.")
        self.models = models
        self.requests: list[Request] = []
        self._queue: deque[Reply] = deque()
        self._stopping = threading.Event()
        self._httpd: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    @classmethod
    def launch(cls, script: Reply | None = None, **kw) -> ScriptedServer:
        server = cls(script, **kw)
        server.start()
        return server

    @property
    def base_url(self) -> str:
        assert self._httpd is not None, "start the server first"
        return f"http://127.0.0.1:{self._httpd.server_address[1]}/v1"

    @property
    def port(self) -> int:
        assert self._httpd is not None, "start the server first"
        return self._httpd.server_address[1]

    def set_script(self, reply: Reply) -> None:
        self.script = reply

    def enqueue(self, *replies: Reply) -> None:
        self._queue.extend(replies)

    def start(self) -> str:
        owner = self

        class Handler(_Handler):
            server_owner = owner

        self._httpd = _QuietServer(("127.0.0.1", 0), Handler)
        self._httpd.daemon_threads = True
        self._thread = threading.Thread(target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05},
                                        name="scripted-sse-server", daemon=True)
        self._thread.start()
        return self.base_url

    def stop(self) -> None:
        self._stopping.set()
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def __enter__(self) -> ScriptedServer:
        if self._httpd is None:
            self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def _next_reply(self) -> Reply:
        return self._queue.popleft() if self._queue else self.script


class _QuietServer(ThreadingHTTPServer):
    def handle_error(self, request, client_address) -> None:  # a client hanging up is normal here
        import sys

        if not isinstance(sys.exc_info()[1], (ConnectionError, TimeoutError)):
            super().handle_error(request, client_address)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_owner: ScriptedServer

    def log_message(self, *args) -> None:  # quiet
        pass

    def _record(self, body: dict | None) -> Request:
        req = Request(self.command, self.path, dict(self.headers), body)
        self.server_owner.requests.append(req)
        return req

    def _send_json(self, status: int, body) -> None:
        data = (body if isinstance(body, str) else json.dumps(body)).encode()
        self.send_response(status)
        self.send_header("Content-Type", "text/plain" if isinstance(body, str) else "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self) -> None:
        req = self._record(None)
        if self.path.rstrip("/") == "/v1/models":
            data = [{"id": m, "object": "model", "created": 1700000000, "owned_by": "scripted"}
                    for m in self.server_owner.models]
            self._send_json(200, {"object": "list", "data": data})
        else:
            self._send_json(404, {"error": {"message": f"no route {self.path}", "type": "not_found"}})
        req.finished.set()

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length)
        try:
            body = json.loads(raw)
        except ValueError:
            body = None
        req = self._record(body)
        try:
            self._answer(req, body)
        finally:
            req.finished.set()

    def _answer(self, req: Request, body: dict | None) -> None:
        owner = self.server_owner
        if self.path.rstrip("/") != "/v1/chat/completions":
            return self._send_json(404, {"error": {"message": f"no route {self.path}", "type": "not_found"}})
        if body is None:
            return self._send_json(400, {"error": {"message": "request body is not JSON", "type": "invalid_request_error"}})
        model = body.get("model")
        if owner.models and model not in owner.models:
            return self._send_json(404, {"object": "error", "message": f"The model `{model}` does not exist.",
                                         "type": "NotFoundError", "param": None, "code": 404})
        reply = owner._next_reply()
        if reply.status != 200:
            return self._send_json(reply.status, reply.body or {})
        if not body.get("stream") or reply.ignore_stream:
            return self._send_json(200, reply.body or {})
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Cache-Control", "no-cache")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        try:
            for event in reply.events:
                if reply.delay:
                    time.sleep(reply.delay)
                if isinstance(event, float):
                    time.sleep(event)
                elif event is RESET:
                    self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                    self.connection.close()
                    self.close_connection = True
                    return
                elif event is STALL:
                    owner._stopping.wait(120)
                    self.close_connection = True
                    return
                else:
                    self._write_event(event, reply.split_bytes)
            self.wfile.write(b"0\r\n\r\n")
            self.wfile.flush()
        except (BrokenPipeError, ConnectionResetError, OSError):
            req.client_gone.set()
            self.close_connection = True

    def _write_event(self, event, split: int | None) -> None:
        if isinstance(event, dict):
            data = f"data: {json.dumps(event, ensure_ascii=False)}\n\n".encode()
        elif event == DONE:
            data = b"data: [DONE]\n\n"
        else:
            data = str(event).encode()
        parts = [data[i:i + split] for i in range(0, len(data), split)] if split else [data]
        for part in parts:
            self.wfile.write(f"{len(part):x}\r\n".encode() + part + b"\r\n")
            self.wfile.flush()
            if split:
                time.sleep(0)  # let the reader see the pieces apart
