"""The `pyllm` command: run | chat | quantize | perplexity | bench | pull | info."""
from __future__ import annotations

import argparse
import importlib
import json
import sys

from pyllm import hub
from pyllm.errors import PyllmError

# Subcommands that live in their own modules, each with add_arguments(parser) and run(args).
EXTERNAL_COMMANDS = {
    "chat": ("pyllm.chat.repl", "add_chat_arguments", "run_chat", "talk to a model in the terminal"),
    "quantize": ("pyllm.quantize.cli", "add_arguments", "run", "quantize a GGUF model (RTN, imatrix, GPTQ)"),
    "perplexity": ("pyllm.perplexity", "add_arguments", "run", "perplexity / KL-divergence on a text file"),
    "bench": ("pyllm.bench", "add_arguments", "run", "prefill and decode speed, like llama-bench"),
    "serve": ("pyllm.server", "add_arguments", "run", "an OpenAI-compatible HTTP server (pyllm[serve])"),
}


def _add_model_arg(p: argparse.ArgumentParser, optional: bool = True) -> None:
    p.add_argument("model", nargs="?" if optional else None, default=hub.DEFAULT_MODEL if optional else None,
                   help=f"a .gguf path or a known model name (default: {hub.DEFAULT_MODEL})")


def add_cache_type_arguments(p: argparse.ArgumentParser) -> None:
    """llama.cpp's KV cache knobs: -ctk/--cache-type-k, -ctv/--cache-type-v (and --cache-type for both)."""
    from pyllm.model import KV_CACHE_TYPES, kv_cache_type

    def cache_type(s: str) -> str:
        try:
            return kv_cache_type(s)
        except ValueError as e:
            raise argparse.ArgumentTypeError(str(e)) from None

    choices = ", ".join(KV_CACHE_TYPES)
    p.add_argument("-ctk", "--cache-type-k", type=cache_type, default=None, help=f"KV cache type for K ({choices}; default f16)")
    p.add_argument("-ctv", "--cache-type-v", type=cache_type, default=None, help="KV cache type for V (default f16)")
    p.add_argument("--cache-type", type=cache_type, default=None, help="KV cache type for both K and V")


def add_sampling_arguments(p: argparse.ArgumentParser) -> None:
    """--temperature, --top-k, --top-p, --min-p, --repeat-penalty, defaulting to the sampler's own
    defaults (pyllm.generate.engine.SamplingParams, read from the C++ sampler)."""
    from pyllm.generate.engine import DEFAULT_SAMPLING as d
    p.add_argument("--temperature", "--temp", type=float, default=d.temperature, help=f"(default {d.temperature})")
    p.add_argument("--top-k", type=int, default=d.top_k, help=f"(default {d.top_k}; 0: off)")
    p.add_argument("--top-p", type=float, default=d.top_p, help=f"(default {d.top_p})")
    p.add_argument("--min-p", type=float, default=d.min_p, help=f"(default {d.min_p})")
    p.add_argument("--repeat-penalty", type=float, default=d.repeat_penalty, help=f"(default {d.repeat_penalty})")


def cache_type_kwargs(args) -> dict:
    """The Model(...) keywords of add_cache_type_arguments' options."""
    return {"cache_type": getattr(args, "cache_type", None), "cache_type_k": getattr(args, "cache_type_k", None),
            "cache_type_v": getattr(args, "cache_type_v", None)}


def cmd_run(args) -> int:
    from pyllm.model import Model
    prompt = args.prompt if args.prompt is not None else args.prompt_pos
    if prompt is None and not _is_model(args.model):
        # `pyllm run "Once upon a time"`: a lone positional that names no model is the prompt.
        prompt, args.model = args.model, hub.DEFAULT_MODEL
    if prompt is None:
        if sys.stdin.isatty():
            print("pyllm run: reading the prompt from the terminal; end it with Ctrl-D "
                  "(for a conversation, use `pyllm chat`)", file=sys.stderr)
        prompt = sys.stdin.read()
    m = Model(args.model, n_ctx=args.ctx, n_threads=args.threads, **cache_type_kwargs(args))
    extras = _structured_and_speculative(args)
    out = sys.stdout
    if args.echo:
        out.write(prompt)
    sampling = dict(max_tokens=args.max_tokens, temperature=args.temperature, top_k=args.top_k, top_p=args.top_p,
                    min_p=args.min_p, repeat_penalty=args.repeat_penalty, seed=args.seed, stop=args.stop or None,
                    **extras)
    # A model with a chat template answers the prompt as a user turn, as `ollama run` and
    # llama-cli do; --raw (or a model without a template) continues the text as it stands.
    chat = not args.raw and isinstance(m.metadata.get("tokenizer.chat_template"), str)
    try:
        if chat:
            pieces = (chunk["choices"][0]["delta"].get("content") or ""
                      for chunk in m.create_chat_completion([{"role": "user", "content": prompt}], stream=True,
                                                            **sampling))
        else:
            pieces = m.generate(prompt, stream=True, **sampling)
        for piece in pieces:
            out.write(piece)
            out.flush()
    except KeyboardInterrupt:
        out.write("\n")
        return 130
    out.write("\n")
    return 0


