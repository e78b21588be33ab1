"""The tiny per-architecture GGUFs of tests/data/arch regenerate with the bytes llama.cpp's logits
were recorded from, and carry the tensor names and keys llama.cpp's converter writes. (pyllm's
own logits against them are checked by the architecture tests.)"""
import numpy as np
import pytest
import gguf

NAMES = ["llama3_ropefreqs", "llama_yarn", "qwen2_yarn", "qwen3", "gemma3", "gemma3_q8_0", "phi3",
         "mixtral", "qwen2moe", "qwen3moe", "olmoe"]


@pytest.mark.parametrize("name", NAMES)
def test_arch_fixture_regenerates_and_matches_its_logits(arch_fixture, name):
    path, ref = arch_fixture(name)   # asserts the sha256
    r = gguf.GGUFReader(str(path))
    n_vocab = int(r.fields["tokenizer.ggml.tokens"].data.__len__())
    assert ref["logits"].shape == (len(ref["positions"]), n_vocab)
    assert ref["logits"].dtype == np.float32 and np.isfinite(ref["logits"]).all()
    assert max(ref["ids"]) < n_vocab


def test_arch_fixtures_exercise_what_issue_11_names(arch_fixture):
    def reader(name):
        return gguf.GGUFReader(str(arch_fixture(name)[0]))
    r = reader("llama3_ropefreqs")
    assert "rope_freqs.weight" in {t.name for t in r.tensors}
    assert arch_fixture("llama3_ropefreqs")[1]["positions"].min() >= 4096  # every kept position is past 4k
    for name in ("llama_yarn", "qwen2_yarn"):
        f = reader(name).fields
        arch = bytes(f["general.architecture"].parts[-1]).decode()
        assert bytes(f[f"{arch}.rope.scaling.type"].parts[-1]).decode() == "yarn"
    f = reader("gemma3").fields
    assert int(f["gemma3.attention.sliding_window"].parts[-1][0]) < len(arch_fixture("gemma3")[1]["ids"])
    assert int(f["gemma3.block_count"].parts[-1][0]) == 6   # llama.cpp's pattern: layer 5 global
    for name, ne in (("mixtral", 8), ("qwen2moe", 4), ("qwen3moe", 8), ("olmoe", 8)):
        t = {t.name: t for t in reader(name).tensors}
        assert [int(x) for x in t["blk.0.ffn_gate_exps.weight"].shape][-1] == ne
    assert "blk.0.ffn_gate_inp_shexp.weight" in {t.name for t in reader("qwen2moe").tensors}
    assert "blk.0.attn_qkv.weight" in {t.name for t in reader("phi3").tensors}
