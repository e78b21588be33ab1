"""`pyllm quantize IN.gguf OUT.gguf TYPE`: arguments, options, the report printed at the end.
The work is pipeline.quantize_file's."""
from __future__ import annotations

import argparse
import re
import sys
from typing import Sequence

from pyllm.errors import QuantizeError
from pyllm.quantize.pipeline import QuantizeOptions, quantize_file
from pyllm.quantize.types import METHODS, TypeOptions, tensor_type, types_help

_DESCRIPTION = ("convert a GGUF model to another tensor type: round-to-nearest (bit-exact with "
                "llama-quantize), importance-weighted (--method imatrix) or GPTQ (--method gptq)")

def add_arguments(p: argparse.ArgumentParser) -> None:
    p.formatter_class = argparse.RawDescriptionHelpFormatter
    p.epilog = types_help()
    p.add_argument("input", help="GGUF model to read (never modified)")
    p.add_argument("output", help="GGUF file to write")
    p.add_argument("type", help="target type (see the list below)")
    p.add_argument("--threads", type=int, default=None, help="threads (default: physical cores)")
    p.add_argument("--pure", action="store_true", help="one type for every tensor (no mix rules)")
    p.add_argument("--leave-output-tensor", action="store_true", help="keep output.weight as it is")
    p.add_argument("--output-tensor-type", metavar="T", help="type of output.weight")
    p.add_argument("--token-embedding-type", metavar="T", help="type of token_embd.weight")
    p.add_argument("--tensor-type", action="append", default=[], metavar="REGEX=T",
                   help="type of the tensors whose name matches REGEX (repeatable; first match wins)")
    p.add_argument("--dry-run", action="store_true", help="print each tensor's type and the output size; write nothing")
    p.add_argument("--allow-requantize", action="store_true", help="accept an input that is already quantized")
    p.add_argument("--method", choices=METHODS, default="rtn", help="rounding method (default rtn)")
    p.add_argument("--calib", metavar="FILE.txt", help="calibration text for imatrix and gptq")
    p.add_argument("--calib-tokens", type=int, default=65536, help="calibration tokens (default 65536)")
    p.add_argument("--calib-ctx", type=int, default=512, help="tokens per calibration sequence (default 512)")
    p.add_argument("--damp", type=float, default=0.01, help="GPTQ damping, fraction of mean(diag H) (default 0.01)")
    p.add_argument("--block", type=int, default=128, help="GPTQ lazy-update block, a multiple of 32 (default 128)")
    p.add_argument("--act-order", action=argparse.BooleanOptionalAction, default=True,
                   help="GPTQ: solve columns by decreasing activation energy, block scales fixed from the "
                        "original weights (static groups); on by default: on SmolLM2 Q4_0 it cuts the "
                        "KL-divergence of plain GPTQ by a third")
    p.add_argument("--gptq-scales", choices=("search", "minmax"), default="search",
                   help="GPTQ block scales: importance-weighted search (default) or the reference min/max rule")


def options_from_args(args: argparse.Namespace) -> QuantizeOptions:
    tt = []
    for spec in args.tensor_type:
        if "=" not in spec:
            raise QuantizeError(f"--tensor-type expects REGEX=TYPE, got {spec!r}")
        pattern, t = spec.rsplit("=", 1)
        try:
            tt.append((re.compile(pattern), tensor_type(t)))
        except re.error as e:
            raise QuantizeError(f"--tensor-type {spec!r}: bad regular expression: {e}") from e
    types = TypeOptions(pure=args.pure, leave_output_tensor=args.leave_output_tensor,
                        output_tensor_type=tensor_type(args.output_tensor_type) if args.output_tensor_type else None,
                        token_embedding_type=tensor_type(args.token_embedding_type) if args.token_embedding_type else None,
                        tensor_types=tt)
    if args.block < 32 or args.block % 32:
        raise QuantizeError(f"--block must be a positive multiple of 32, got {args.block}")
    if args.calib_ctx < 2:
        raise QuantizeError(f"--calib-ctx must be at least 2, got {args.calib_ctx}")
    return QuantizeOptions(threads=args.threads, types=types, allow_requantize=args.allow_requantize,
                           dry_run=args.dry_run, method=args.method, calib=args.calib,
                           calib_tokens=args.calib_tokens, calib_ctx=args.calib_ctx, damp=args.damp,
                           block=args.block, act_order=args.act_order, gptq_scales=args.gptq_scales)


def run(args: argparse.Namespace) -> int:
    def log(s):
        sys.stderr.write(s + "\n")
    try:
        opts = options_from_args(args)
        report = quantize_file(args.input, args.output, args.type, opts, log)
    except KeyboardInterrupt:
        sys.stderr.write("\ninterrupted; nothing was written\n")
        return 130
    except (QuantizeError, OSError, ValueError) as e:
        sys.stderr.write(f"error: {e}\n")
        return 1
    if opts.dry_run:
        for name, t in report.types.items():
            print(f"{name:40s} {t}")
    mib = 1 / 2**20
    print(f"{'would write' if opts.dry_run else 'wrote ' + args.output + ':'} "
          f"{report.output_bytes * mib:.1f} MiB of tensors ({report.bpw():.2f} bits per weight; input "
          f"{report.input_bytes * mib:.1f} MiB) in {report.seconds:.1f} s"
          + (f", calibration {report.calib_seconds:.1f} s on {report.calib_tokens} tokens"
             if report.calib_tokens else ""))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="pyllm quantize", description=_DESCRIPTION)
    add_arguments(p)
    return run(p.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
