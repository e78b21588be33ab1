"""Writes tests/data/ggml_imatrix_sha256.json: sha256 of the bytes ggml's importance-weighted
quantizers (`quantize_q4_0(src, dst, nrow, n_per_row, quant_weights)` and friends, ggml-quants.c)
produce for the inputs of tests/test_quant_formats.py:ggml_fixture_inputs() with the importances of
tests/test_quantize_imatrix.py:fixture_importance().

Usage: python tools/make_imatrix_fixture.py /path/to/libggml-quants.so
(ggml/src/ggml-quants.c compiled alone, x86-64 baseline, no FMA: gcc -O2 -shared -fPIC)."""
import ctypes
import hashlib
import json
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
from test_quant_formats import ggml_fixture_inputs  # noqa: E402
from test_quantize_imatrix import fixture_importance  # noqa: E402

from pyllm import _core  # noqa: E402

# Bytes per block, from the type-traits table.
SIZES = {n: _core.type_info(_core.type_from_name(n))["type_size"] for n in ("Q4_0", "Q4_1", "Q5_0", "Q5_1")}


def main(lib_path: str) -> None:
    lib = ctypes.CDLL(lib_path)
    out = {}
    for name, bsize in SIZES.items():
        f = getattr(lib, "quantize_" + name.lower())
        f.restype = ctypes.c_size_t
        per = {}
        for key, x in ggml_fixture_inputs().items():
            rows, n = x.shape
            qw = fixture_importance(n)
            dst = np.zeros((rows, n // 32 * bsize), np.uint8)
            f(x.ctypes.data_as(ctypes.c_void_p), dst.ctypes.data_as(ctypes.c_void_p), ctypes.c_int64(rows),
              ctypes.c_int64(n), qw.ctypes.data_as(ctypes.c_void_p))
            per[key] = hashlib.sha256(dst.tobytes()).hexdigest()
        out[name] = per
    doc = {"about": "sha256 of ggml's quantize_<type>(x, dst, rows, n_per_row, quant_weights) output for each input of "
                    "ggml_fixture_inputs() (tests/test_quant_formats.py) with quant_weights = fixture_importance(n) "
                    "(tests/test_quantize_imatrix.py). ggml-quants.c of the llama.cpp vendored in llama-cpp-python "
                    "0.3.36, compiled alone (gcc -O2, x86-64 baseline, no FMA), called through ctypes; made by "
                    "tools/make_imatrix_fixture.py.",
           "sha256": out}
    (ROOT / "tests/data/ggml_imatrix_sha256.json").write_text(json.dumps(doc, indent=1) + "\n")


if __name__ == "__main__":
    main(sys.argv[1])
