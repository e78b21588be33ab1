"""`pyllm quantize`: bit-exact round-to-nearest against llama.cpp's files, its per-tensor mixes,
files that read back with the `gguf` package and load in pyllm, and the failure cases of
docs/RELIABILITY.md case 26 (same path, unwritable directory, full disk, Ctrl-C, NaN): non-zero exit,
input untouched, no partial output."""
import errno
import hashlib
import os
import re
import stat
import tempfile

import gguf
from pathlib import Path

import numpy as np
import pytest

import pyllm.quantize as pq
import pyllm.quantize.pipeline as pipeline
from pyllm import _core
from pyllm.errors import QuantizeError
from pyllm.gguf import GGUFFile, OutTensor, write_gguf
from pyllm.quantize import QuantizeOptions, TypeOptions, quantize_file


def file_sha(path) -> str:
    return hashlib.sha256(open(path, "rb").read()).hexdigest()


def tensor_hashes(path) -> dict:
    r = gguf.GGUFReader(str(path))
    return {t.name: (t.tensor_type.name, hashlib.sha256(bytes(t.data)).hexdigest()) for t in r.tensors}


# ---------------------------------------------------------------------------------------------
# Synthetic models (fast): a small llama with float weights, any metadata we like
# ---------------------------------------------------------------------------------------------

def write_model(path, tensors: dict, metadata: list | None = None, n_layer=2):
    """tensors: name -> float32 numpy array (numpy order: rows first)."""
    md = [("general.architecture", "STRING", "llama"), ("llama.block_count", "UINT32", n_layer),
          ("llama.attention.head_count", "UINT32", 4), ("llama.attention.head_count_kv", "UINT32", 2)]
    md += metadata or []
    out = [OutTensor(n, list(reversed(a.shape)), 0, a.nbytes, (lambda a=a: np.ascontiguousarray(a, np.float32)))
           for n, a in tensors.items()]
    with open(path, "wb") as f:
        write_gguf(f, md, out, 32)
    return path


def small_tensors(seed=0, n_embd=64, n_ff=96, n_layer=2, n_vocab=40):
    rng = np.random.default_rng(seed)
    t = {"token_embd.weight": rng.standard_normal((n_vocab, n_embd)), "output_norm.weight": np.ones(n_embd)}
    for l in range(n_layer):
        p = f"blk.{l}."
        t[p + "attn_norm.weight"] = np.ones(n_embd)
        t[p + "ffn_norm.weight"] = np.ones(n_embd)
        for m, shape in (("attn_q", (n_embd, n_embd)), ("attn_k", (32, n_embd)), ("attn_v", (32, n_embd)),
                         ("attn_output", (n_embd, n_embd)), ("ffn_gate", (n_ff, n_embd)), ("ffn_up", (n_ff, n_embd)),
                         ("ffn_down", (n_embd, n_ff))):
            t[p + m + ".weight"] = rng.standard_normal(shape) * 0.1
    return {k: v.astype(np.float32) for k, v in t.items()}


@pytest.fixture
def small_model(tmp_path):
    return write_model(tmp_path / "small.gguf", small_tensors())


# ---------------------------------------------------------------------------------------------
# Bit-exact with llama.cpp on the real model
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("ftype", ["q4_0", "q8_0", "q4_k_m"])
def test_rtn_reproduces_llama_cpp_files(ftype, smollm2_path, fixture_json, tmp_path):
    # llama.cpp made these from the same weights (the shipped Q4_1 dequantized); every tensor's
    # type and bytes must come out the same, Q4_K_M's per-tensor mix and fallbacks included.
    expect = fixture_json("requantized_tensor_sha256.json")[ftype]
    out = tmp_path / f"{ftype}.gguf"
    before = file_sha(smollm2_path)
    quantize_file(smollm2_path, out, ftype.upper(), QuantizeOptions(allow_requantize=True))
    got = tensor_hashes(out)
    assert set(got) == set(expect)
    wrong_type = {n for n, (t, _) in got.items() if t != expect[n]["type"]}
    wrong_data = {n for n, (_, h) in got.items() if h != expect[n]["sha256"]}
    assert not wrong_type and not wrong_data, (sorted(wrong_type)[:5], sorted(wrong_data)[:5])
    assert file_sha(smollm2_path) == before


