"""Hyper-parameters through the one key table (csrc/model/hparams.cpp) and the checks at the
boundary: a corrupt value raises GGUFError naming the metadata key; a missing or misshapen tensor
of a known family GGUFError naming the tensor; an unknown architecture UnsupportedModelError
listing the ones pyllm runs. Files are tiny GGUFs (tools/make_tiny_gguf.py) with one thing wrong."""
import dataclasses
import sys
from pathlib import Path

import numpy as np
import pytest
from gguf import GGUFValueType as V

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tools"))
from make_tiny_gguf import make_tiny_model  # noqa: E402

import pyllm  # noqa: E402
from pyllm import _core  # noqa: E402
from pyllm.model import ModelConfig, SUPPORTED_ARCHITECTURES  # noqa: E402

DENORMAL_F32 = float(np.float32(1e-45))

# (family, key (after "{arch}."), value, GGUF type): each must fail naming the key.
BAD_KEYS = [
    ("llama", "block_count", 2**31, V.UINT32),
    ("llama", "block_count", 2**32 + 1, V.UINT64),
    ("llama", "context_length", 2**31, V.UINT32),
    ("llama", "embedding_length", 2**31, V.UINT32),
    ("llama", "attention.head_count_kv", 2**31, V.UINT32),
    ("llama", "feed_forward_length", 2**40, V.UINT64),
    ("llama", "rope.scaling.factor", 0.0, V.FLOAT32),
    ("llama", "rope.scaling.factor", float("nan"), V.FLOAT32),
    ("llama", "rope.freq_base", DENORMAL_F32, V.FLOAT32),
    ("llama", "rope.freq_base", float("inf"), V.FLOAT32),
    ("llama", "rope.freq_base", float("nan"), V.FLOAT32),
    ("llama", "rope.freq_base", 0.0, V.FLOAT32),
    ("llama", "rope.freq_base", -10000.0, V.FLOAT32),
    ("llama", "attention.layer_norm_rms_epsilon", float("nan"), V.FLOAT32),
    ("llama", "attention.layer_norm_rms_epsilon", 0.0, V.FLOAT32),
    ("gemma3", "rope.freq_base_swa", float("inf"), V.FLOAT32),
    ("gemma3", "attention.sliding_window", 2**31, V.UINT32),
    ("qwen2", "rope.scaling.original_context_length", 2**31, V.UINT32),
    ("gemma2", "final_logit_softcapping", float("inf"), V.FLOAT32),
]


@pytest.mark.parametrize("arch,key,value,vtype", BAD_KEYS, ids=lambda v: str(v))
def test_corrupt_hyper_parameter_names_its_key(tmp_path, arch, key, value, vtype):
    path = tmp_path / "bad.gguf"
    extra = {f"{arch}.{key}": (value, vtype)}
    if key == "rope.scaling.factor":  # the factor of a linear scaling
        extra[f"{arch}.rope.scaling.type"] = ("linear", V.STRING)
    make_tiny_model(path, "F32", arch, extra_kv=extra)
    with pytest.raises(pyllm.GGUFError, match=f"'{arch}.{key}'"):
        pyllm.Model(path, n_ctx=16)


def test_unknown_architecture_lists_the_supported_ones(tmp_path):
    path = tmp_path / "mamba.gguf"
    make_tiny_model(path, "F32", "llama", extra_kv={"general.architecture": ("mamba", V.STRING)})
    with pytest.raises(pyllm.UnsupportedModelError, match="'mamba'") as e:
        pyllm.Model(path, n_ctx=16)
    for arch in ("llama", "mistral", "qwen2", "qwen3", "gemma2", "gemma3", "phi3"):
        assert arch in str(e.value)
    assert set(SUPPORTED_ARCHITECTURES) >= {"llama", "qwen3", "gemma3", "phi3"}


def test_unknown_rope_scaling_type_is_named(tmp_path):
    path = tmp_path / "rope.gguf"
    make_tiny_model(path, "F32", "llama", extra_kv={"llama.rope.scaling.type": ("dynamic-ntk", V.STRING)})
    with pytest.raises(pyllm.UnsupportedModelError, match="llama.rope.scaling.type"):
        pyllm.Model(path, n_ctx=16)


