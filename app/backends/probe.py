"""Ask an OpenAI-compatible server what it serves, for `duet doctor` and the first-run screen.

One GET /models, and for a reasoner one tiny chat request to see where the server puts
its reasoning: in a field (`reasoning_content` / `reasoning`) or inline `<think>` tags.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from app.config import RoleConfig

PARSER_HINT = ("vLLM: --reasoning-parser deepseek_r1; SGLang: --reasoning-parser deepseek-r1; "
               "llama-server: --jinja --reasoning-format deepseek")


@dataclass
class ProbeResult:
    reachable: bool
    model_ok: bool = False
    message: str = ""
    models: tuple[str, ...] = ()
    context: int | None = None
    reasoning: str = "unknown"  # "field" | "inline" | "none" | "unknown"
    duet: bool = False  # the server is a `duet serve` (its models say owned_by "duet")


def auth_headers(rc: RoleConfig) -> dict[str, str]:
    key = os.environ.get(rc.api_key_env) if rc.api_key_env else None
    return {"Authorization": f"Bearer {key}"} if key else {}


def probe(rc: RoleConfig, *, timeout: float = 3.0, check_reasoning: bool | None = None) -> ProbeResult:
    import httpx

    base = (rc.url or "").rstrip("/")
    try:
        response = httpx.get(f"{base}/models", headers=auth_headers(rc), timeout=timeout)
    except httpx.HTTPError as exc:
        return ProbeResult(False, message=f"{base} is unreachable ({type(exc).__name__}: {exc})")
    if response.status_code in (401, 403):
        hint = f"set ${rc.api_key_env}" if rc.api_key_env else "set api_key_env"
        return ProbeResult(True, False, f"{base} refused the key (HTTP {response.status_code}); {hint}")
    try:
        data = response.json().get("data", [])
        models = tuple(m["id"] for m in data if isinstance(m, dict) and "id" in m)
        context = next((m.get("max_model_len") for m in data if m.get("id") == rc.model), None)
        duet = is_duet_serve(data)
    except (ValueError, AttributeError, TypeError):
        return ProbeResult(True, False, f"{base}/models did not answer like an OpenAI-compatible server "
                                        f"(HTTP {response.status_code})")
    if rc.model and models and rc.model not in models:
        return ProbeResult(True, False, f'model "{rc.model}" not served; the server lists: {", ".join(models)}',
                           models=models)
    what = f"{duet_serve_label(data)}: serves" if duet else "serves"
    result = ProbeResult(True, True, f"{what} {', '.join(models) or 'an unnamed model'}", models, context, duet=duet)
    if check_reasoning if check_reasoning is not None else rc.role == "reasoner":
        result.reasoning = _reasoning_placement(rc, base, timeout=max(timeout, 60.0))
        if result.reasoning == "inline":
            result.message += f"; reasoning arrives inline as <think> tags (Duet splits it; a reasoning parser is better: {PARSER_HINT})"
        elif result.reasoning == "field":
            result.message += "; reasoning arrives in its own field"
        elif result.reasoning == "none":
            result.message += f"; no reasoning seen (not a reasoning model, or the server strips it: {PARSER_HINT})"
    return result


def is_duet_serve(models: list) -> bool:
    """Whether a /v1/models list comes from `duet serve` (it names itself the owner)."""
    return any(isinstance(m, dict) and m.get("owned_by") == "duet" for m in models)


def duet_serve_label(models: list) -> str:
    """'duet serve (reasoner, local)': what a `duet serve` says it runs."""
    card = next((m for m in models if isinstance(m, dict) and m.get("owned_by") == "duet"), {})
    info = card.get("duet") if isinstance(card.get("duet"), dict) else {}
    parts = [str(info[k]) for k in ("role", "backend") if info.get(k)]
    return "duet serve" + (f" ({', '.join(parts)})" if parts else "")


def _reasoning_placement(rc: RoleConfig, base: str, timeout: float) -> str:
    import httpx

    body = {"max_tokens": 24, "stream": False, "messages": [{"role": "user", "content": "What is 2+3? Think briefly."}]}
    if rc.model:  # none configured: the server's own
        body["model"] = rc.model
    try:
        response = httpx.post(f"{base}/chat/completions", json=body, headers=auth_headers(rc), timeout=timeout)
        message = response.json()["choices"][0]["message"]
    except (httpx.HTTPError, ValueError, KeyError, IndexError, TypeError):
        return "unknown"
    if message.get("reasoning_content") or message.get("reasoning"):
        return "field"
    content = message.get("content") or ""
    return "inline" if "<think>" in content or "</think>" in content else "none"