def test_output_reads_back_and_loads(smollm2_path, tmp_path):
    out = tmp_path / "q8.gguf"
    quantize_file(smollm2_path, out, "q8_0", QuantizeOptions(allow_requantize=True))
    src, dst = GGUFFile(smollm2_path), GGUFFile(out)
    # Every metadata key survives with its type, except what quantizing changes.
    changed = {"general.file_type"}
    for key, vtype in src.metadata_types.items():
        if key not in changed:
            assert dst.metadata_types[key] == vtype, key
            assert np.array_equal(dst.metadata[key], src.metadata[key]), key  # big arrays: numpy
    assert dst.metadata["general.file_type"] == 7
    assert dst.metadata["pyllm.quantize.method"] == "rtn" and dst.metadata["pyllm.quantize.type"] == "Q8_0"
    r = gguf.GGUFReader(str(out))
    assert r.fields["general.file_type"].contents() == 7
    assert {t.name for t in r.tensors} == set(src.tensors)
    # It runs, and agrees with the model it came from (Q8_0 of Q4_1 weights is nearly lossless).
    import pyllm
    text = (Path(__file__).parent / "data" / "wikitext_head.txt").read_text(encoding="utf-8")
    with pyllm.Model(smollm2_path, n_ctx=128) as a, pyllm.Model(out, n_ctx=128) as b:
        ids = a.tokenize(text)[:96]  # real text: arbitrary ids make near-ties everywhere
        la, lb = a.logits(ids), b.logits(ids)
    assert np.isfinite(lb).all()
    assert (la.argmax(-1) == lb.argmax(-1)).mean() >= 0.9


def test_mix_fallbacks_for_rows_not_multiple_of_256(smollm2_path):
    # 576-wide rows cannot hold 256-blocks: llama.cpp falls back per K type.
    md, tensors = GGUFFile(smollm2_path).metadata, GGUFFile(smollm2_path).tensors
    expect = {"Q6_K": "Q8_0", "Q4_K_M": "Q5_0", "Q5_K_S": "Q5_1", "Q3_K_S": "Q4_0", "Q2_K": "Q4_0"}
    for ftype, fallback in expect.items():
        types = pq.choose_types(tensors, md, pq.file_type(ftype), TypeOptions(pure=True))
        assert pq.type_name(types["blk.3.attn_q.weight"]) == fallback, ftype
        assert pq.type_name(types["blk.3.attn_norm.weight"]) == "F32"


def test_requantize_refused_without_flag(smollm2_path, tmp_path):
    out = tmp_path / "x.gguf"
    with pytest.raises(QuantizeError, match=r"already quantized.*Q4_1.*--allow-requantize"):
        quantize_file(smollm2_path, out, "q4_0")
    assert os.listdir(tmp_path) == []


# ---------------------------------------------------------------------------------------------
# Types and options
# ---------------------------------------------------------------------------------------------

def test_type_names_case_insensitive_and_aliases():
    assert pq.file_type("q4_k_m").name == "Q4_K_M"
    assert pq.file_type("Q4_K").name == "Q4_K_M"   # llama-quantize's alias
    assert pq.file_type(" bf16 ").ftype == 32


def test_unknown_type_lists_valid_names(small_model, tmp_path):
    with pytest.raises(QuantizeError) as e:
        quantize_file(small_model, tmp_path / "o.gguf", "Q4_9")
    assert "Q4_9" in str(e.value) and "Q4_K_M" in str(e.value) and "Q8_0" in str(e.value)
    rc = pq.main([str(small_model), str(tmp_path / "o.gguf"), "q4_9"])
    assert rc == 1 and not (tmp_path / "o.gguf").exists()


def test_help_lists_types_with_bits_per_weight(capsys):
    with pytest.raises(SystemExit) as e:
        pq.main(["--help"])
    assert e.value.code == 0
    text = capsys.readouterr().out
    assert re.search(r"Q4_0\s+4\.500 bpw", text) and re.search(r"Q8_0\s+8\.500 bpw", text)
    for name in ("Q4_K_M", "Q4_K_S", "Q5_K_M", "Q3_K_M", "Q2_K", "BF16", "--method", "--calib"):
        assert name in text


