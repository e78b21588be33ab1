"""Adds llama.cpp's IQ4_NL and IQ4_XS files of the default model to the test fixtures:

- `iq4_nl` and `iq4_xs` in tests/data/requantized_tensor_sha256.json: per tensor the type, shape and
  sha256 of the data in the files llama-quantize made from the shipped Q4_1 SmolLM2 dequantized to
  F32 (`llama-quantize --allow-requantize MODEL f32.gguf F32`, then `llama-quantize f32.gguf
  OUT IQ4_NL|IQ4_XS`), the same way the file's other entries were made;
- tests/data/ggml_iquant_sha256.json: sha256 of ggml's quantize_iq4_nl / quantize_iq4_xs (no
  importance matrix: what llama-quantize calls) on the inputs of
  tests/test_quant_formats.py:ggml_fixture_inputs(), called through ctypes in libggml-base.so.

Usage: python tools/make_iquant_fixtures.py LLAMA_CPP_BIN_DIR MODEL.gguf WORK_DIR
(LLAMA_CPP_BIN_DIR: llama.cpp's build/bin, with llama-quantize and libggml-base.so; the peer
llama.cpp is the one vendored in llama-cpp-python 0.3.36, built for AVX2)."""
import ctypes
import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
from test_quant_formats import ggml_fixture_inputs  # noqa: E402

LAYOUT = {"IQ4_NL": (32, 18), "IQ4_XS": (256, 136)}


def tensor_table(path: Path) -> dict:
    import gguf
    r = gguf.GGUFReader(str(path))
    return {t.name: {"type": t.tensor_type.name, "shape": [int(v) for v in t.shape],
                     "sha256": hashlib.sha256(bytes(t.data)).hexdigest()} for t in r.tensors}


def main(bin_dir: str, model: str, work: str) -> None:
    bin_dir, work = Path(bin_dir), Path(work)
    work.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ, LD_LIBRARY_PATH=str(bin_dir))
    quantize = [str(bin_dir / "llama-quantize")]
    f32 = work / "f32.gguf"
    subprocess.run(quantize + ["--allow-requantize", model, str(f32), "F32"], env=env, check=True, capture_output=True)
    path = ROOT / "tests/data/requantized_tensor_sha256.json"
    table = json.loads(path.read_text())
    for name in LAYOUT:
        out = work / f"{name.lower()}.gguf"
        subprocess.run(quantize + [str(f32), str(out), name], env=env, check=True, capture_output=True)
        table[name.lower()] = tensor_table(out)
    path.write_text(json.dumps(table, indent=0))

    lib = ctypes.CDLL(str(bin_dir / "libggml-base.so"))
    hashes = {}
    for name, (block, size) in LAYOUT.items():
        f = getattr(lib, "quantize_" + name.lower())
        f.restype = ctypes.c_size_t
        per = {}
        for key, x in ggml_fixture_inputs().items():
            rows, n = x.shape
            dst = np.zeros((rows, n // block * size), np.uint8)
            f(x.ctypes.data_as(ctypes.c_void_p), dst.ctypes.data_as(ctypes.c_void_p), ctypes.c_int64(rows),
              ctypes.c_int64(n), None)
            per[key] = hashlib.sha256(dst.tobytes()).hexdigest()
        hashes[name] = per
    doc = {"about": "sha256 of ggml's quantize_iq4_nl / quantize_iq4_xs (x, dst, rows, n_per_row, NULL) output for "
                    "each input of ggml_fixture_inputs() (tests/test_quant_formats.py): llama.cpp vendored in "
                    "llama-cpp-python 0.3.36, its libggml-base.so (x86-64 AVX2 build) called through ctypes; made "
                    "by tools/make_iquant_fixtures.py.",
           "sha256": hashes}
    (ROOT / "tests/data/ggml_iquant_sha256.json").write_text(json.dumps(doc, indent=1) + "\n")


if __name__ == "__main__":
    main(*sys.argv[1:4])