def _structured_and_speculative(args) -> dict:
    """generate() keywords from --json-schema / --json / --grammar / --regex and --speculative /
    --draft-model / --n-draft."""
    from pathlib import Path
    kw: dict = {}
    if args.json_schema:
        try:
            schema = json.loads(Path(args.json_schema).read_text(encoding="utf-8"))
        except ValueError as e:
            raise ValueError(f"{args.json_schema}: not valid JSON: {e}") from None
        kw["response_format"] = {"type": "json_schema", "json_schema": {"schema": schema}}
    elif args.json:
        kw["response_format"] = {"type": "json_object"}
    if args.grammar:
        kw["grammar"] = Path(args.grammar).read_text(encoding="utf-8")
    elif args.regex:
        kw["grammar"] = {"regex": args.regex}
    if args.speculative or args.draft_model:
        kw.update(speculative=args.speculative, draft_model=args.draft_model, n_draft=args.n_draft)
    return kw


def _is_model(name: str) -> bool:
    from pathlib import Path
    return Path(name).expanduser().is_file() or hub.canonical_name(name) is not None or name.endswith(".gguf")


def cmd_pull(args) -> int:
    path = hub.pull(args.name)
    print(path)
    return 0


def cmd_list(args) -> int:
    for name, m in hub.KNOWN_MODELS.items():
        cached = "cached" if hub.model_path(name).is_file() else "not cached"
        print(f"{name:28s} {m.description}  [{cached}]")
    return 0


def _short(value, limit=80) -> str:
    import numpy as np
    if isinstance(value, (list, np.ndarray)):
        items = value[:5].tolist() if isinstance(value, np.ndarray) else value[:5]
        head = ", ".join(repr(v) for v in items)
        return f"[{head}{', ...' if len(value) > 5 else ''}] ({len(value)} items)"
    s = repr(value)
    return s if len(s) <= limit else s[:limit] + f"... ({len(s)} chars)"


def cmd_info(args) -> int:
    from collections import Counter

    import numpy as np

    from pyllm.gguf import GGUFFile
    f = GGUFFile(hub.resolve(args.model))
    tensors = f.tensors
    if args.json:
        md = {k: v for k, v in f.metadata.items()
              if args.full or not isinstance(v, (list, np.ndarray)) or len(v) <= 16}
        md = {k: (v.hex() if isinstance(v, bytes) else v.tolist() if isinstance(v, np.ndarray) else v)
              for k, v in md.items()}
        print(json.dumps({"path": f.path, "version": f.version, "metadata": md, "tensors": list(tensors.values())}, indent=1))
        return 0
    print(f"{f.path}: GGUF v{f.version}, {len(f.metadata)} metadata keys, {len(tensors)} tensors")
    for key, value in f.metadata.items():
        print(f"  {key:45s} {_short(value) if not args.full else repr(value)}")
    by_type = Counter(t["type_name"] for t in tensors.values())
    n_params = sum(t["n_elements"] for t in tensors.values())
    n_bytes = sum(t["nbytes"] for t in tensors.values())
    print(f"tensors: {n_params / 1e6:.1f}M parameters, {n_bytes / 2**20:.1f} MiB, "
          f"{8 * n_bytes / max(n_params, 1):.2f} bits/weight; " + ", ".join(f"{k} x{v}" for k, v in by_type.most_common()))
    unsupported = Counter(t["type_name"] for t in tensors.values() if not t["supported"])
    if unsupported:
        print("note: pyllm does not run " + ", ".join(f"{k} ({v} tensor{'s' if v != 1 else ''})" for k, v in unsupported.items()))
    if args.check:
        if unsupported:
            print(f"check: {sum(unsupported.values())} tensors of types pyllm does not decode are not checked")
        bad = f.nonfinite_tensors()
        for name, n in bad:
            print(f"  NOT FINITE: {name}: {n} NaN/inf values")
        print(f"check: {len(bad)} of {len(tensors)} tensors hold NaN or inf" if bad else f"check: all {len(tensors)} tensors are finite")
        if bad:
            return 1
    if args.tensors:
        for name, t in tensors.items():
            print(f"  {name:40s} {t['type_name']:6s} {str(t['shape']):20s} {t['nbytes']:>12d} bytes @ {t['offset']}")
    return 0


