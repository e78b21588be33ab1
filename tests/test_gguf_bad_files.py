"""Hostile and broken GGUF files (docs/RELIABILITY.md, "The file"): each must raise pyllm.GGUFError whose
message names the field and the byte offset, never crash. Valid small files written by the `gguf`
package must read back exactly."""
import random
import struct

import gguf
import numpy as np
import pytest

import pyllm
from pyllm import _core
from pyllm.gguf import GGUFFile

# --- a tiny GGUF builder -----------------------------------------------------------------------

# GGUF's value and tensor type ids, from the gguf package (the format's own Python constants).
U8, I8, U16, I16, U32, I32, F32, BOOL, STR, ARR, U64, I64, F64 = (int(getattr(gguf.GGUFValueType, n)) for n in (
    "UINT8 INT8 UINT16 INT16 UINT32 INT32 FLOAT32 BOOL STRING ARRAY UINT64 INT64 FLOAT64".split()))
T_F32, T_Q4_0 = int(gguf.GGMLQuantizationType.F32), int(gguf.GGMLQuantizationType.Q4_0)
U64_MAX = 2**64 - 1


def u32(v):
    return struct.pack("<I", v & 0xFFFFFFFF)


def u64(v):
    return struct.pack("<Q", v & U64_MAX)


def gstr(s, length=None):
    b = s.encode() if isinstance(s, str) else s
    return u64(len(b) if length is None else length) + b


def kv(key, vtype, payload):
    return gstr(key) + u32(vtype) + payload


def kv_u32(key, v):
    return kv(key, U32, u32(v))


def arr(elem_type, count, body=b""):
    return u32(elem_type) + u64(count) + body


def ti(name, dims, ttype=T_F32, offset=0, n_dims=None):
    return (gstr(name) + u32(len(dims) if n_dims is None else n_dims) + b"".join(u64(d) for d in dims)
            + u32(ttype) + u64(offset))


def header(n_tensors, n_kv, version=3, magic=b"GGUF"):
    return magic + u32(version) + u64(n_tensors) + u64(n_kv)


def build(kvs=(), tis=None, data=None, n_kv=None, n_tensors=None, version=3, magic=b"GGUF", alignment=32):
    """A file with the given raw KVs and tensor infos (default: one F32 tensor 'w' of 8 elements)."""
    tis = [ti("w", [8])] if tis is None else tis
    out = header(len(tis) if n_tensors is None else n_tensors, len(kvs) if n_kv is None else n_kv, version, magic)
    out += b"".join(kvs) + b"".join(tis)
    out += b"\0" * (-len(out) % alignment)
    return out + (b"\x01" * 32 * len(tis) if data is None else data)


ARCH = kv("general.architecture", STR, gstr("llama"))


def nested(depth, leaf=arr(U8, 1, b"\x07")):
    """A value body of `depth` arrays, each holding the next; the innermost holds one UINT8."""
    return arr(ARR, 1) * (depth - 1) + leaf


def open_bytes(tmp_path, data, name="f.gguf"):
    p = tmp_path / name
    p.write_bytes(data)
    return _core.GGUFReader(str(p))


@pytest.fixture(scope="module")
def writer_file(tmp_path_factory):
    """A small valid file from GGUFWriter whose last tensor ends exactly at the end of the file."""
    p = tmp_path_factory.mktemp("w") / "small.gguf"
    w = gguf.GGUFWriter(str(p), "llama")
    w.add_uint32("llama.block_count", 2)
    w.add_array("tokenizer.ggml.tokens", ["a", "b", "ccc"])
    w.add_tensor("a", np.arange(16, dtype=np.float32).reshape(2, 8))
    w.add_tensor("b", np.arange(8, dtype=np.float32))  # 32 bytes: no padding after it
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return p.read_bytes()


# --- the corpus: (file bytes, words the message must contain) ------------------------------------

HUNDRED = b"\0" * 76  # pads a bare 24-byte header to a 100-byte file