# A tensor only that family needs, for each family: its absence is named.
MISSING = [("llama", "blk.0.ffn_gate.weight"), ("qwen3", "blk.1.attn_k_norm.weight"),
           ("gemma3", "blk.1.post_ffw_norm.weight"), ("gemma3", "blk.0.attn_q_norm.weight"),
           ("gemma2", "blk.0.post_attention_norm.weight"), ("phi3", "blk.1.attn_qkv.weight"),
           ("qwen2", "output_norm.weight")]


@pytest.mark.parametrize("arch,tensor", MISSING)
def test_missing_tensor_is_named(tmp_path, arch, tensor):
    path = tmp_path / "missing.gguf"
    make_tiny_model(path, "F32", arch, skip_tensors=frozenset({tensor}))
    with pytest.raises(pyllm.GGUFError, match=f"'{tensor}' is missing"):
        pyllm.Model(path, n_ctx=16)


MISSHAPEN = [("gemma3", "blk.0.attn_q_norm.weight"), ("gemma3", "blk.1.post_attention_norm.weight"),
             ("phi3", "blk.0.ffn_up.weight"), ("phi3", "blk.1.attn_qkv.weight"), ("qwen3", "blk.0.attn_q.weight")]


@pytest.mark.parametrize("arch,tensor", MISSHAPEN)
def test_misshapen_tensor_is_named(tmp_path, arch, tensor):
    path = tmp_path / "misshapen.gguf"
    make_tiny_model(path, "F32", arch, misshapen=frozenset({tensor}))
    with pytest.raises(pyllm.GGUFError, match=f"'{tensor}' has shape"):
        pyllm.Model(path, n_ctx=16)


def test_model_config_is_the_key_table():
    """ModelConfig's fields are the C++ table's rows, in order: described once."""
    assert [f.name for f in dataclasses.fields(ModelConfig)] == [name for name, _ in _core.hparam_fields()]


def test_family_defaults_and_derived_values(tmp_path):
    """What each family file adds to the keys (llama.cpp's values)."""
    path = tmp_path / "g3.gguf"
    make_tiny_model(path, "F32", "gemma3")
    with pyllm.Model(path, n_ctx=16) as m:
        c = m.config
    assert (c.arch, c.rope_neox, c.n_swa, c.swa_pattern) == ("gemma3", True, 4, 2)
    assert c.rope_freq_base == 1e6 and c.rope_freq_base_swa == 10000.0  # the windowed layers' base
    assert c.embd_scale == pytest.approx(16.0) and c.attn_scale == pytest.approx(1 / 8)
    md = {"general.architecture": "gemma3", "gemma3.embedding_length": 640, "gemma3.block_count": 18,
          "gemma3.attention.head_count": 4, "gemma3.feed_forward_length": 2048, "gemma3.vocab_size": 100,
          "gemma3.attention.key_length": 256}
    c = ModelConfig.from_metadata(md)
    assert (c.swa_pattern, c.n_swa, c.head_dim, c.rope_freq_base_swa) == (6, 0, 256, 10000.0)
    # YaRN: llama.cpp's magnitude correction cancels for a plain YaRN file (attn factor 1).
    y = ModelConfig.from_metadata({**{k.replace("gemma3", "qwen2"): v for k, v in md.items()},
                                   "general.architecture": "qwen2", "qwen2.rope.scaling.type": "yarn",
                                   "qwen2.rope.scaling.factor": 4.0,
                                   "qwen2.rope.scaling.original_context_length": 32768})
    assert (y.rope_neox, y.yarn_ext_factor, y.rope_freq_scale, y.rope_n_ctx_orig) == (True, 1.0, 0.25, 32768)
    assert y.yarn_attn_factor == pytest.approx(1.0)
    p = ModelConfig.from_metadata({**{k.replace("gemma3", "phi3"): v for k, v in md.items()},
                                   "general.architecture": "phi3", "phi3.attention.sliding_window": 2047})
    assert p.n_swa == 0  # llama.cpp ignores phi3's window
