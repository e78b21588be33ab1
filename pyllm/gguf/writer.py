"""GGUF writer: metadata with each value's own type kept (what the reader reports), tensor data
streamed from producers (several made ahead on worker threads, written in file order), and
`write_atomically`: a temporary file next to the destination, fsynced and renamed over it, so an
error, a full disk or Ctrl-C leaves no partial file. Used by `pyllm quantize` and the synthetic
models; the format's value type ids come from the C++ reader's table (`_core.gguf_value_types`).

Not here: reading (reader.py, C++ csrc/gguf), choosing or converting tensor types (pyllm.quantize).
Errors are QuantizeError: writing a model file is what quantizing does.
"""
from __future__ import annotations

import itertools
import os
import stat
import struct
import tempfile
from dataclasses import dataclass
from typing import Any, Callable, Iterable

import numpy as np

from pyllm import _core
from pyllm.errors import QuantizeError

# Value type ids from the C++ reader's table (gguf/gguf.h); here only their struct formats.
_VALUE_TYPES = _core.gguf_value_types()
_SCALARS = {name: (_VALUE_TYPES[name], fmt) for name, fmt in (
    ("UINT8", "<B"), ("INT8", "<b"), ("UINT16", "<H"), ("INT16", "<h"), ("UINT32", "<I"), ("INT32", "<i"),
    ("FLOAT32", "<f"), ("BOOL", "<?"), ("UINT64", "<Q"), ("INT64", "<q"), ("FLOAT64", "<d"))}
_STRING, _ARRAY = _VALUE_TYPES["STRING"], _VALUE_TYPES["ARRAY"]
_U64 = struct.Struct("<Q")


def _gguf_string(s: str | bytes) -> bytes:
    b = s if isinstance(s, bytes) else s.encode("utf-8")
    return struct.pack("<Q", len(b)) + b


def _infer_type(v: Any) -> str:
    if isinstance(v, bool):
        return "BOOL"
    if isinstance(v, int):
        return "INT32" if -2**31 <= v < 2**31 else "INT64"
    if isinstance(v, float):
        return "FLOAT32"
    if isinstance(v, (str, bytes)):
        return "STRING"
    if isinstance(v, np.ndarray):  # the reader's big numeric arrays
        return "ARRAY[" + {"?": "BOOL", "b": "INT8", "B": "UINT8", "h": "INT16", "H": "UINT16", "i": "INT32",
                           "I": "UINT32", "q": "INT64", "Q": "UINT64", "l": "INT64", "L": "UINT64",
                           "f": "FLOAT32", "d": "FLOAT64"}[v.dtype.char] + "]"
    if isinstance(v, list):
        return "ARRAY[" + (_infer_type(v[0]) if v else "INT32") + "]"
    raise QuantizeError(f"cannot store metadata value {v!r}")


def _value_type_id(vtype: str) -> int:
    if vtype == "STRING":
        return _STRING
    if vtype.startswith("ARRAY"):
        return _ARRAY
    return _SCALARS[vtype][0]


def _encode_value(vtype: str, v: Any) -> bytes:
    """The bytes of a value (without its type id), given our reader's type description."""
    if vtype == "STRING":
        return _gguf_string(v)
    if vtype in _SCALARS:
        return struct.pack(_SCALARS[vtype][1], v)
    if not vtype.startswith("ARRAY"):
        raise QuantizeError(f"unknown metadata type {vtype}")
    inner = vtype[6:-1] if vtype.startswith("ARRAY[") else ""
    if inner in ("", "ARRAY"):  # nested arrays whose element types our reader could not name
        inner = _infer_type(v[0]) if v else "INT32"
        if inner.startswith("ARRAY"):  # each item carries its own element type and count
            return struct.pack("<IQ", _ARRAY, len(v)) + b"".join(_encode_value(_infer_type(x), x) for x in v)
    head = struct.pack("<IQ", _value_type_id(inner), len(v))
    if inner in _SCALARS:
        if isinstance(v, np.ndarray):  # the reader's big numeric arrays: no per-element packing
            return head + np.ascontiguousarray(v, dtype=np.dtype(_SCALARS[inner][1])).tobytes()
        return head + struct.pack("<" + _SCALARS[inner][1][1] * len(v), *v)
    if inner == "STRING":  # a vocabulary: ~100k strings, so no Python-level loop per item
        items = [x if isinstance(x, bytes) else x.encode("utf-8") for x in v]
        lengths = map(_U64.pack, map(len, items))
        return head + b"".join(itertools.chain.from_iterable(zip(lengths, items)))
    return head + b"".join(_encode_value(inner, item) for item in v)


@dataclass
class OutTensor:
    name: str
    shape: list[int]
    type: int
    nbytes: int
    produce: Callable[[], Any]   # returns a buffer of nbytes


def _align(n: int, a: int) -> int:
    return (n + a - 1) // a * a