def cmd_system(args) -> int:
    import pyllm
    print(json.dumps(pyllm.system_info(), indent=1))
    return 0


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="pyllm", description="Fast quantized LLM inference on laptop CPUs.")
    from pyllm import __version__
    parser.add_argument("--version", action="version", version=f"pyllm {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    p = sub.add_parser("run", help="stream a completion of a prompt to stdout")
    _add_model_arg(p)
    p.add_argument("prompt_pos", nargs="?", metavar="PROMPT", help=argparse.SUPPRESS)
    p.add_argument("-p", "--prompt", help="the prompt (default: positional, else stdin)")
    p.add_argument("-n", "--max-tokens", type=int, default=128, help="tokens to generate; -1: until the end (default 128)")
    add_sampling_arguments(p)
    p.add_argument("--seed", type=int)
    p.add_argument("--stop", action="append", help="stop string (repeatable)")
    p.add_argument("-c", "--ctx", type=int, help="context size (default: min(trained, 4096))")
    p.add_argument("-t", "--threads", type=int)
    p.add_argument("--echo", action="store_true", help="print the prompt before the completion")
    p.add_argument("--raw", action="store_true",
                   help="continue the prompt as plain text instead of answering it with the model's chat template")
    p.add_argument("--json-schema", metavar="FILE", help="constrain the output to JSON matching this schema")
    p.add_argument("--json", action="store_true", help="constrain the output to a JSON object")
    p.add_argument("--grammar", metavar="FILE", help="constrain the output to a Lark (or GBNF) grammar")
    p.add_argument("--regex", help="constrain the output to a regular expression")
    p.add_argument("--speculative", choices=("ngram",), help="speculative decoding by prompt lookup")
    p.add_argument("--draft-model", metavar="MODEL", help="speculative decoding with this draft model")
    p.add_argument("--n-draft", type=int, help="most tokens proposed per step (default 8; fewer while proposals miss)")
    add_cache_type_arguments(p)
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("pull", help="download a known model into the cache")
    p.add_argument("name", nargs="?", default=hub.DEFAULT_MODEL)
    p.set_defaults(func=cmd_pull)

    p = sub.add_parser("list", help="known model names")
    p.set_defaults(func=cmd_list)

    p = sub.add_parser("info", help="print a GGUF file's metadata and a tensor summary")
    _add_model_arg(p)
    p.add_argument("--tensors", action="store_true", help="list every tensor")
    p.add_argument("--full", action="store_true", help="print long arrays in full")
    p.add_argument("--json", action="store_true")
    p.add_argument("--check", action="store_true", help="scan every tensor for NaN/inf (exit 1 if any)")
    p.set_defaults(func=cmd_info)

    p = sub.add_parser("system", help="kernel ISA chosen for this CPU, features, threads")
    p.set_defaults(func=cmd_system)

    # Only the command being run imports its module (chat pulls in jinja2, quantize and bench
    # their own code): `pyllm quantize` starts ~0.1 s sooner. The others are listed by name.
    for name, (module, add, run, help_text) in EXTERNAL_COMMANDS.items():
        p = sub.add_parser(name, help=help_text)
        if name == command:
            mod = importlib.import_module(module)
            getattr(mod, add)(p)
            p.set_defaults(func=getattr(mod, run))
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = build_parser(argv[0] if argv else None)
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print("\ninterrupted", file=sys.stderr)
        return 130
    except (PyllmError, ValueError, TypeError, OSError) as e:
        print(f"pyllm: error: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
