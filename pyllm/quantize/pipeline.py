"""The conversion behind `pyllm quantize`: read a GGUF file, choose each tensor's type (types.py),
refuse what must be refused before any work (an already-quantized input, an output that is a
device, FIFO, directory or the input itself), calibrate when the method asks (calibration.py),
convert every tensor in C++ on worker threads and write the result atomically (pyllm.gguf.writer):
dst is left as it was on any error, and the input is only ever read.

Not here: the quantizers themselves (C++: csrc/quant), the command line (cli.py), the
measurement of quality (pyllm.perplexity).
"""
from __future__ import annotations

import dataclasses
import hashlib
import os
import re
import time
from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from pyllm import _core
from pyllm.errors import QuantizeError
from pyllm.gguf.writer import OutTensor, check_output_kind, write_atomically, write_gguf
from pyllm.progress import Progress
from pyllm.quantize.types import (METHODS, FileType, TypeOptions, choose_types, fallback_summary, file_type,
                                  llama_order, type_id, type_name)

@dataclass
class QuantizeOptions:
    threads: int | None = None
    types: TypeOptions = field(default_factory=TypeOptions)
    allow_requantize: bool = False
    dry_run: bool = False
    method: str = "rtn"
    calib: str | None = None
    calib_tokens: int = 65536
    calib_ctx: int = 512
    damp: float = 0.01
    block: int = 128
    act_order: bool = True             # GPTQ columns by decreasing H_jj, static groups
    gptq_scales: str = "search"        # "search" (importance-weighted fit) or "minmax" (reference rule)
    progress: bool | None = None       # None: when stderr is a terminal


@dataclass
class QuantizeReport:
    types: dict[str, str]              # tensor -> type name written
    methods: dict[str, str]            # tensor -> rtn | imatrix | gptq | copy
    input_bytes: int
    output_bytes: int
    n_params: int
    seconds: float
    calib_seconds: float = 0.0
    calib_tokens: int = 0
    fallbacks: dict[str, tuple[str, str]] = field(default_factory=dict)  # tensor -> (wanted, used)

    def bpw(self) -> float:
        return 8 * self.output_bytes / max(1, self.n_params)


def shape_rows(info: dict) -> tuple[int, int]:
    n = info["shape"][0]
    return info["n_elements"] // n, n