def test_dry_run_prints_types_and_writes_nothing(smollm2_path, tmp_path, capsys):
    out = tmp_path / "never.gguf"
    assert pq.main([str(smollm2_path), str(out), "q4_k_m", "--dry-run"]) == 0
    text = capsys.readouterr().out
    assert re.search(r"blk\.0\.attn_v\.weight\s+Q8_0", text)
    assert re.search(r"blk\.3\.ffn_down\.weight\s+Q4_K", text)
    assert "would write" in text and "MiB" in text
    assert os.listdir(tmp_path) == []


def test_overrides(small_model):
    md, tensors = GGUFFile(small_model).metadata, GGUFFile(small_model).tensors
    ft = pq.file_type("Q4_0")
    plain = pq.choose_types(tensors, md, ft, TypeOptions())
    # Tied embeddings: llama.cpp gives token_embd the output tensor's treatment: Q6_K, which
    # falls back to Q8_0 because 64-wide rows do not hold 256-blocks.
    assert pq.type_name(plain["token_embd.weight"]) == "Q8_0"
    assert pq.type_name(plain["blk.1.ffn_down.weight"]) == "Q4_0"
    pure = pq.choose_types(tensors, md, ft, TypeOptions(pure=True))
    assert pq.type_name(pure["token_embd.weight"]) == "Q4_0"
    opts = TypeOptions(tensor_types=[(re.compile(r"ffn_down"), pq.tensor_type("q8_0"))],
                       token_embedding_type=pq.tensor_type("f16"))
    over = pq.choose_types(tensors, md, ft, opts)
    assert pq.type_name(over["blk.0.ffn_down.weight"]) == "Q8_0"
    assert pq.type_name(over["blk.0.ffn_up.weight"]) == "Q4_0"
    assert pq.type_name(over["token_embd.weight"]) == "F16"
    assert pq.type_name(over["output_norm.weight"]) == "F32"
    with pytest.raises(QuantizeError, match="valid tensor types"):
        pq.tensor_type("Q9_9")


def test_leave_and_set_output_tensor(tmp_path):
    t = small_tensors()
    t["output.weight"] = t["token_embd.weight"] * 0.5
    path = write_model(tmp_path / "untied.gguf", t)
    md, tensors = GGUFFile(path).metadata, GGUFFile(path).tensors
    ft = pq.file_type("Q4_0")
    assert pq.type_name(pq.choose_types(tensors, md, ft, TypeOptions())["output.weight"]) == "Q8_0"
    assert pq.type_name(pq.choose_types(tensors, md, ft, TypeOptions(leave_output_tensor=True))["output.weight"]) == "F32"
    opts = TypeOptions(output_tensor_type=pq.tensor_type("q5_1"))
    assert pq.type_name(pq.choose_types(tensors, md, ft, opts)["output.weight"]) == "Q5_1"


def test_metadata_of_every_type_round_trips(tmp_path):
    md = [("t.u8", "UINT8", 200), ("t.i8", "INT8", -100), ("t.u16", "UINT16", 60000), ("t.i16", "INT16", -30000),
          ("t.u32", "UINT32", 4000000000), ("t.i32", "INT32", -2000000000), ("t.f32", "FLOAT32", 0.5),
          ("t.bool", "BOOL", True), ("t.str", "STRING", "héllo"), ("t.u64", "UINT64", 2**63 + 5),
          ("t.i64", "INT64", -2**62), ("t.f64", "FLOAT64", 1e-300), ("t.arr_i32", "ARRAY[INT32]", [1, -2, 3]),
          ("t.arr_str", "ARRAY[STRING]", ["a", "", "ü"]), ("t.arr_empty", "ARRAY[FLOAT32]", []),
          ("t.nested", "ARRAY[ARRAY[INT16]]", [[1, 2], [3]])]
    src = write_model(tmp_path / "md.gguf", small_tensors(), md)
    out = tmp_path / "md-q8.gguf"
    quantize_file(src, out, "q8_0")
    a, b = GGUFFile(src), GGUFFile(out)
    for key, vtype, value in md:
        assert b.metadata_types[key] == a.metadata_types[key] == vtype, key
        assert b.metadata[key] == a.metadata[key], key
    r = gguf.GGUFReader(str(out))  # and the reference reader agrees
    assert r.fields["t.str"].contents() == "héllo" and r.fields["t.u64"].contents() == 2**63 + 5


