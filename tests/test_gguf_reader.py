"""The C++ GGUF reader against the `gguf` package (the oracle) on the real SmolLM2 model."""
import time

import gguf
import numpy as np
import pytest

from pyllm import _core
from pyllm.gguffile import GGUFFile


@pytest.fixture(scope="module")
def oracle(smollm2_path):
    return gguf.GGUFReader(smollm2_path)  # slow (seconds): once per module


@pytest.fixture(scope="module")
def reader(smollm2_path):
    t0 = time.perf_counter()
    r = _core.GGUFReader(str(smollm2_path))
    print(f"\nGGUFReader open: {(time.perf_counter() - t0) * 1e3:.1f} ms")
    return r


def oracle_type_name(field):
    names = [t.name for t in field.types]
    return names[0] if len(names) == 1 else f"{names[0]}[{names[-1]}]"


def test_header(reader, oracle, smollm2_path):
    assert reader.version == oracle.fields["GGUF.version"].contents() == 3
    assert reader.alignment == oracle.alignment
    assert reader.data_offset == oracle.data_offset
    assert reader.file_size == smollm2_path.stat().st_size
    assert reader.path == str(smollm2_path)


def test_metadata_matches_gguf_package(reader, oracle):
    t0 = time.perf_counter()
    md = reader.metadata
    print(f"\nmetadata dict: {(time.perf_counter() - t0) * 1e3:.1f} ms")
    expected = {k: f for k, f in oracle.fields.items() if not k.startswith("GGUF.")}
    assert list(md) == list(expected)  # same keys, same (file) order
    for key, field in expected.items():
        assert md[key] == field.contents(), key
        assert type(md[key]) is type(field.contents()), key
        assert reader.metadata_types[key] == oracle_type_name(field), key
    assert len(md["tokenizer.ggml.tokens"]) == 49152
    assert len(md["tokenizer.ggml.merges"]) == 48900
    assert reader.metadata is md  # built once


def test_tensor_infos_match_gguf_package(reader, oracle):
    ours = reader.tensors
    assert len(ours) == len(oracle.tensors) == 272
    for t, o in zip(ours, oracle.tensors):
        assert t["name"] == o.name
        assert t["type"] == int(o.tensor_type)
        assert t["type_name"] == o.tensor_type.name
        assert t["shape"] == [int(x) for x in o.shape]
        assert t["n_elements"] == int(o.n_elements)
        assert t["nbytes"] == int(o.n_bytes)
        assert t["offset"] == int(o.data_offset)


@pytest.mark.parametrize("name", ["token_embd.weight", "blk.0.attn_norm.weight", "blk.7.ffn_down.weight",
                                  "output_norm.weight"])
def test_tensor_data_matches_gguf_package(reader, oracle, name):
    o = next(t for t in oracle.tensors if t.name == name)
    data = reader.tensor_data(name)
    assert data.dtype == np.uint8 and data.ndim == 1
    assert not data.flags.writeable
    assert data.tobytes() == np.ascontiguousarray(o.data).tobytes()


def test_tensor_data_outlives_reader(smollm2_path):
    r = _core.GGUFReader(str(smollm2_path))
    view = r.tensor_data("output_norm.weight")
    first = view[:64].copy()
    r.close()
    assert r.closed
    del r
    assert np.array_equal(view[:64], first)  # the view still owns the mapping
    with pytest.raises(ValueError):
        view[0] = 1


def test_closed_reader_raises(smollm2_path):
    with _core.GGUFReader(str(smollm2_path)) as r:
        assert r.version == 3
    with pytest.raises(ValueError, match="closed"):
        r.metadata
    with pytest.raises(ValueError, match="closed"):
        r.tensor_data("output_norm.weight")
    assert r.path == str(smollm2_path)


def test_missing_tensor_is_key_error(reader):
    with pytest.raises(KeyError):
        reader.tensor_data("no.such.tensor")


@pytest.mark.parametrize("name", ["blk.0.attn_norm.weight", "blk.3.attn_q.weight", "token_embd.weight"])
def test_wrapper_tensor_array_matches_gguf_dequantize(smollm2_path, oracle, name):
    o = next(t for t in oracle.tensors if t.name == name)
    with GGUFFile(smollm2_path) as f:
        ours = f.tensor_array(name)
        assert f.architecture == "llama"
        assert f.get("llama.block_count") == 30
        assert f.get("no.such.key", 7) == 7
        assert "272 tensors" in repr(f)
    want = gguf.quants.dequantize(o.data, o.tensor_type)
    assert ours.dtype == np.float32
    assert ours.shape == tuple(reversed([int(x) for x in o.shape]))
    np.testing.assert_array_equal(ours, want.reshape(ours.shape))
