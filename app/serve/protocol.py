"""The OpenAI chat-completions wire format: reading a request, writing responses and errors.

Pure Python (no web framework): `parse_chat_request` turns a request body into a
`ChatRequest` or raises `ApiError` (an OpenAI-shaped error with its HTTP status); the
builders write the `chat.completion` object, the `chat.completion.chunk` objects of a
stream, and the `usage` block.
"""

from __future__ import annotations

import json
import time
import uuid
from dataclasses import dataclass, field

from app.backends.base import ChatMessage
from vocab.events import Usage

MAX_STOP_SEQUENCES = 16
SEED_RANGE = (-(2 ** 63), 2 ** 64)  # what a 64-bit seed can hold; the engines fail on more (torch: overflow)
# other servers' constrained-sampling fields (llama.cpp's `json_schema`, vLLM's): ignoring one
# would hand back unconstrained text as if it were constrained. Served: `response_format` (JSON,
# JSON schema) and llama.cpp's `grammar` (GBNF): on a llama.cpp model, and sent on to the server
# an openai backend proxies (app.serve.api).
CONSTRAINT_FIELDS = ("json_schema", "guided_json", "guided_regex", "guided_choice", "guided_grammar")
ROLES = {"system": "system", "developer": "system", "user": "user", "assistant": "assistant"}


class ApiError(Exception):
    """A request the server will not serve: HTTP ``status`` with OpenAI's error body."""

    def __init__(self, status: int, message: str, *, type: str = "invalid_request_error",
                 param: str | None = None, code: str | None = None):
        super().__init__(message)
        self.status, self.message, self.type, self.param, self.code = status, message, type, param, code

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}


@dataclass(frozen=True)
class ChatRequest:
    model: str | None
    messages: list[ChatMessage]
    stream: bool = False
    include_usage: bool = False
    max_tokens: int | None = None
    temperature: float | None = None
    top_p: float | None = None
    seed: int | None = None
    stop: tuple[str, ...] = field(default_factory=tuple)
    output: "OutputRule | None" = None


@dataclass(frozen=True)
class OutputRule:
    """What the reply must be: ``kind`` "json" (any JSON object: response_format json_object),
    "json_schema" (``value`` the schema), or "grammar" (``value`` llama.cpp's GBNF text);
    ``param`` the request field that asked for it, for errors, and ``sent`` that field's value
    as the client sent it (what a proxied server is sent)."""
    kind: str
    value: object
    param: str
    sent: object = None

    def fields(self) -> dict:
        """The request field that asks for the rule, as sent: for a server that holds the reply itself."""
        return {self.param: self.sent}


