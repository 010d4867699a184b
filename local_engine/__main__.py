"""python -m local_engine generate|quantize|bench — run the engine alone, write a quantized
copy of a checkpoint once (later loads skip the rounding), or benchmark it (bench/engine_bench.py,
in a source checkout).

Exit status 0 on success, 2 for a bad model folder or arguments (one line on stderr), 1 otherwise."""

from __future__ import annotations

import argparse
import sys


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m local_engine")
    sub = p.add_subparsers(dest="command", required=True)
    g = sub.add_parser("generate", help="stream a completion (thinking to stderr, answer to stdout)")
    g.add_argument("--model", required=True, help="HF model folder")
    g.add_argument("--quant", choices=["int8", "int4"])
    g.add_argument("--dtype", default="bfloat16")
    g.add_argument("--device", default="cpu")
    g.add_argument("--max-new-tokens", type=int, default=256)
    g.add_argument("--max-seq-len", type=int, default=4096)
    g.add_argument("--temperature", type=float, default=0.6)
    g.add_argument("--top-p", type=float, default=0.95)
    g.add_argument("--seed", type=int)
    g.add_argument("--speculative", choices=["mtp"],
                   help="draft with the checkpoint's MTP module and verify (same greedy output, same distribution)")
    g.add_argument("--raw", action="store_true", help="feed PROMPT as is, without the chat template")
    g.add_argument("prompt")
    q = sub.add_parser("quantize", help="write a quantized copy of a checkpoint (loads without rounding again)")
    q.add_argument("--model", required=True, help="HF model folder")
    q.add_argument("--quant", choices=["int8", "int4"], required=True)
    q.add_argument("--out", required=True, help="the folder to write (config and tokenizer copied along)")
    sub.add_parser("bench", help="Duet vs transformers on the same weights (bench/engine_bench.py; "
                                 "its options follow)", add_help=False)
    return p


def generate(args) -> int:
    from local_engine import Engine
    from vocab.reasoning import ThinkSplitter, prompt_opens_thinking
    from local_engine.errors import ModelError
    from local_engine.tokenizer import IncrementalDecoder

    engine = Engine.load(args.model, device=args.device, dtype=args.dtype, quant=args.quant,
                         max_seq_len=args.max_seq_len)
    tok = engine.tokenizer
    if tok is None:
        raise ModelError(f"{args.model}: no tokenizer.json: cannot turn the prompt into tokens")
    if args.raw or not tok.chat_template:
        prompt = args.prompt
        ids = tok.encode(prompt, add_bos=True)
        splitter, stops = None, ()
    else:
        messages = [{"role": "user", "content": args.prompt}]
        prompt = tok.apply_chat_template(messages)
        ids = tok.encode_chat(messages)  # a control token typed in the prompt is text
        splitter = ThinkSplitter(opened=prompt_opens_thinking(prompt))
        stops = tok.turn_markers(ids)  # a chat reply ends where the model starts a turn of its own
    text = IncrementalDecoder(tok)

    def emit(pieces):
        for kind, piece in pieces:
            stream = sys.stderr if kind == "thinking" else sys.stdout
            stream.write(piece)
            stream.flush()

    for token in engine.generate(ids, max_new_tokens=args.max_new_tokens, temperature=args.temperature,
                                 top_p=args.top_p, seed=args.seed, speculative=args.speculative, stop_ids=stops):
        piece = text.add(token)
        if splitter is None:
            sys.stdout.write(piece)
            sys.stdout.flush()
        else:
            emit(splitter.feed(piece))
    tail = text.flush()
    if splitter is None:
        sys.stdout.write(tail)
    else:
        emit(splitter.feed(tail) + splitter.finish())
    sys.stdout.write("\n")
    return 0


def quantize(args) -> int:
    from local_engine import Engine
    from local_engine.quantize import quantized_bytes, save_quantized

    engine = Engine.load(args.model, dtype="bfloat16", quant=args.quant)
    out = save_quantized(engine, args.out)
    nbytes, params = quantized_bytes(engine.model)
    print(f"{out}: {args.quant}, {params:,} quantized weights in {nbytes:,} bytes "
          f"({nbytes / max(params, 1):.4f} bytes/weight); load it with Engine.load or as a model path")
    return 0


def bench(argv: list[str]) -> int:
    """The engine bench lives outside the runtime package, in the checkout's bench/ folder."""
    import runpy
    from pathlib import Path

    from local_engine.errors import InputError

    script = Path(__file__).resolve().parents[1] / "bench" / "engine_bench.py"
    if not script.is_file():
        raise InputError(f"{script}: not found; the engine bench runs from a source checkout of duet")
    return runpy.run_path(str(script), run_name="engine_bench")["main"](argv)


def main(argv=None) -> int:
    from local_engine.errors import InputError, ModelError

    argv = sys.argv[1:] if argv is None else list(argv)
    try:
        if argv[:1] == ["bench"]:
            return bench(argv[1:])
        args = _parser().parse_args(argv)
        if args.command == "quantize":
            return quantize(args)
        return bench([]) if args.command == "bench" else generate(args)
    except (ModelError, InputError) as e:
        print(f"local_engine: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
