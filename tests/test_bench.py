"""Smoke test of `pyllm bench`: it runs end to end on the real model with tiny settings and reports
sane figures. Speeds are not judged here (no wall-clock thresholds); only their sanity."""
import json
import math

import pytest

from pyllm import _core, bench, cli


def _positive_finite(x) -> bool:
    return isinstance(x, float) and math.isfinite(x) and x > 0


def test_bench_reports_sane_fields(smollm2_path):
    r = bench.run_bench(smollm2_path, n_prompt=8, n_gen=4, n_threads=1, reps=1, bandwidth_bytes=16 << 20)
    for key in ("pp_tok_s", "tg_tok_s", "user_pp_tok_s", "user_tg_tok_s", "load_s",
                "read_bandwidth_bytes_s", "decode_bandwidth_fraction"):
        assert _positive_finite(r[key]), (key, r[key])
    assert r["pp_sd"] == 0.0 and r["tg_sd"] == 0.0  # one repetition has no spread
    assert r["threads"] == 1 and r["n_prompt"] == 8 and r["n_gen"] == 4
    assert r["user_prompt_tokens"] <= 8 and 1 < r["user_generated_tokens"] <= 4
    assert r["peak_rss_bytes"] > r["file_bytes"] // 4  # the weights are resident once touched
    # The tied output matrix is read in full, so a token reads at least the whole file's weights minus metadata.
    assert 0.8 * r["file_bytes"] < r["decode_bytes_per_token"] < 1.1 * r["file_bytes"]
    table = bench.format_markdown(r)
    assert "| pp8 |" in table and "| tg4 |" in table and "GB/s" in table


def test_bench_cli_json(smollm2_path, capsys):
    assert cli.main(["bench", str(smollm2_path), "-p", "8", "-n", "2", "-t", "1", "-r", "1", "-o", "json",
                     "--no-user", "--bandwidth-mib", "8"]) == 0
    r = json.loads(capsys.readouterr().out)
    assert r["pp_tok_s"] > 0 and r["tg_tok_s"] > 0 and "user_pp_tok_s" not in r


def test_read_bandwidth_checks_arguments():
    r = _core.read_bandwidth(4 << 20, 2, 2)
    assert len(r["bytes_per_s"]) == 2 and all(b > 0 for b in r["bytes_per_s"])
    with pytest.raises(ValueError):
        _core.read_bandwidth(1024, 1, 1)
    with pytest.raises(ValueError):
        _core.read_bandwidth(4 << 20, 0, 1)


def _file_tensors(path):
    import gguf
    reader = gguf.GGUFReader(str(path))
    tensors = {t.name: int(t.n_bytes) for t in reader.tensors}
    embd = next(t for t in reader.tensors if t.name == "token_embd.weight")
    embd_row = int(embd.n_bytes) // int(embd.shape[1])  # shape is (n_embd, n_vocab)
    # Norm weights and biases (1-D) are read by the elementwise ops, not counted with the matmuls.
    vectors = sum(int(t.n_bytes) for t in reader.tensors if len(t.shape) == 1)
    return tensors, embd_row, vectors


def test_bench_counts_the_weights_a_dense_decode_reads(smollm2_path):
    # A dense decode step reads every matrix in full and one embedding row: the counted bytes per
    # token are the weights (SmolLM2's embedding is tied, so read in full as the output matrix)
    # less the 1-D norm vectors, plus that one row.
    tensors, embd_row, vectors = _file_tensors(smollm2_path)
    r = bench.run_bench(smollm2_path, n_prompt=4, n_gen=3, n_threads=1, reps=1, user=False, bandwidth_bytes=8 << 20)
    touched = r["weights_touched_bytes"]
    assert touched - vectors <= r["decode_weight_bytes_per_token"] <= touched - vectors + embd_row


def test_bench_shows_a_mixture_of_experts_reads_only_its_routed_experts(arch_fixture):
    # The proof (issue 11): a decode step of the tiny Mixtral (8 experts, top-2, 2 layers)
    # reads each layer's 2 chosen experts and no other, so the counted bytes per token are the
    # dense count less 6 of 8 experts' gate/up/down per layer: exactly, since every token routes
    # to exactly 2 distinct experts.
    path, _ = arch_fixture("mixtral")
    tensors, embd_row, vectors = _file_tensors(path)
    n_expert, n_used = 8, 2
    unread = sum(nbytes * (n_expert - n_used) // n_expert for name, nbytes in tensors.items()
                 if name.endswith(("ffn_gate_exps.weight", "ffn_up_exps.weight", "ffn_down_exps.weight")))
    r = bench.run_bench(path, n_prompt=4, n_gen=3, n_threads=1, reps=1, user=False, bandwidth_bytes=8 << 20)
    touched, read = r["weights_touched_bytes"], r["decode_weight_bytes_per_token"]
    assert unread > 0.4 * touched  # experts are most of this model's weights: a real difference
    assert touched - unread - vectors <= read <= touched - unread - vectors + embd_row, (read, touched, unread)
    assert "weights read per decoded token" in bench.format_markdown(r)
