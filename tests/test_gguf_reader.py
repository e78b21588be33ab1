"""The C++ GGUF reader against the `gguf` package (the oracle) on the real SmolLM2 model."""
import time

import gguf
import numpy as np
import pytest

from pyllm import _core
from pyllm.gguf import GGUFFile


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
        value = md[key]
        if isinstance(value, np.ndarray):  # numeric arrays of more than 1024 elements
            assert len(value) > 1024 and not value.flags.writeable, key
            value = value.tolist()
        assert value == field.contents(), key
        assert type(value) is type(field.contents()), key
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


# --- metadata memory (issue 12 row 8: arrays took ~9x their file size, a 50 MB file 455 MB)

def _write_array_file(path, values: np.ndarray, elem_type: int) -> None:
    """A GGUF v3 file with no tensors and one array key 'big' (written by hand: the layout is
    the format's, independent of pyllm's writer)."""
    import struct
    key = b"big"
    with open(path, "wb") as f:
        f.write(b"GGUF" + struct.pack("<IQQ", 3, 0, 2))
        f.write(struct.pack("<Q", len(key)) + key + struct.pack("<IIQ", 9, elem_type, len(values)))
        f.write(values.tobytes())
        f.write(struct.pack("<Q", 5) + b"small" + struct.pack("<IIQ", 9, 5, 3) + struct.pack("<3i", 1, -2, 3))


def test_big_numeric_metadata_array_is_a_compact_numpy_array(tmp_path):
    values = np.arange(-5000, 5000, dtype=np.int32)
    _write_array_file(tmp_path / "a.gguf", values, 5)   # 5: INT32
    with GGUFFile(tmp_path / "a.gguf") as f:
        big = f.metadata["big"]
        assert isinstance(big, np.ndarray) and big.dtype == np.int32 and not big.flags.writeable
        assert np.array_equal(big, values) and f.metadata_types["big"] == "ARRAY[INT32]"
        assert f.metadata["small"] == [1, -2, 3]   # short arrays stay lists
    assert np.array_equal(big, values)            # a copy: valid after close
    for elem_type, dtype in ((0, np.uint8), (6, np.float32), (7, np.bool_), (11, np.int64), (12, np.float64)):
        v = (np.arange(2000) % 2).astype(dtype)
        _write_array_file(tmp_path / "b.gguf", v, elem_type)
        with GGUFFile(tmp_path / "b.gguf") as f:
            assert f.metadata["big"].dtype == dtype and np.array_equal(f.metadata["big"], v)


def test_big_metadata_array_memory(tmp_path):
    """Peak resident memory of reading a 50 MB INT32 metadata array, in a fresh process: the
    mapped file's pages (the reader validates them) plus one copy, 2.0x the file size measured
    here, bound at 2.5x; as Python ints it took 455 MB more (~10x with the mapping)."""
    import subprocess
    import sys
    n = 12_500_000
    _write_array_file(tmp_path / "big.gguf", np.arange(n, dtype=np.int32) * 1000, 5)
    script = (
        "import re, sys\n"
        "from pyllm.gguf import GGUFFile\n"
        "def hwm(): return int(re.search(r'VmHWM:\\s+(\\d+)', open('/proc/self/status').read()).group(1)) * 1024\n"
        "before = hwm()\n"
        "f = GGUFFile(sys.argv[1]); md = f.metadata; assert len(md['big']) == %d\n"
        "print(hwm() - before)\n" % n)
    out = subprocess.run([sys.executable, "-c", script, str(tmp_path / "big.gguf")], capture_output=True,
                         text=True, check=True)
    grew = int(out.stdout)
    assert grew < 2.5 * 4 * n, f"reading a {4 * n >> 20} MiB array grew the peak by {grew >> 20} MiB"

