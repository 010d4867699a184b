"""Placeholder; the benchmark lands next."""


def add_arguments(p):
    p.add_argument("--model")


def run(args):
    raise SystemExit("bench: not written yet")