def write_gguf(f, metadata: list[tuple[str, str, Any]], tensors: list[OutTensor], alignment: int,
               on_tensor: Callable[[int, OutTensor], None] | None = None, workers: int = 1) -> int:
    """Writes a GGUF v3 file to the open binary file f; returns the bytes written. With workers > 1
    the tensors are produced ahead on that many threads (produce releases the GIL in C++) while
    earlier ones are written, in file order."""
    header = [b"GGUF", struct.pack("<IQQ", 3, len(tensors), len(metadata))]
    for key, vtype, value in metadata:
        header.append(_gguf_string(key) + struct.pack("<I", _value_type_id(vtype)) + _encode_value(vtype, value))
    offset = 0
    for t in tensors:
        header.append(_gguf_string(t.name) + struct.pack("<I", len(t.shape)) +
                      struct.pack(f"<{len(t.shape)}Q", *t.shape) + struct.pack("<IQ", t.type, offset))
        offset = _align(offset + t.nbytes, alignment)
    blob = b"".join(header)
    f.write(blob)
    pos = len(blob)
    pad = _align(pos, alignment) - pos
    f.write(b"\0" * pad)
    pos += pad
    for i, (t, buf) in enumerate(zip(tensors, _produced(tensors, workers))):
        data = memoryview(buf).cast("B")
        if data.nbytes != t.nbytes:
            raise QuantizeError(f"tensor {t.name!r}: produced {data.nbytes} bytes, expected {t.nbytes}")
        f.write(data)
        pad = _align(t.nbytes, alignment) - t.nbytes
        f.write(b"\0" * pad)
        pos += t.nbytes + pad
        if on_tensor:
            on_tensor(i, t)
    return pos


def _produced(tensors: list[OutTensor], workers: int, max_ahead_bytes: int = 256 << 20) -> Iterable[Any]:
    """Each tensor's data, in order. With several workers, later tensors are produced while an
    earlier one is still being made or written: up to 16 per worker, and 256 MiB, ahead (one big
    tensor, a vocabulary matrix say, then does not hold up the many small ones behind it)."""
    if workers <= 1:
        for t in tensors:
            yield t.produce()
        return
    from concurrent.futures import ThreadPoolExecutor
    pending: list = []  # futures, in file order
    ahead_bytes = 0
    nxt = 0
    with ThreadPoolExecutor(workers, thread_name_prefix="pyllm-quantize") as pool:
        try:
            for i in range(len(tensors)):
                while nxt < len(tensors) and (nxt == i or (len(pending) < 16 * workers and
                                                          ahead_bytes + tensors[nxt].nbytes <= max_ahead_bytes)):
                    pending.append(pool.submit(tensors[nxt].produce))
                    ahead_bytes += tensors[nxt].nbytes
                    nxt += 1
                data = pending.pop(0).result()
                ahead_bytes -= tensors[i].nbytes
                yield data
        finally:  # an error or Ctrl-C: drop what has not started, wait for what has
            for fut in pending:
                fut.cancel()


_FILE_KINDS = ((stat.S_ISDIR, "a directory"), (stat.S_ISCHR, "a character device"),
               (stat.S_ISBLK, "a block device"), (stat.S_ISFIFO, "a FIFO"), (stat.S_ISSOCK, "a socket"))


def check_output_kind(dst: str) -> None:
    """The output may be new or an existing regular file (a symlink is followed to its target):
    never a device, FIFO, socket or directory, which the rename at the end would replace."""
    try:
        mode = os.stat(dst).st_mode  # follows symlinks
    except FileNotFoundError:
        return
    except OSError as e:
        raise QuantizeError(f"cannot check the output {dst!r}: {e.strerror or e}") from None
    if not stat.S_ISREG(mode):
        kind = next((name for test, name in _FILE_KINDS if test(mode)), "not a regular file")
        raise QuantizeError(f"output {dst!r} exists and is {kind}; pyllm writes only new or regular files")


def write_atomically(dst: str, write: Callable[[Any], Any]) -> None:
    """Writes through a temporary file in dst's directory, fsyncs, then renames it over dst. On any
    failure (disk full, Ctrl-C, ...) the temporary file is removed and dst is untouched. A
    symlink dst is followed: its target is replaced, in the target's directory."""
    dst = os.path.realpath(dst)
    d = os.path.dirname(dst)
    try:
        fd, tmp = tempfile.mkstemp(dir=d, prefix="." + os.path.basename(dst) + ".", suffix=".part")
    except OSError as e:
        raise QuantizeError(f"cannot create the output in {d!r}: {e.strerror or e}") from e
    try:
        with os.fdopen(fd, "wb", buffering=1 << 20) as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644 & ~_umask())
        check_output_kind(dst)  # again: something else may have appeared there meanwhile
        os.replace(tmp, dst)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


def _umask() -> int:
    m = os.umask(0)
    os.umask(m)
    return m
