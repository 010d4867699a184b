"""`duet serve`: load the configured role's model, bind, print the URL, serve until Ctrl-C.

The socket is bound before the model loads (a taken port fails at once) and the URL is
printed once the model is ready. Ctrl-C (or SIGTERM) cancels the running generation,
drops the queue, lets uvicorn close the connections, releases the model and exits 0.
"""

from __future__ import annotations

import ipaddress
import os
import signal
import socket
import sys
import time
from pathlib import Path

from app.config import Config, RoleConfig
from app.errors import DuetError, UsageError

GRACEFUL_SHUTDOWN_S = 5


def run_serve(args, config: Config) -> int:
    rc = config.role(args.role)
    api_key = _api_key(args.api_key_env)
    sock = _bind(args.host, args.port)
    from app.backends import close_all, make_backend

    runner = None
    try:
        backend = make_backend(rc)
        context = _load(backend, rc)
        from app.serve.api import ServedModel, build_app
        from app.serve.runner import Runner

        model = ServedModel(id=served_model_id(rc), role=rc.role, backend=rc.backend, sampling=rc.sampling,
                            context=context, created=int(time.time()))
        runner = Runner(backend)
        app = build_app(runner, model, api_key=api_key)
        server = _server(app, on_exit=runner.cancel_all)
        url = f"http://{_url_host(args.host)}:{sock.getsockname()[1]}/v1"
        what = f"proxying {rc.url}" if rc.backend == "openai" else rc.backend
        print(f"duet serve: {model.id} ({rc.role}, {what}) at {url}  (Ctrl-C stops)", flush=True)
        if not _is_loopback(args.host) and api_key is None:
            print(f"duet serve: warning: listening on {args.host} without --api-key-env: anyone who can reach "
                  "this machine can use the model", file=sys.stderr, flush=True)
        server.run(sockets=[sock])
    except KeyboardInterrupt:  # Ctrl-C while the model was loading
        pass
    finally:
        if runner is not None:
            runner.close()
        close_all()
        sock.close()
    print("duet serve: stopped", file=sys.stderr, flush=True)
    return 0


def served_model_id(rc: RoleConfig) -> str:
    """The name clients use for the model: the served model's, the file's or the folder's."""
    if rc.demo:
        return "gemma-3-270m"
    if rc.backend == "openai":
        return rc.model or "default"
    path = Path(rc.path)
    return path.stem if rc.backend == "llama.cpp" else path.name


def _api_key(var: str | None) -> str | None:
    if var is None:
        return None
    key = os.environ.get(var, "").strip()
    if not key:
        raise UsageError(f"--api-key-env {var}: the environment variable ${var} is not set (or empty)")
    return key


def _bind(host: str, port: int) -> socket.socket:
    if not 0 <= port <= 65535:
        raise UsageError(f"--port {port}: must be between 0 and 65535")
    try:
        family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
    except socket.gaierror as exc:
        raise UsageError(f"--host {host}: cannot resolve it ({exc.strerror})") from None
    sock = socket.socket(family, kind, proto)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(address)
        sock.listen(128)
    except OSError as exc:
        sock.close()
        raise UsageError(f"--host {host} --port {port}: cannot listen there ({exc.strerror or exc}); "
                         "pick another --port") from None
    return sock


def _load(backend, rc: RoleConfig) -> int | None:
    """Load the model now, so the first request does not wait and a bad model fails at start; its context."""
    model = getattr(backend, "model", None)
    if model is None:  # the openai backend: a proxy, nothing to load
        return rc.context
    try:
        model.load()
    except DuetError:
        raise
    except Exception as exc:
        raise DuetError(f"{rc.role}: could not load the model ({type(exc).__name__}: {exc})") from None
    return getattr(model, "n_ctx", None) or getattr(model, "context", None) or rc.context


def _server(app, *, on_exit):
    import uvicorn

    class Server(uvicorn.Server):
        """uvicorn's server, with a Ctrl-C that first stops the generation and then exits 0."""

        def handle_exit(self, sig, frame) -> None:
            on_exit()
            try:
                from sse_starlette.sse import AppStatus

                AppStatus.should_exit = True  # open event streams end now
            except ImportError:
                pass
            if self.should_exit and sig == signal.SIGINT:
                self.force_exit = True  # a second Ctrl-C: do not wait for connections
            else:
                self.should_exit = True
            # Unlike uvicorn's own handler, the signal is not re-raised after shutdown: exit status 0.

    config = uvicorn.Config(app, log_level="warning", access_log=False, lifespan="off", server_header=False,
                            timeout_graceful_shutdown=GRACEFUL_SHUTDOWN_S)
    return Server(config)


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _url_host(host: str) -> str:
    if host in ("0.0.0.0", "::", ""):
        return "127.0.0.1"
    return f"[{host}]" if ":" in host else host