def test_float_output_does_not_need_allow_requantize(small_model, tmp_path):
    q = tmp_path / "q.gguf"
    quantize_file(small_model, q, "q8_0")
    back = tmp_path / "f.gguf"
    quantize_file(q, back, "f32")       # dequantizing loses nothing: allowed
    with pytest.raises(QuantizeError, match="allow-requantize"):
        quantize_file(q, tmp_path / "q4.gguf", "q4_0")
    assert GGUFFile(back).tensors["blk.0.attn_q.weight"]["type_name"] == "F32"


# ---------------------------------------------------------------------------------------------
# Failure cases: docs/RELIABILITY.md case 26
# ---------------------------------------------------------------------------------------------

def test_output_equal_to_input_refused(small_model, tmp_path):
    before = file_sha(small_model)
    with pytest.raises(QuantizeError, match="is the input"):
        quantize_file(small_model, small_model, "q8_0")
    link = tmp_path / "link.gguf"
    os.symlink(small_model, link)
    with pytest.raises(QuantizeError, match="is the input"):
        quantize_file(small_model, link, "q8_0")
    hard = tmp_path / "hard.gguf"
    os.link(small_model, hard)
    with pytest.raises(QuantizeError, match="is the input"):
        quantize_file(small_model, hard, "q8_0")
    assert pq.main([str(small_model), str(small_model), "q8_0"]) == 1
    assert file_sha(small_model) == before
    assert sorted(os.listdir(tmp_path)) == ["hard.gguf", "link.gguf", "small.gguf"]


def test_unwritable_directory(small_model, tmp_path, monkeypatch):
    d = tmp_path / "ro"
    d.mkdir()
    d.chmod(0o555)
    try:
        if os.geteuid() != 0:  # root writes anyway; the simulated case below covers it
            with pytest.raises(QuantizeError, match="cannot create the output"):
                quantize_file(small_model, d / "o.gguf", "q8_0")
        def refuse(*a, **k):
            raise PermissionError(errno.EACCES, "Permission denied")
        monkeypatch.setattr(tempfile, "mkstemp", refuse)
        with pytest.raises(QuantizeError, match="cannot create the output.*Permission denied"):
            quantize_file(small_model, d / "o.gguf", "q8_0")
        assert pq.main([str(small_model), str(d / "o.gguf"), "q8_0"]) == 1
        assert os.listdir(d) == []
    finally:
        d.chmod(0o755)


def test_full_disk_leaves_old_output_and_no_partial_file(small_model, tmp_path, monkeypatch):
    out = tmp_path / "out.gguf"
    out.write_bytes(b"previous contents")
    real = pipeline.write_gguf

    def write_then_fail(f, *a, **k):
        f.write(b"GGUF" + b"\0" * 1000)
        raise OSError(errno.ENOSPC, "No space left on device")
    monkeypatch.setattr(pipeline, "write_gguf", write_then_fail)
    with pytest.raises(OSError, match="No space"):
        quantize_file(small_model, out, "q8_0")
    assert out.read_bytes() == b"previous contents"
    assert sorted(os.listdir(tmp_path)) == ["out.gguf", "small.gguf"]
    monkeypatch.setattr(pipeline, "write_gguf", real)


