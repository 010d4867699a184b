"""The HTTP side of `duet serve`: a Starlette app with OpenAI's routes.

`GET /v1/models`, `GET /v1/models/{id}`, `POST /v1/chat/completions` (SSE when
``stream`` is true) and `GET /health`. Every error is OpenAI's error body with a 4xx/5xx
status; nothing a client sends can take the server down. The thinking goes in
`reasoning_content`, never in `content`.
"""

from __future__ import annotations

import asyncio
import hmac
import json
from contextlib import suppress
from dataclasses import dataclass, replace

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from app import __version__
from vocab.events import AnswerDelta, Done, Event, Failed, RequestRefused, ThinkingDelta, Usage
from app.config import Sampling
from app.serve.protocol import ApiError, ChatRequest, Completion, OutputRule, parse_chat_request, parse_json
from app.serve.runner import Job, Runner

OWNER = "duet"  # `owned_by` in /v1/models: how doctor and discovery tell a duet serve apart
SERVER_HEADER = f"duet/{__version__}"


@dataclass(frozen=True)
class ServedModel:
    id: str
    role: str
    backend: str
    sampling: Sampling
    context: int | None = None
    created: int = 0

    def card(self) -> dict:
        card = {"id": self.id, "object": "model", "created": self.created, "owned_by": OWNER,
                "duet": {"role": self.role, "backend": self.backend}}
        if self.context:
            card["max_model_len"] = self.context
        return card

    def answers_to(self, name: str | None) -> bool:
        """A request may name the model by its id or by the role it serves; no name means this one."""
        return name is None or name in (self.id, self.role)


def build_app(runner: Runner, model: ServedModel, *, api_key: str | None = None) -> Starlette:
    """The ASGI app serving ``model`` through ``runner``; with ``api_key``, /v1 needs that bearer key."""

    def authorize(request: Request) -> None:
        if api_key is None:
            return
        given = request.headers.get("authorization", "")
        scheme, _, token = given.partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(token.strip().encode(), api_key.encode()):
            raise ApiError(401, "missing or incorrect API key: send 'Authorization: Bearer <key>'",
                           code="invalid_api_key")

    async def models(request: Request) -> JSONResponse:
        authorize(request)
        return JSONResponse({"object": "list", "data": [model.card()]})

    async def one_model(request: Request) -> JSONResponse:
        authorize(request)
        name = request.path_params["name"]
        if not name or not model.answers_to(name):  # the names a chat request may use find it here too
            raise ApiError(404, f"the model '{name}' does not exist; this server serves '{model.id}'",
                           param="model", code="model_not_found")
        return JSONResponse(model.card())

    async def health(request: Request) -> JSONResponse:
        return JSONResponse({"status": "ok", "model": model.id})

    async def chat_completions(request: Request):
        authorize(request)
        req = parse_chat_request(parse_json(await request.body()))
        if not model.answers_to(req.model):
            raise ApiError(404, f"the model '{req.model}' does not exist; this server serves '{model.id}'",
                           param="model", code="model_not_found")
        grammar = forward = None
        if req.output is not None and model.backend == "openai":
            forward = req.output.fields()  # the server it proxies holds the reply, or says why not
        elif req.output is not None:
            grammar = _grammar(model, req.output)
        job = runner.submit(req.messages, _sampling(model.sampling, req), req.stop, grammar, forward)
        completion = Completion(model.id)
        if req.stream:
            first = await _until_disconnect(request, job, _first_events(job))
            return _stream_response(job, completion, req, first)
        events = await _until_disconnect(request, job, _all_events(job))
        return _whole_response(completion, events, req)

    async def api_error(request: Request, exc: ApiError) -> JSONResponse:
        return JSONResponse(exc.body(), status_code=exc.status)

    async def http_error(request: Request, exc: HTTPException) -> JSONResponse:
        kind = "not_found_error" if exc.status_code == 404 else "invalid_request_error"
        message = f"{request.method} {request.url.path}: {exc.detail}"
        return JSONResponse(ApiError(exc.status_code, message, type=kind).body(), status_code=exc.status_code,
                            headers=getattr(exc, "headers", None))

    async def server_error(request: Request, exc: Exception) -> JSONResponse:
        message = f"internal error ({type(exc).__name__}: {exc})"
        return JSONResponse(ApiError(500, message, type="server_error").body(), status_code=500)

    routes = [
        Route("/v1/models", models, methods=["GET"]),
        Route("/v1/models/{name:path}", one_model, methods=["GET"]),
        Route("/v1/chat/completions", chat_completions, methods=["POST"]),
        Route("/health", health, methods=["GET"]),
    ]
    app = Starlette(routes=routes, exception_handlers={ApiError: api_error, HTTPException: http_error,
                                                        Exception: server_error})
    return _with_server_header(app)


WHAT = {"json": "JSON", "json_schema": "a JSON schema", "grammar": "a GBNF grammar"}


def _grammar(model: ServedModel, rule: OutputRule) -> str:
    """The GBNF that holds the reply to ``rule``: only a llama.cpp model samples under one (a
    proxied server is sent the request's own field instead)."""
    if model.backend != "llama.cpp":
        raise ApiError(400, f"'{rule.param}': holding the reply to {WHAT[rule.kind]} needs a llama.cpp model "
                            f"or a proxied server; this server runs the {model.backend} backend", param=rule.param)
    from app.backends.llamacpp import output_grammar

    try:
        return output_grammar(rule.kind, rule.value)
    except ValueError as exc:
        raise ApiError(400, f"'{rule.param}': {exc}", param=rule.param) from None