BAD = [
    # 1. empty, 3 bytes, bare header whose counts say there is more
    pytest.param(b"", ["empty", "at byte 0"], id="empty"),
    pytest.param(b"GGU", ["too short"], id="3-bytes"),
    pytest.param(header(1, 1), ["n_tensors", "at byte 8"], id="bare-header"),
    pytest.param(header(0, 1), ["n_kv", "at byte 16"], id="bare-header-kv"),
    pytest.param(b"GGUF\x03\0\0", ["version", "needs 4 bytes"], id="cut-in-version"),
    # 2. magic and version
    pytest.param(build(magic=b"FUGG"), ["magic", "'FUGG'", "at byte 0"], id="magic-FUGG"),
    pytest.param(build(magic=b"GGML"), ["magic", "'GGML'"], id="magic-GGML"),
    pytest.param(build(magic=b"\x9f\x00\xe3\x11"), ["magic", "\\x9f"], id="magic-random"),
    pytest.param(build(magic=b"tjgg"), ["pre-GGUF"], id="magic-legacy-ggjt"),
    pytest.param(build(version=0), ["version 0", "at byte 4"], id="version-0"),
    pytest.param(build(version=1), ["version 1"], id="version-1"),
    pytest.param(build(version=4), ["version 4"], id="version-4"),
    pytest.param(build(version=0x03000000), ["big-endian"], id="version-byte-swapped"),
    # 3. absurd counts in a 100-byte file
    pytest.param(header(0, 2**63) + HUNDRED, ["n_kv", "9223372036854775808"], id="n_kv-2^63"),
    pytest.param(header(0, U64_MAX) + HUNDRED, ["n_kv", str(U64_MAX)], id="n_kv-2^64-1"),
    pytest.param(header(2**63, 0) + HUNDRED, ["n_tensors"], id="n_tensors-2^63"),
    pytest.param(header(U64_MAX, 0) + HUNDRED, ["n_tensors"], id="n_tensors-2^64-1"),
    pytest.param(header(2, 2) + HUNDRED, ["n_tensors", "n_kv"], id="counts-together-too-big"),
    # 4. string and key lengths
    pytest.param(build([gstr("k", U64_MAX) + u32(U8) + b"\0"]), ["metadata key (index 0): length", str(U64_MAX)],
                 id="key-length-max"),
    pytest.param(build([gstr("k", 10**6) + u32(U8) + b"\0"]), ["metadata key", "longer than"], id="key-length-long"),
    pytest.param(build([kv("s", STR, gstr("x", U64_MAX))]), ["metadata 's' (index 0)", "length"],
                 id="string-length-max"),
    pytest.param(build([ARCH, kv("s", STR, gstr("x", 5000))]), ["'s' (index 1)", "longer than"],
                 id="string-length-long"),
    pytest.param(build([kv("s", ARR, arr(STR, 2, gstr("a") + gstr("b", U64_MAX)))]), ["element 1", "length"],
                 id="array-string-length-max"),
    # 5. keys, value types, nesting
    pytest.param(build([ARCH, kv("", U8, b"\0")]), ["key (index 1) is empty"], id="empty-key"),
    pytest.param(build([ARCH, kv_u32("a", 1), kv_u32("a", 2)]), ["duplicate metadata key 'a' (index 2",
                                                                 "first at index 1"], id="duplicate-key"),
    pytest.param(build([kv("k", 13, b"\0" * 8)]), ["unknown value type 13"], id="value-type-13"),
    pytest.param(build([kv("k", 0xFFFFFFFF, b"\0" * 8)]), ["unknown value type 4294967295"], id="value-type-max"),
    pytest.param(build([kv("k", ARR, arr(99, 1, b"\0" * 8))]), ["unknown array element type 99"],
                 id="array-elem-type-99"),
    pytest.param(build([kv(b"\xff\xfe", U8, b"\0")]), ["not valid UTF-8"], id="key-invalid-utf8"),
    pytest.param(build([kv("k", ARR, nested(5000))]), ["nested more than 16"], id="nested-5000-deep"),
    pytest.param(build([kv("k", ARR, nested(17))]), ["nested more than 16"], id="nested-17-deep"),
    pytest.param(build([kv("b", BOOL, b"\x02")]), ["BOOL value 2"], id="bool-2"),
    pytest.param(build([kv("b", ARR, arr(BOOL, 3, b"\x00\x01\x05"))]), ["element 2", "BOOL value 5"],
                 id="bool-array-5"),
    pytest.param(header(0, 1) + kv("k", U64, b"\0" * 4), ["'k'", "needs 8 bytes"], id="value-cut"),
    # 6. array counts whose byte size overflows or exceeds the file
    pytest.param(build([kv("k", ARR, arr(U64, 2**61 + 1, b"\0" * 8))]), ["array count 2305843009213693953"],
                 id="array-u64-count-wraps"),
    pytest.param(build([kv("k", ARR, arr(STR, 2**62, u64(0)))]), ["array count", "STRING"], id="array-str-count"),
    pytest.param(build([kv("k", ARR, arr(ARR, U64_MAX))]), ["array count", "ARRAY"], id="array-nested-count"),
    pytest.param(build([kv("k", ARR, arr(U8, 1000, b"\0" * 10))], tis=[], data=b""), ["array count 1000"],
                 id="array-count-past-end"),
    # 7. general.alignment
    pytest.param(build([kv_u32("general.alignment", 0)]), ["general.alignment is 0"], id="alignment-0"),
    pytest.param(build([kv_u32("general.alignment", 13)]), ["general.alignment is 13"], id="alignment-13"),
    pytest.param(build([kv_u32("general.alignment", 2**31)]), ["general.alignment is 2147483648"],
                 id="alignment-2^31"),
    pytest.param(build([kv("general.alignment", STR, gstr("32"))]), ["general.alignment must be UINT32", "STRING"],
                 id="alignment-string"),
    pytest.param(build([kv("general.alignment", I32, u32(32))]), ["general.alignment must be UINT32", "INT32"],
                 id="alignment-int32"),
    pytest.param(build([kv("general.alignment", U64, u64(32))]), ["general.alignment must be UINT32", "UINT64"],
                 id="alignment-uint64"),
    # 8. tensor names
    pytest.param(build(tis=[ti("x" * 64, [8])]), ["name is 64 bytes", "(index 0)"], id="name-64-bytes"),
    pytest.param(build(tis=[ti("x" * 100000, [8])]), ["name is 100000 bytes"], id="name-100k-bytes"),
    pytest.param(build(tis=[ti(b"bad\xc3\x28", [8])]), ["not valid UTF-8", "bad\\xc3("], id="name-invalid-utf8"),
    pytest.param(build(tis=[ti(b"\xed\xa0\x80", [8])]), ["not valid UTF-8"], id="name-surrogate"),
    pytest.param(build(tis=[ti(b"\xc0\xaf", [8])]), ["not valid UTF-8"], id="name-overlong"),
    pytest.param(build(tis=[ti("", [8])]), ["tensor name (index 0) is empty"], id="name-empty"),
    pytest.param(build(tis=[ti("w", [8]), ti("w", [8], offset=32)]), ["duplicate tensor name 'w' (index 1"],
                 id="name-duplicate"),
    pytest.param(build(tis=[ti("w", [8]), gstr("v", U64_MAX)]), ["tensor name (index 1): length"],
                 id="name-length-max"),
    # 9. dimensions
    pytest.param(build(tis=[ti("w", [8, 1, 1, 1, 1])]), ["n_dims is 5"], id="n_dims-5"),
    pytest.param(build(tis=[ti("w", [8], n_dims=0xFFFFFFFF)]), ["n_dims is 4294967295"], id="n_dims-max"),
    pytest.param(build(tis=[ti("w", [], n_dims=0)]), ["n_dims is 0"], id="n_dims-0"),
    pytest.param(build(tis=[ti("w", [8, -2])]), ["ne[1] is negative (-2)"], id="dim-negative"),
    pytest.param(build(tis=[ti("w", [2**32, 2**32])]), ["element count", "overflows"], id="dims-product-overflow"),
    pytest.param(build(tis=[ti("w", [32, 2**31, 2**31, 2**31])]), ["element count", "overflows"],
                 id="dims-product-overflow-4d"),
    pytest.param(build(tis=[ti("w", [8, 0])]), ["ne[1] is zero"], id="dim-zero"),
    # 10. byte size overflows while the element count fits (F32: 4 bytes per element)
    pytest.param(build(tis=[ti("w", [2**31, 2**31])]), ["byte size", "overflows"], id="nbytes-overflow"),
    # 11. row length not a multiple of the block size
    pytest.param(build(tis=[ti("w", [33, 2], T_Q4_0)]), ["ne[0] = 33", "block size 32"], id="q4_0-row-33"),
    # 12. tensor types
    pytest.param(build(tis=[ti("w", [8], ttype=-1)]), ["tensor type id -1"], id="type-minus-1"),
    pytest.param(build(tis=[ti("w", [8], ttype=31)]), ["tensor type id 31"], id="type-31"),
    pytest.param(build(tis=[ti("w", [8], ttype=4)]), ["tensor type id 4"], id="type-4-removed"),
    pytest.param(build(tis=[ti("w", [8], ttype=1000)]), ["tensor type id 1000"], id="type-1000"),
    # 13. offsets
    pytest.param(build(tis=[ti("w", [8], offset=4)], data=b"\0" * 64), ["offset 4", "alignment 32"],
                 id="offset-misaligned"),
    pytest.param(build(tis=[ti("a", [16]), ti("b", [8], offset=32)], data=b"\0" * 96), ["'b' (index 1)", "overlaps",
                                                                                      "'a'"], id="offset-overlap"),
    pytest.param(build(tis=[ti("a", [8], offset=32), ti("b", [16], offset=0)], data=b"\0" * 96),
                 ["overlaps"], id="offset-out-of-order-overlap"),
    pytest.param(build(tis=[ti("a", [8]), ti("b", [8])], data=b"\0" * 64), ["'b' (index 1)", "overlaps"],
                 id="offset-same"),
    pytest.param(build(tis=[ti("w", [8], offset=U64_MAX)]), ["offset 18446744073709551615", "alignment"],
                 id="offset-u64-max"),
    pytest.param(build(tis=[ti("w", [8], offset=2**64 - 32)]), ["past the end"], id="offset-wraps"),
    pytest.param(build(tis=[ti("w", [8], offset=4096)]), ["offset 4096", "past the end"], id="offset-past-end"),
    pytest.param(build(tis=[ti("w", [16])]), ["data of 64 bytes", "past the end"], id="data-past-end"),
    pytest.param(build(tis=[ti("w", [8])], data=b""), ["past the end"], id="no-data-section"),
]


