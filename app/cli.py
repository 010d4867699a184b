"""The `duet` command line. Parsing lives here; each command's work lives in its own module,
imported only when that command runs, so `duet --help` stays fast (no torch, no llama_cpp)."""

from __future__ import annotations

import argparse
import sys

from app import __version__
from app.errors import DuetError


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # one line, exit 2, as every other usage error
        self.exit(2, f"duet: {message} (see 'duet --help')\n")


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="duet", description="Plan with a reasoning model, code with a fast one: offline, in the terminal.")
    p.add_argument("--version", action="version", version=f"duet {__version__}")
    p.add_argument("--config", metavar="PATH", help="config file (default: $DUET_CONFIG, then the platform config dir)")
    p.add_argument("--demo", action="store_true",
                   help="the built-in demo models (trained in this repo for one task: fix the planted bug in a "
                        "small module) on a fresh copy of their sample project")
    p.add_argument("--workspace", metavar="DIR", default=None,
                   help="project folder the coder may edit (default: .; with --demo: a fresh sample project)")
    sub = p.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)

    sub.add_parser("tui", help="the TUI (the default command)")

    ask = sub.add_parser("ask", help="one turn, headless: answer to stdout, thinking to stderr")
    ask.add_argument("prompt", metavar="PROMPT", nargs="+")
    ask.add_argument("--role", choices=("auto", "reasoner", "coder"), default="auto")
    ask.add_argument("--json", action="store_true", help="print one JSON object instead")
    ask.add_argument("--no-save", action="store_true", help="do not save this turn as a session")

    run = sub.add_parser("run", help="plan → code → apply → test, headless (progress on stderr)")
    run.add_argument("request", metavar="REQUEST", nargs="+")
    run.add_argument("--role", choices=("auto", "reasoner", "coder"), default="auto")
    run.add_argument("--file", action="append", metavar="PATH", help="a file (or folder) in the coder's context")
    run.add_argument("--apply", action="store_true", help="write the edits (undoable); without it, only propose")
    run.add_argument("--test", metavar="CMD", help="run CMD after each apply (default: [workspace] test)")
    run.add_argument("--rounds", type=int, default=3, metavar="N", help="most apply → test rounds (default 3)")
    run.add_argument("--replans", type=int, default=None, metavar="N",
                     help="when the tests still fail after the reasoner's plan: undo, and ask it for another plan "
                          "(sampled), up to N times (default: [workspace] replans, 0 unless set; the demo's 4)")
    run.add_argument("--json", action="store_true", help="print one JSON object instead of the diff")
    run.add_argument("--no-save", action="store_true", help="do not save this run as a session")

    route = sub.add_parser("route", help="show the router's decision for TEXT")
    route.add_argument("text", metavar="TEXT", nargs="+")
    route.add_argument("--json", action="store_true")
    route.add_argument("--after-plan", action="store_true", help="as if a plan was just produced")

    sub.add_parser("doctor", help="check every configured model and backend")

    ex = sub.add_parser("export-traces", help="reasoner turns as a distillation dataset (JSONL)")
    ex.add_argument("--out", metavar="FILE.jsonl", required=True)
    ex.add_argument("--since", metavar="DATE", help="only turns on or after this date (YYYY-MM-DD)")
    ex.add_argument("--min-reasoning-tokens", type=int, default=0, metavar="N")
    ex.add_argument("--only-applied", action="store_true", help="only plans whose code was applied")
    ex.add_argument("--format", choices=("fields", "messages"), default="fields")

    serve = sub.add_parser("serve", help="the configured model behind an OpenAI-compatible HTTP API")
    serve.add_argument("--role", choices=("reasoner", "coder"), default="reasoner", help="which model to serve")
    serve.add_argument("--host", default="127.0.0.1", help="address to listen on (default: 127.0.0.1)")
    serve.add_argument("--port", type=int, default=8000, help="port (default: 8000; 0 picks a free one)")
    serve.add_argument("--api-key-env", metavar="VAR", help="require 'Authorization: Bearer $VAR' on every request")
    return p


def load_user_config(args):
    from app.config import demo_config, load_config
    from app.paths import find_config

    if args.demo:
        if getattr(args, "workspace", None) is None:  # a fresh copy of the sample project
            from app.demo import fresh_sample_project

            args.workspace = str(fresh_sample_project())
        return demo_config()
    return load_config(find_config(args.config))