def test_ctrl_c_half_way_leaves_nothing(tmp_path, monkeypatch):
    # 8 layers: more tensors than the 2 workers convert ahead (16 each), so the interrupt is
    # seen with most of the work still to do.
    small_model = write_model(tmp_path / "small.gguf", small_tensors(n_layer=8))
    before = file_sha(small_model)

    class Interrupting:
        calls = 0
        interrupt_at = 5
        def __getattr__(self, name):
            return getattr(_core, name)
        def convert_rows(self, *a, **k):
            Interrupting.calls += 1
            if Interrupting.calls == Interrupting.interrupt_at:
                raise KeyboardInterrupt
            return _core.convert_rows(*a, **k)
    monkeypatch.setattr(pipeline, "_core", Interrupting())
    Interrupting.interrupt_at = -1  # count the conversions of a whole run
    two_threads = QuantizeOptions(threads=2)  # so at most 32 conversions run ahead
    quantize_file(small_model, tmp_path / "full.gguf", "q4_0", two_threads)
    os.unlink(tmp_path / "full.gguf")
    total, Interrupting.calls, Interrupting.interrupt_at = Interrupting.calls, 0, 5
    with pytest.raises(KeyboardInterrupt):
        quantize_file(small_model, tmp_path / "o.gguf", "q4_0", two_threads)
    # Tensors are converted a few ahead on worker threads: those already started finish, the
    # rest are dropped.
    assert total >= 70 and 5 <= Interrupting.calls <= 5 + 32
    Interrupting.calls = 0
    assert pq.main([str(small_model), str(tmp_path / "o.gguf"), "q4_0"]) == 130
    assert sorted(os.listdir(tmp_path)) == ["small.gguf"]
    assert file_sha(small_model) == before


def test_nan_in_source_refused_with_tensor_name(tmp_path):
    t = small_tensors()
    t["blk.1.ffn_up.weight"][3, 7] = np.nan
    src = write_model(tmp_path / "nan.gguf", t)
    with pytest.raises(QuantizeError, match=r"blk\.1\.ffn_up\.weight.*nan.*row 3, column 7"):
        quantize_file(src, tmp_path / "o.gguf", "q4_0")
    t["blk.1.ffn_up.weight"][3, 7] = np.inf
    src = write_model(tmp_path / "inf.gguf", t)
    assert pq.main([str(src), str(tmp_path / "o.gguf"), "q8_0"]) == 1
    assert sorted(os.listdir(tmp_path)) == ["inf.gguf", "nan.gguf"]


def test_nan_in_a_copied_tensor_is_refused_too(tmp_path):
    # Norm weights are copied, not quantized; a NaN there still must not reach an output file.
    t = small_tensors()
    t["blk.0.ffn_norm.weight"][5] = np.nan
    src = write_model(tmp_path / "nan.gguf", t)
    with pytest.raises(QuantizeError, match=r"blk\.0\.ffn_norm\.weight.*nan.*row 0, column 5"):
        quantize_file(src, tmp_path / "o.gguf", "q8_0")
    assert sorted(os.listdir(tmp_path)) == ["nan.gguf"]


def test_command_line_options(small_model, tmp_path, capsys):
    out = tmp_path / "o.gguf"
    assert pq.main([str(small_model), str(out), "Q4_0", "--tensor-type", "no-equals-sign"]) == 1
    assert pq.main([str(small_model), str(out), "Q4_0", "--tensor-type", "([=q8_0"]) == 1
    assert pq.main([str(small_model), str(out), "Q4_0", "--block", "100"]) == 1
    assert "REGEX=TYPE" in capsys.readouterr().err
    assert not out.exists()
    assert pq.main([str(small_model), str(out), "q4_0", "--tensor-type", r"blk\.1\..*=q5_1", "--pure",
                    "--threads", "1"]) == 0
    types = {n: t["type_name"] for n, t in GGUFFile(out).tensors.items()}
    assert types["blk.1.ffn_up.weight"] == "Q5_1" and types["blk.0.ffn_up.weight"] == "Q4_0"
    assert types["token_embd.weight"] == "Q4_0" and types["output_norm.weight"] == "F32"
    assert GGUFFile(out).metadata["general.file_type"] == 2


# ---------------------------------------------------------------------------------------------
# What the output path may be (issue 12, row 2: `pyllm quantize IN /dev/null Q4_0` as root
# replaced the device node with a regular file; FIFOs and symlinks were replaced too)
# ---------------------------------------------------------------------------------------------