def assert_gguf_error(tmp_path, data, words):
    with pytest.raises(pyllm.GGUFError) as e:
        open_bytes(tmp_path, data)
    msg = str(e.value)
    assert isinstance(e.value, ValueError)
    assert "(at byte " in msg, msg
    for w in words:
        assert w in msg, f"{w!r} not in {msg!r}"
    return msg


@pytest.mark.parametrize("data, words", BAD)
def test_bad_file_raises_gguf_error(tmp_path, data, words):
    assert_gguf_error(tmp_path, data, words)


def test_error_names_the_byte_offset_of_the_field(tmp_path):
    kvs = [ARCH]
    before_type = 24 + len(ARCH) + len(gstr("w")) + 4 + 8  # header, the KV, name, n_dims, ne[0]
    msg = assert_gguf_error(tmp_path, build(kvs, tis=[ti("w", [8], ttype=77)]), ["tensor 'w' (index 0)"])
    assert msg.endswith(f"(at byte {before_type})")
    assert str(tmp_path / "f.gguf") in msg


def test_truncated_by_one_byte(tmp_path, writer_file):
    assert open_bytes(tmp_path, writer_file).tensors[-1]["name"] == "b"
    assert_gguf_error(tmp_path, writer_file[:-1], ["tensor 'b' (index 1)", "past the end"])