def check_usage(args) -> None:
    """Bad arguments are exit 2 before anything else happens (no config read, no demo copy, no note)."""
    from pathlib import Path

    from app.errors import UsageError

    command = args.command or "tui"
    if args.workspace is not None:
        ws = Path(args.workspace).expanduser()
        if not ws.exists():
            raise UsageError(f"--workspace: no such folder: {args.workspace}")
        if not ws.is_dir():
            raise UsageError(f"--workspace: not a folder: {args.workspace}")
    if command == "ask" and not " ".join(args.prompt).strip():
        raise UsageError("duet ask: the prompt is empty")
    if command == "route" and not " ".join(args.text).strip():
        raise UsageError("duet route: the text is empty")
    if command == "run":
        if not " ".join(args.request).strip():
            raise UsageError("duet run: the request is empty")
        if args.rounds < 1:
            raise UsageError(f"duet run: --rounds must be at least 1, got {args.rounds}")
        if args.replans is not None and args.replans < 0:
            raise UsageError(f"duet run: --replans must be 0 or more, got {args.replans}")
    if command == "serve" and not 0 <= args.port <= 65535:
        raise UsageError(f"--port {args.port}: must be between 0 and 65535")  # as app.serve.main says it
    if command not in ("route", "doctor"):  # the commands that keep data: a $DUET_HOME that cannot be used
        from app.paths import data_dir

        try:
            data_dir()
        except OSError as exc:
            import os

            where = "$DUET_HOME" if os.environ.get("DUET_HOME") else "the data folder"
            raise UsageError(f"{where}: cannot use {exc.filename or ''} as the data folder "
                             f"({exc.strerror or exc})") from None


def check_api_keys(config, roles) -> None:
    """An api_key_env that names an unset variable: the server would refuse us; say so now."""
    import os

    from app.errors import ConfigError

    for name in roles:
        rc = config.role(name)
        if rc.backend == "openai" and rc.api_key_env and not os.environ.get(rc.api_key_env):
            raise ConfigError(config.source, f"{name}.api_key_env",
                              f"${rc.api_key_env} is not set (export it, or remove api_key_env)")


def _run(args) -> int:
    command = args.command or "tui"
    check_usage(args)
    if command in ("route", "export-traces"):
        if not args.demo:  # neither reads the models, but a config given to them must still be valid
            from app.config import load_config
            from app.paths import find_config

            path = find_config(args.config)
            if path is not None:
                load_config(path)
        if command == "route":
            from app.router import route

            return _print_route(route(" ".join(args.text), after_plan=args.after_plan), args.json)
        from app.export_traces import run_export

        return run_export(args)
    config = load_user_config(args)
    if getattr(args, "workspace", None) is None:
        args.workspace = "."
    from app.config import BUILTIN

    if command in ("doctor", "ask", "run") and not args.demo and config.source == BUILTIN:
        _say_what_discovery_found(to=sys.stdout if command == "doctor" else sys.stderr)
    if command in ("ask", "run", "serve"):
        role, both = args.role, ("reasoner", "coder")  # run: a reasoner's plan goes on to the coder
        check_api_keys(config, both if role == "auto" or (command == "run" and role == "reasoner") else (role,))
    if command == "doctor":
        from app.doctor import run_doctor

        return run_doctor(config)
    if command == "serve":
        from app.serve import run_serve

        return run_serve(args, config)
    if command == "ask":
        from app.ask import run_ask

        return run_ask(args, config)
    if command == "run":
        from app.run import run_request

        return run_request(args, config)
    from app.tui.app import run_tui

    return run_tui(config, args)


def _say_what_discovery_found(to) -> None:
    """No config file: the command runs on the demo models; say so, and what the user has instead."""
    from app.config_writer import discovery_note
    from app.discovery import discover
    from app.paths import default_config_path

    print(f"duet: {discovery_note(discover(), default_config_path())}", file=to, flush=True)


def _print_route(r, as_json: bool) -> int:
    if as_json:
        import json

        print(json.dumps({"role": r.role, "intent": r.intent, "why": r.why}, ensure_ascii=False))
    else:
        print(f"{r.role} · {r.intent} — {r.why}")
    return 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return _run(args)
    except DuetError as exc:
        print(f"duet: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("duet: interrupted", file=sys.stderr)
        return 130