def tensor_nbytes(tid: int, info: dict) -> int:
    rows, n = shape_rows(info)
    ti = _core.type_info(tid)
    if n % ti["block_size"]:
        raise QuantizeError(f"tensor {info['name']!r}: rows of {n} do not fit {ti['name']} blocks of {ti['block_size']}")
    return rows * (n // ti["block_size"]) * ti["type_size"]


def assert_finite(gf, name: str, threads: int) -> None:
    """Raises QuantizeError naming the tensor, row and column of its first NaN/inf (the decoder
    reports it), in slices of rows so that memory stays bounded."""
    info = gf.tensors[name]
    rows, n = shape_rows(info)
    raw = gf.tensor_bytes(name).reshape(rows, -1)
    step = max(1, (1 << 22) // n)
    for r0 in range(0, rows, step):
        try:
            _core.convert_rows(name, info["type"], raw[r0:r0 + step], n, type_id("F32"), threads)
        except QuantizeError as e:
            msg = str(e)
            m = re.search(r"at row (\d+)", msg)
            if m and r0:
                msg = msg.replace(m.group(0), f"at row {int(m.group(1)) + r0}")
            raise QuantizeError(msg) from None


def _check_paths(src: str, dst: str) -> None:
    if not os.path.isfile(src):
        raise QuantizeError(f"input {src!r} is not a file")
    check_output_kind(dst)
    if os.path.exists(dst) and os.path.samefile(src, dst):
        raise QuantizeError(f"output {dst!r} is the input file; choose another output path")
    if os.path.realpath(src) == os.path.realpath(dst):
        raise QuantizeError(f"output {dst!r} is the input file; choose another output path")
    d = os.path.dirname(os.path.abspath(dst))
    if not os.path.isdir(d):
        raise QuantizeError(f"output directory {d!r} does not exist")


def quantize_file(src: str | os.PathLike, dst: str | os.PathLike, type_name_: str,
                  opts: QuantizeOptions | None = None, log: Callable[[str], None] | None = None) -> QuantizeReport:
    """Quantizes the GGUF file src to dst (see the module doc). Raises QuantizeError, OSError or
    KeyboardInterrupt; in every case dst is left as it was and no temporary file remains."""
    from pyllm.gguf.reader import GGUFFile
    opts = opts or QuantizeOptions()
    log = log or (lambda s: None)
    src, dst = os.fspath(src), os.fspath(dst)
    ft = file_type(type_name_)
    if opts.method not in METHODS:
        raise QuantizeError(f"unknown method {opts.method!r}; choose one of {', '.join(METHODS)}")
    if opts.method != "rtn" and not opts.calib:
        raise QuantizeError(f"--method {opts.method} needs calibration text: --calib FILE.txt")
    if not opts.dry_run:
        _check_paths(src, dst)
    threads = opts.threads or _core.default_threads()
    t_start = time.perf_counter()
    gf = GGUFFile(src)
    try:
        md = gf.metadata
        tensors = gf.tensors
        if not tensors:
            raise QuantizeError(f"{src} holds no tensors: there is nothing to quantize")
        for name, info in tensors.items():
            if not info["supported"]:
                raise QuantizeError(f"tensor {name!r} has type {info['type_name']}, which pyllm cannot read "
                                    f"the values of; quantize from the F16/F32 original instead")
        topts = dataclasses.replace(opts.types, has_imatrix=opts.types.has_imatrix or opts.method == "imatrix")
        fallbacks: dict[str, tuple[str, str]] = {}
        targets = choose_types(tensors, md, ft, topts, fallbacks)
        if fallbacks:
            log(fallback_summary(fallbacks, sum(1 for t in targets.values() if _core.type_info(t)["is_quantized"])))
        order = llama_order(tensors)

        # Refuse before any work: a quantized input is only requantized on request.
        if not opts.allow_requantize and not opts.dry_run:
            for name in order:
                src_t, dst_t = tensors[name]["type"], targets[name]
                if src_t != dst_t and dst_t != type_id("F32") and _core.type_info(src_t)["is_quantized"]:
                    raise QuantizeError(
                        f"{src} is already quantized (tensor {name!r} is {type_name(src_t)}); requantizing "
                        f"loses quality compared with quantizing the original weights. Pass --allow-requantize "
                        f"to do it anyway.")

        out_tensors = []
        methods = {}
        for name in order:
            info = tensors[name]
            tid = targets[name]
            out_tensors.append(OutTensor(name, list(info["shape"]), tid, tensor_nbytes(tid, info), lambda: b""))
            methods[name] = "copy" if tid == info["type"] else "rtn"
        report = QuantizeReport(types={t.name: type_name(t.type) for t in out_tensors}, methods=methods,
                                input_bytes=sum(t["nbytes"] for t in tensors.values()),
                                output_bytes=sum(t.nbytes for t in out_tensors),
                                n_params=sum(t["n_elements"] for t in tensors.values()), seconds=0.0,
                                fallbacks=fallbacks)
        if opts.dry_run:
            report.seconds = time.perf_counter() - t_start
            return report

        # Calibrated tensors are computed first (layer by layer), the rest while writing.
        calibrated: dict[str, np.ndarray] = {}
        if opts.method != "rtn":
            t_cal = time.perf_counter()
            from pyllm.quantize.calibration import calibrate  # loads the model and tokenizer code
            calibrated, used, n_tok = calibrate(gf, targets, opts, threads, log)
            report.calib_seconds = time.perf_counter() - t_cal
            report.calib_tokens = n_tok
            methods.update(used)

        def producer(name: str, tid: int):
            def produce():
                if name in calibrated:
                    return calibrated.pop(name)
                info = tensors[name]
                raw = gf.tensor_bytes(name)
                if tid == info["type"]:
                    assert_finite(gf, name, 1)
                    return raw
                rows, n = shape_rows(info)
                # One thread per tensor: tensors are converted `threads` at a time (write_gguf).
                return _core.convert_rows(name, info["type"], raw.reshape(rows, -1), n, tid, 1)
            return produce

        for t in out_tensors:
            t.produce = producer(t.name, t.type)
        metadata = _output_metadata(gf, ft, opts, report, src)
        alignment = int(md.get("general.alignment", 32))
        bar = Progress(len(out_tensors), "writing", opts.progress)
        write_atomically(dst, lambda f: write_gguf(f, metadata, out_tensors, alignment,
                                                    lambda i, t: bar.update(i + 1, t.name), workers=threads))
        bar.close()
        report.seconds = time.perf_counter() - t_start
        return report
    finally:
        gf.close()


def _output_metadata(gf, ft: FileType, opts: QuantizeOptions, report: QuantizeReport, src: str):
    from pyllm import __version__
    md, mt = gf.metadata, gf.metadata_types
    out = []
    skip = {"general.file_type", "general.quantization_version", "split.no", "split.count", "split.tensors.count"}
    for key, vtype in mt.items():
        if key in skip or key.startswith("pyllm.quantize."):
            continue
        out.append((key, vtype, md[key]))
    out.append(("general.quantization_version", "UINT32", 2))
    out.append(("general.file_type", "UINT32", ft.ftype))
    prov = [("pyllm.quantize.version", "STRING", __version__),
            ("pyllm.quantize.type", "STRING", ft.name),
            ("pyllm.quantize.method", "STRING", opts.method),
            ("pyllm.quantize.source", "STRING", os.path.basename(src))]
    if opts.method != "rtn":
        with open(opts.calib, "rb") as f:
            digest = hashlib.sha256(f.read()).hexdigest()
        prov += [("pyllm.quantize.calib.file", "STRING", os.path.basename(opts.calib)),
                 ("pyllm.quantize.calib.sha256", "STRING", digest),
                 ("pyllm.quantize.calib.tokens", "UINT32", report.calib_tokens),
                 ("pyllm.quantize.calib.ctx", "UINT32", opts.calib_ctx)]
    if opts.method == "gptq":
        prov += [("pyllm.quantize.gptq.damp", "FLOAT32", opts.damp),
                 ("pyllm.quantize.gptq.block", "UINT32", opts.block),
                 ("pyllm.quantize.gptq.act_order", "BOOL", opts.act_order),
                 ("pyllm.quantize.gptq.scales", "STRING", opts.gptq_scales)]
    return out + prov