def test_every_prefix_of_a_valid_file_is_rejected(tmp_path, writer_file):
    for n in range(len(writer_file)):
        with pytest.raises(pyllm.GGUFError):
            open_bytes(tmp_path, writer_file[:n])


def test_random_byte_corruption_never_crashes(tmp_path, writer_file):
    rng = random.Random(1234)
    opened = 0
    for _ in range(1500):
        data = bytearray(writer_file)
        for _ in range(rng.randint(1, 4)):
            pos = rng.randrange(len(data))
            data[pos] = rng.choice([0, 0xFF, rng.randrange(256), data[pos] ^ (1 << rng.randrange(8))])
        try:
            r = open_bytes(tmp_path, bytes(data))
        except pyllm.GGUFError as e:
            assert "(at byte " in str(e)
            continue
        opened += 1  # corrupted tensor data or string contents: still a well-formed file
        r.metadata, r.metadata_types, r.tensors
        for t in r.tensors:
            assert len(r.tensor_data(t["name"])) == t["nbytes"]
    assert 0 < opened < 1500


# --- files that are unusual but valid --------------------------------------------------------------


def test_nesting_of_16_arrays_is_accepted(tmp_path):
    r = open_bytes(tmp_path, build([kv("k", ARR, nested(16))]))
    v = r.metadata["k"]
    for _ in range(15):
        assert isinstance(v, list) and len(v) == 1
        v = v[0]
    assert v == [7]
    assert r.metadata_types["k"] == "ARRAY[" * 15 + "ARRAY[UINT8]" + "]" * 15