def test_output_device_node_is_refused_and_untouched(small_model):
    before = os.stat("/dev/null")
    with pytest.raises(QuantizeError, match="character device"):
        quantize_file(small_model, "/dev/null", "q8_0")
    after = os.stat("/dev/null")
    assert stat.S_ISCHR(after.st_mode) and after.st_ino == before.st_ino


def test_output_fifo_and_directory_are_refused(small_model, tmp_path):
    fifo = tmp_path / "out.fifo"
    os.mkfifo(fifo)
    with pytest.raises(QuantizeError, match="FIFO"):
        quantize_file(small_model, fifo, "q8_0")
    assert stat.S_ISFIFO(os.lstat(fifo).st_mode)
    with pytest.raises(QuantizeError, match="directory"):
        quantize_file(small_model, tmp_path, "q8_0")
    # A symlink to a FIFO is judged by its target.
    link = tmp_path / "link.gguf"
    link.symlink_to(fifo)
    with pytest.raises(QuantizeError, match="FIFO"):
        quantize_file(small_model, link, "q8_0")
    assert link.is_symlink()


def test_output_symlink_is_followed(small_model, tmp_path):
    target_dir = tmp_path / "models"
    target_dir.mkdir()
    target = target_dir / "real.gguf"
    target.write_bytes(b"old")
    link = tmp_path / "link.gguf"
    link.symlink_to(target)
    quantize_file(small_model, link, "q8_0")
    assert link.is_symlink() and os.readlink(link) == str(target)  # the link stays a link
    assert target.read_bytes()[:4] == b"GGUF"                      # its target got the output
    assert sorted(p.name for p in target_dir.iterdir()) == ["real.gguf"]  # no temporary left


def test_file_with_no_tensors_is_an_error(tmp_path):
    # Issue 12, row 10: quantizing a file with no tensors exited 0 with an empty output.
    src = write_model(tmp_path / "empty.gguf", {})
    with pytest.raises(QuantizeError, match="no tensors"):
        quantize_file(src, tmp_path / "out.gguf", "q8_0")
    assert not (tmp_path / "out.gguf").exists()


def test_k_quant_fallbacks_are_reported_on_stderr(small_model, tmp_path, capsys):
    """Rows of 64 and 96 weights cannot hold Q4_K's 256-blocks: the tensors fall back (Q5_0, or
    Q8_0 where llama.cpp's mix picks Q6_K) and `pyllm quantize` says so on stderr, as
    llama-quantize does, instead of silently writing a file of more bits per weight (issue 12)."""
    out = tmp_path / "o.gguf"
    assert pq.main([str(small_model), str(out), "Q4_K_M", "--threads", "1"]) == 0
    err = capsys.readouterr().err
    types = {n: t["type_name"] for n, t in GGUFFile(out).tensors.items()}
    quantized = sum(1 for t in types.values() if t not in ("F32", "F16"))
    # 7 matrices x 2 layers fall back; the tied token embedding is the output matrix, for which
    # the mix itself picks Q8_0 when rows do not fit (as llama.cpp counts it: not a fallback).
    assert quantized == 15 and types["token_embd.weight"] == "Q8_0"
    assert sum(1 for t in types.values() if t in ("Q5_0", "Q8_0")) == 15
    assert "warning: 14 of 15 quantized tensors" in err
    assert "12 Q4_K -> Q5_0 (4.50 -> 5.50 bpw)" in err and "2 Q6_K -> Q8_0 (6.56 -> 8.50 bpw)" in err
    report = quantize_file(small_model, tmp_path / "p.gguf", "Q4_K_M")
    assert len(report.fallbacks) == 14 and report.fallbacks["blk.0.ffn_up.weight"] == ("Q4_K", "Q5_0")
    # Types whose blocks fit every row say nothing (without --pure, Q4_0's mix puts the output
    # matrix in Q6_K, which falls back too, as in llama.cpp).
    assert pq.main([str(small_model), str(tmp_path / "q.gguf"), "Q4_0", "--pure", "--threads", "1"]) == 0
    assert "warning" not in capsys.readouterr().err
