"""`duet serve`: the configured reasoner or coder behind an OpenAI-compatible HTTP API.

- `stops`: stop sequences cut from a text stream, wherever the deltas break.
- `protocol`: the chat-completions wire format (requests, responses, OpenAI-shaped errors).
- `runner`: one backend, one worker thread, requests queued in arrival order, cancellable.
- `api`: the Starlette app (routes, auth, SSE streaming).
- `main`: the command itself (bind, load, print the URL, uvicorn, Ctrl-C).

Nothing heavy is imported here: the web stack and the model load only when the command runs.
"""

from __future__ import annotations


def run_serve(args, config) -> int:
    from app.serve.main import run_serve as run

    return run(args, config)