def test_a_million_empty_strings_is_accepted(tmp_path):
    n = 10**6
    r = open_bytes(tmp_path, build([kv("k", ARR, arr(STR, n, u64(0) * n))]))
    v = r.metadata["k"]
    assert len(v) == n and v[0] == "" and v[-1] == ""
    assert r.metadata_types["k"] == "ARRAY[STRING]"


def test_names_of_63_bytes_and_out_of_order_tensors_are_accepted(tmp_path):
    name = "é" * 31 + "x"  # 63 bytes of UTF-8
    r = open_bytes(tmp_path, build(tis=[ti(name, [8], offset=32), ti("b", [8], offset=0)], data=bytes(range(64))))
    ts = {t["name"]: t for t in r.tensors}
    assert ts[name]["offset"] == r.data_offset + 32
    assert r.tensor_data(name).tolist() == list(range(32, 64))
    assert r.tensor_data("b").tolist() == list(range(32))


def test_non_utf8_strings_come_back_as_bytes(tmp_path):
    r = open_bytes(tmp_path, build([kv("s", STR, gstr(b"\xff\xfe")),
                                    kv("a", ARR, arr(STR, 2, gstr("ok") + gstr(b"\xc3")))]))
    assert r.metadata["s"] == b"\xff\xfe"
    assert r.metadata["a"] == ["ok", b"\xc3"]


def test_file_without_tensors(tmp_path):
    r = open_bytes(tmp_path, build([ARCH], tis=[], data=b""))
    assert r.tensors == [] and r.metadata == {"general.architecture": "llama"}


def test_big_endian_file_from_gguf_writer(tmp_path):
    p = tmp_path / "be.gguf"
    w = gguf.GGUFWriter(str(p), "llama", endianess=gguf.GGUFEndian.BIG)
    w.add_uint32("llama.block_count", 2)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.close()
    with pytest.raises(pyllm.GGUFError, match="big-endian GGUF files are not supported"):
        _core.GGUFReader(str(p))


def test_io_errors_name_the_path(tmp_path):
    missing = tmp_path / "missing.gguf"
    with pytest.raises(OSError, match="missing.gguf"):
        _core.GGUFReader(str(missing))
    with pytest.raises(OSError, match="directory"):
        _core.GGUFReader(str(tmp_path))
    with pytest.raises(OSError, match="not a regular file"):
        _core.GGUFReader("/dev/null")


# --- valid files written by the gguf package read back exactly ------------------------------------