def parse_json(raw: bytes) -> dict:
    try:
        body = json.loads(raw)
        # "\ud800" is valid JSON but no text: the tokenizer would fail on it later, as a 500
        json.dumps(body, ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError:
        raise ApiError(400, "the request body holds an unpaired surrogate (such as \\ud800): not valid Unicode text",
                       code="invalid_json") from None
    except (ValueError, RecursionError) as exc:  # RecursionError: nested too deep to parse
        raise ApiError(400, f"the request body is not valid JSON ({exc})", code="invalid_json") from None
    if not isinstance(body, dict):
        raise ApiError(400, f"the request body must be a JSON object, got {_kind(body)}")
    return body


def parse_chat_request(body: dict) -> ChatRequest:
    """Validate a /v1/chat/completions body; unknown fields are ignored, as OpenAI-compatible servers do,
    while a known one that asks for what this server cannot do is a 400 naming it."""
    model = body.get("model")
    if model is not None and not isinstance(model, str):
        raise ApiError(400, f"'model' must be a string, got {_kind(model)}", param="model")
    n = body.get("n", 1)
    if n is not None and (_not_int(n) or n != 1):
        raise ApiError(400, "only n=1 is supported", param="n")
    for key in ("tools", "functions"):
        if body.get(key):
            raise ApiError(400, "tool calls are not supported by duet serve", param=key)
    for key in ("tool_choice", "function_call"):  # "none" and "auto" (of no tools) ask for nothing
        if body.get(key) not in (None, "none", "auto"):
            raise ApiError(400, f"'{key}' asks for a tool call; tool calls are not supported by duet serve", param=key)
    # asked-for output this server cannot give is refused, not silently left out
    if body.get("logprobs") or body.get("top_logprobs"):
        key = "logprobs" if body.get("logprobs") else "top_logprobs"
        raise ApiError(400, "logprobs are not supported by duet serve", param=key)
    output = _output_rule(body)
    modalities = body.get("modalities")
    if modalities is not None and (not isinstance(modalities, list) or any(m != "text" for m in modalities)):
        raise ApiError(400, f"'modalities' {json.dumps(modalities)} is not supported by duet serve (text only)",
                       param="modalities")
    for key in ("audio", *CONSTRAINT_FIELDS):
        if body.get(key):
            raise ApiError(400, f"'{key}' is not supported by duet serve", param=key)
    # sampling the backends do not do: a neutral value (0, {}) changes nothing and is accepted
    for key in ("presence_penalty", "frequency_penalty", "logit_bias"):
        if body.get(key):
            raise ApiError(400, f"'{key}' is not supported by duet serve (only 0 or empty)", param=key)
    stream = _optional(body, "stream", bool) or False
    options = body.get("stream_options")
    if options is not None and not isinstance(options, dict):
        raise ApiError(400, f"'stream_options' must be an object, got {_kind(options)}", param="stream_options")
    if options is not None and not stream:  # as OpenAI answers: it would be silently meaningless
        raise ApiError(400, "'stream_options' is only allowed with stream=true", param="stream_options")
    include_usage = bool(options and _optional(options, "include_usage", bool, "stream_options.include_usage"))
    max_tokens = body.get("max_completion_tokens")
    key = "max_completion_tokens"
    if max_tokens is None:
        max_tokens, key = body.get("max_tokens"), "max_tokens"
    if max_tokens is not None and (_not_int(max_tokens) or max_tokens < 1):
        raise ApiError(400, f"'{key}' must be a positive integer, got {json.dumps(max_tokens)}", param=key)
    temperature = _number(body, "temperature", 0.0, 2.0)
    top_p = _number(body, "top_p", 0.0, 1.0)
    if top_p is not None and top_p <= 0:
        raise ApiError(400, f"'top_p' must be greater than 0, got {top_p}", param="top_p")
    seed = body.get("seed")
    if seed is not None and _not_int(seed):
        raise ApiError(400, f"'seed' must be an integer, got {_kind(seed)}", param="seed")
    if seed is not None and not SEED_RANGE[0] <= seed < SEED_RANGE[1]:
        raise ApiError(400, f"'seed' must fit in 64 bits (from -2**63 to 2**64-1), got {seed}", param="seed")
    return ChatRequest(model=model, messages=_messages(body.get("messages")), stream=stream,
                       include_usage=include_usage, max_tokens=max_tokens, temperature=temperature,
                       top_p=top_p, seed=seed, stop=_stops(body.get("stop")), output=output)


def _output_rule(body: dict) -> OutputRule | None:
    """``response_format`` (text; json_object; json_schema with its ``schema``) and llama.cpp's
    ``grammar`` (GBNF text): at most one rule on the reply."""
    fmt, grammar = body.get("response_format"), body.get("grammar")
    rule = None
    if fmt is not None:
        kind = fmt.get("type") if isinstance(fmt, dict) else None
        if kind == "json_object":
            rule = OutputRule("json", None, "response_format", fmt)
        elif kind == "json_schema":
            spec = fmt.get("json_schema")
            if not isinstance(spec, dict):
                raise ApiError(400, f"'response_format.json_schema' must be an object, got {_kind(spec)}",
                               param="response_format.json_schema")
            schema = spec.get("schema")
            if schema is not None and not isinstance(schema, dict):
                raise ApiError(400, f"'response_format.json_schema.schema' must be an object, got {_kind(schema)}",
                               param="response_format.json_schema.schema")
            rule = OutputRule("json_schema", schema, "response_format", fmt) if schema else OutputRule(
                "json", None, "response_format", fmt)
        elif kind != "text":
            raise ApiError(400, f"'response_format' {json.dumps(kind if kind is not None else fmt)} is not supported "
                                "by duet serve (text, json_object, json_schema)", param="response_format")
    if grammar is not None:
        if not isinstance(grammar, str) or not grammar.strip():
            got = "an empty string" if isinstance(grammar, str) else _kind(grammar)
            raise ApiError(400, f"'grammar' must be GBNF text, got {got}", param="grammar")
        if rule is not None:
            raise ApiError(400, "'grammar' and a JSON 'response_format' cannot both hold the reply: send one",
                           param="grammar")
        rule = OutputRule("grammar", grammar, "grammar", grammar)
    return rule


def _messages(value) -> list[ChatMessage]:
    if value is None:
        raise ApiError(400, "'messages' is required", param="messages")
    if not isinstance(value, list) or not value:
        raise ApiError(400, f"'messages' must be a non-empty array, got {_kind(value)}", param="messages")
    out = []
    for i, m in enumerate(value):
        where = f"messages[{i}]"
        if not isinstance(m, dict):
            raise ApiError(400, f"'{where}' must be an object, got {_kind(m)}", param=where)
        role = m.get("role")
        if role not in ROLES:
            hint = "; tool messages are not supported" if role == "tool" else ""
            raise ApiError(400, f"'{where}.role' must be one of system, developer, user, assistant, "
                                f"got {json.dumps(role)}{hint}", param=f"{where}.role")
        for key in ("tool_calls", "function_call"):  # dropping them would change what the history says
            if m.get(key):
                raise ApiError(400, f"'{where}.{key}': tool calls are not supported by duet serve",
                               param=f"{where}.{key}")
        out.append(ChatMessage(ROLES[role], _content(m.get("content"), role, f"{where}.content")))
    return out


def _content(value, role: str, where: str) -> str:
    if isinstance(value, str):
        return value
    if value is None and role == "assistant":
        return ""
    if isinstance(value, list):  # content parts: only text ones, one per line (as vLLM joins them)
        parts = []
        for j, part in enumerate(value):
            if not isinstance(part, dict) or part.get("type") != "text" or not isinstance(part.get("text"), str):
                kind = part.get("type") if isinstance(part, dict) else _kind(part)
                raise ApiError(400, f"'{where}[{j}]' must be a text part, got {json.dumps(kind)}", param=f"{where}[{j}]")
            parts.append(part["text"])
        return "\n".join(parts)
    raise ApiError(400, f"'{where}' must be a string or an array of text parts, got {_kind(value)}", param=where)


def _stops(value) -> tuple[str, ...]:
    if value is None:
        return ()
    items = [value] if isinstance(value, str) else value
    if not isinstance(items, list) or not all(isinstance(s, str) for s in items):
        raise ApiError(400, f"'stop' must be a string or an array of strings, got {_kind(value)}", param="stop")
    if len(items) > MAX_STOP_SEQUENCES:
        raise ApiError(400, f"'stop' may hold at most {MAX_STOP_SEQUENCES} sequences, got {len(items)}", param="stop")
    return tuple(s for s in items if s)


def _optional(body: dict, key: str, kind: type, name: str | None = None):
    value = body.get(key)
    if value is not None and not isinstance(value, kind):
        raise ApiError(400, f"'{name or key}' must be {kind.__name__}, got {_kind(value)}", param=name or key)
    return value


def _number(body: dict, key: str, low: float, high: float) -> float | None:
    value = body.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ApiError(400, f"'{key}' must be a number, got {_kind(value)}", param=key)
    if not low <= value <= high:
        raise ApiError(400, f"'{key}' must be between {low:g} and {high:g}, got {value}", param=key)
    return float(value)


def _not_int(value) -> bool:
    return isinstance(value, bool) or not isinstance(value, int)


def _kind(value) -> str:
    return {dict: "an object", list: "an array", str: "a string", bool: "a boolean", int: "an integer",
            float: "a number", type(None): "null"}.get(type(value), type(value).__name__)


# -- responses -----------------------------------------------------------------------------


class Completion:
    """The ids and stamps one response shares across its chunks."""

    def __init__(self, model: str):
        self.id = f"chatcmpl-{uuid.uuid4().hex[:24]}"
        self.created = int(time.time())
        self.model = model

    def _head(self, obj: str) -> dict:
        return {"id": self.id, "object": obj, "created": self.created, "model": self.model,
                "system_fingerprint": "duet"}

    def message(self, *, content: str, reasoning: str, finish_reason: str, usage: Usage | None) -> dict:
        message = {"role": "assistant", "content": content}
        if reasoning:
            message["reasoning_content"] = reasoning
        return {**self._head("chat.completion"),
                "choices": [{"index": 0, "message": message, "logprobs": None, "finish_reason": finish_reason}],
                "usage": usage_body(usage)}

    def chunk(self, delta: dict, *, finish_reason: str | None = None, include_usage: bool = False) -> dict:
        out = {**self._head("chat.completion.chunk"),
               "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}]}
        if include_usage:
            out["usage"] = None
        return out

    def usage_chunk(self, usage: Usage | None) -> dict:
        return {**self._head("chat.completion.chunk"), "choices": [], "usage": usage_body(usage)}


def usage_body(usage: Usage | None) -> dict:
    prompt = usage.prompt_tokens if usage else 0
    completion = usage.completion_tokens if usage else 0
    cached = getattr(usage, "cached_tokens", 0) if usage else 0
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion,
            "prompt_tokens_details": {"cached_tokens": cached}}
