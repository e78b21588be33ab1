"""Bit-exactness with llama.cpp on the real model: dequantizing every tensor of the shipped Q4_1
SmolLM2 and requantizing it with our reference quantizers reproduces the sha256 of every tensor
in the files llama.cpp made the same way (tests/data/requantized_tensor_sha256.json: `f32`, and
`q4_0`, `q8_0`, `q4_k_m` quantized from that f32 data, each tensor to the type listed for it).

Tensors are read with the `gguf` package's reader for now (our own reader is tested elsewhere)."""
import collections
import hashlib

import numpy as np
import pytest

from pyllm import _core


def sha256(a: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(a).tobytes()).hexdigest()


@pytest.fixture(scope="module")
def hashes(fixture_json):
    return fixture_json("requantized_tensor_sha256.json")


@pytest.fixture(scope="module")
def f32_tensors(smollm2_path):
    """name -> (rows, row_length) float32: every tensor of the model, dequantized by us."""
    import gguf
    reader = gguf.GGUFReader(str(smollm2_path))
    out = {}
    for t in reader.tensors:
        info = _core.type_info(int(t.tensor_type))
        n = int(t.shape[0])                               # GGUF ne[0]: the row length
        row_bytes = n // info["block_size"] * info["type_size"]
        raw = np.asarray(t.data).view(np.uint8).reshape(-1, row_bytes)
        out[t.name] = (_core.dequantize(info["id"], raw, n, isa="ref"), [int(v) for v in t.shape])
    return out


def test_f32_hashes(f32_tensors, hashes):
    expect = hashes["f32"]
    assert set(f32_tensors) == set(expect)
    mismatched = []
    for name, (x, shape) in f32_tensors.items():
        assert expect[name]["type"] == "F32" and expect[name]["shape"] == shape, name
        if sha256(x) != expect[name]["sha256"]:
            mismatched.append(name)
    assert not mismatched, f"{len(mismatched)}/{len(expect)} f32 tensors differ: {mismatched[:5]}"


@pytest.mark.parametrize("file", ["q4_0", "q8_0", "q4_k_m"])
def test_requantized_hashes(file, f32_tensors, hashes):
    expect = hashes[file]
    assert set(expect) == set(f32_tensors)
    matched, mismatched = collections.Counter(), collections.defaultdict(list)
    for name, e in expect.items():
        x, shape = f32_tensors[name]
        assert e["shape"] == shape, name
        q = _core.quantize(_core.type_from_name(e["type"]), x)
        if sha256(q) == e["sha256"]:
            matched[e["type"]] += 1
        else:
            mismatched[e["type"]].append(name)
    # Every type the file uses (F32, Q4_0, Q5_0, Q8_0, Q4_K, Q6_K) must be reproduced bit for bit.
    assert not mismatched, {t: (len(v), v[:3]) for t, v in mismatched.items()}
    assert sum(matched.values()) == len(expect)