V = gguf.GGUFValueType
SCALARS = {  # key: (value type, value)
    "t.u8": (V.UINT8, 255), "t.i8": (V.INT8, -128), "t.u16": (V.UINT16, 65535), "t.i16": (V.INT16, -32768),
    "t.u32": (V.UINT32, 2**32 - 1), "t.i32": (V.INT32, -2**31), "t.u64": (V.UINT64, 2**64 - 1),
    "t.i64": (V.INT64, -2**63), "t.f32": (V.FLOAT32, 0.1), "t.f64": (V.FLOAT64, 0.1), "t.bool": (V.BOOL, True),
    "t.false": (V.BOOL, False), "t.str": (V.STRING, "héllo ✓ 🦙"), "t.empty": (V.STRING, ""),
}
ARRAYS = {  # key: (value, expected type name)
    "a.ints": ([1, -2, 3], "ARRAY[INT32]"),
    "a.floats": ([0.5, -1.25, 3.0], "ARRAY[FLOAT32]"),
    "a.bools": ([True, False, True], "ARRAY[BOOL]"),
    "a.strs": (["x", "", "yz ✓"], "ARRAY[STRING]"),
    "a.nested": ([[1, 2], [3, 4, 5]], "ARRAY[ARRAY[INT32]]"),
    "a.nested3": ([[[1.5], [2.5, 3.5]], [[4.5]]], "ARRAY[ARRAY[ARRAY[FLOAT32]]]"),
    "a.mixed": ([[1, 2], ["a"]], "ARRAY[ARRAY]"),
}


@pytest.fixture(scope="module")
def written(tmp_path_factory):
    """A file from GGUFWriter with every scalar type, arrays, and several tensor types."""
    p = tmp_path_factory.mktemp("valid") / "valid.gguf"
    rng = np.random.default_rng(0)
    w = gguf.GGUFWriter(str(p), "llama")
    w.add_custom_alignment(64)
    for key, (vtype, value) in SCALARS.items():
        w.add_key_value(key, value, vtype)
    for key, (value, _) in ARRAYS.items():
        w.add_array(key, value)
    sources = {}
    f32 = rng.standard_normal((3, 64)).astype(np.float32)
    w.add_tensor("f32", f32)
    sources["f32"] = f32
    f16 = rng.standard_normal((2, 5, 32)).astype(np.float16)
    w.add_tensor("f16", f16)
    sources["f16"] = f16.astype(np.float32)
    for name, qtype in [("q4_0", gguf.GGMLQuantizationType.Q4_0), ("q8_0", gguf.GGMLQuantizationType.Q8_0),
                        ("q4_1", gguf.GGMLQuantizationType.Q4_1)]:
        x = rng.standard_normal((4, 256)).astype(np.float32)
        w.add_tensor(name, _core.quantize(int(qtype), x), raw_dtype=qtype)
    # Q4_K: the reader only needs the layout (144 bytes per 256), so any bytes will do.
    w.add_tensor("q4_k", rng.integers(0, 256, (4, 144), dtype=np.uint8), raw_dtype=gguf.GGMLQuantizationType.Q4_K)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return p, sources


def test_gguf_writer_file_reads_back(written):
    path, _ = written
    r = _core.GGUFReader(str(path))
    md, types = r.metadata, r.metadata_types
    assert r.alignment == 64 and types["general.alignment"] == "UINT32"
    assert md["general.architecture"] == "llama"
    for key, (vtype, value) in SCALARS.items():
        want = float(np.float32(value)) if vtype == V.FLOAT32 else value
        assert md[key] == want and type(md[key]) is type(value), key
        assert types[key] == vtype.name, key
    for key, (value, tname) in ARRAYS.items():
        assert md[key] == value, key
        assert types[key] == tname, key


def test_gguf_writer_tensors_match_gguf_reader(written):
    path, sources = written
    oracle = gguf.GGUFReader(path)
    r = _core.GGUFReader(str(path))
    assert r.data_offset == oracle.data_offset
    assert [t["name"] for t in r.tensors] == [t.name for t in oracle.tensors]
    for t, o in zip(r.tensors, oracle.tensors):
        assert (t["type"], t["shape"], t["nbytes"], t["offset"]) == \
               (int(o.tensor_type), [int(x) for x in o.shape], int(o.n_bytes), int(o.data_offset))
        assert t["offset"] % 64 == 0
        assert r.tensor_data(t["name"]).tobytes() == np.ascontiguousarray(o.data).tobytes()

    with GGUFFile(path) as f:
        for name, src in sources.items():
            np.testing.assert_array_equal(f.tensor_array(name), src)
        for o in oracle.tensors:
            if o.name in ("q4_0", "q8_0", "q4_1"):
                got = f.tensor_array(o.name)
                assert got.shape == (4, 256)
                np.testing.assert_array_equal(got, gguf.quants.dequantize(o.data, o.tensor_type).reshape(4, 256))