def _sampling(defaults: Sampling, req: ChatRequest) -> Sampling:
    return replace(defaults,
                   temperature=defaults.temperature if req.temperature is None else req.temperature,
                   top_p=defaults.top_p if req.top_p is None else req.top_p,
                   max_tokens=defaults.max_tokens if req.max_tokens is None else req.max_tokens,
                   seed=req.seed)


async def _until_disconnect(request: Request, job: Job, work):
    """Await ``work``; if the client hangs up meanwhile, cancel the job (it then ends at once)."""

    async def watch():
        while True:
            message = await request.receive()
            if message["type"] == "http.disconnect":
                job.cancel.set()
                return

    watcher = asyncio.create_task(watch())
    try:
        return await work
    finally:
        watcher.cancel()
        with suppress(asyncio.CancelledError):
            await watcher


def _is_end(event: Event) -> bool:
    return isinstance(event, (Done, Failed))


async def _first_events(job: Job) -> list[Event]:
    """Events up to the first text, or to the end: an early failure can still be an HTTP error."""
    events = []
    while True:
        event = await job.next()
        events.append(event)
        if _is_end(event) or isinstance(event, (ThinkingDelta, AnswerDelta)):
            return events


async def _all_events(job: Job) -> list[Event]:
    events = []
    while not events or not _is_end(events[-1]):
        events.append(await job.next())
    return events


def _failure(failed: Failed, req: ChatRequest) -> ApiError:
    """The HTTP error for a generation that failed before its first token."""
    text = failed.message
    if "prompt is" in text and "context" in text:  # the backends' "the prompt is N tokens but ... context is M"
        return ApiError(400, text, param="messages", code="context_length_exceeded")
    if req.output is not None and "grammar:" in text:  # llama.cpp's "the coder's grammar: ..." (unparsable, a reasoner's)
        return ApiError(400, text, param=req.output.param)
    if req.output is not None and isinstance(failed, RequestRefused) and failed.status in (400, 422):
        return ApiError(400, text, param=req.output.param)  # the proxied server would not hold it
    if text == "the server is shutting down":
        return ApiError(503, text, type="server_error")
    return ApiError(500, text, type="server_error")


def _whole_response(completion: Completion, events: list[Event], req: ChatRequest) -> JSONResponse:
    end = events[-1]
    if isinstance(end, Failed):
        raise _failure(end, req)
    if end.finish_reason == "cancelled":
        raise ApiError(503, "the generation was cancelled (the server is shutting down)", type="server_error")
    thinking = "".join(e.text for e in events if isinstance(e, ThinkingDelta))
    answer = "".join(e.text for e in events if isinstance(e, AnswerDelta))
    usage = next((e for e in events if isinstance(e, Usage)), None)
    return JSONResponse(completion.message(content=answer, reasoning=thinking, finish_reason=end.finish_reason,
                                           usage=usage))


def _stream_response(job: Job, completion: Completion, req: ChatRequest, first: list[Event]):
    from sse_starlette.sse import EventSourceResponse

    if isinstance(first[-1], Failed) and not any(isinstance(e, (ThinkingDelta, AnswerDelta)) for e in first):
        raise _failure(first[-1], req)

    def data(obj: dict) -> dict:
        return {"data": json.dumps(obj, ensure_ascii=False)}

    async def chunks():
        try:
            yield data(completion.chunk({"role": "assistant", "content": ""}, include_usage=req.include_usage))
            usage = None
            pending = list(first)
            while True:
                event = pending.pop(0) if pending else await job.next()
                if isinstance(event, ThinkingDelta):
                    yield data(completion.chunk({"reasoning_content": event.text}, include_usage=req.include_usage))
                elif isinstance(event, AnswerDelta):
                    yield data(completion.chunk({"content": event.text}, include_usage=req.include_usage))
                elif isinstance(event, Usage):
                    usage = event
                elif isinstance(event, Failed) or event.finish_reason == "cancelled":
                    message = event.message if isinstance(event, Failed) else "the generation was cancelled"
                    yield data(ApiError(500, message, type="server_error").body())
                    yield {"data": "[DONE]"}
                    return
                else:
                    yield data(completion.chunk({}, finish_reason=event.finish_reason, include_usage=req.include_usage))
                    if req.include_usage:
                        yield data(completion.usage_chunk(usage))
                    yield {"data": "[DONE]"}
                    return
        finally:
            job.cancel.set()  # the client left (or we are done): stop generating for it

    return EventSourceResponse(chunks(), sep="\n")


def _with_server_header(app):
    """Every response names the server (`server: duet/<version>`), so tools can tell it apart."""
    header = (b"server", SERVER_HEADER.encode())

    async def asgi(scope, receive, send):
        if scope["type"] != "http":
            return await app(scope, receive, send)

        async def send_with_header(message):
            if message["type"] == "http.response.start":
                message = {**message, "headers": [*message.get("headers", []), header]}
            await send(message)

        await app(scope, receive, send_with_header)

    return asgi
