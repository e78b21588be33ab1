"""The i-quant types end to end. IQ4_NL and IQ4_XS run (their formats, quantizers and kernels are
tested in test_quant_formats.py, test_kernels.py, test_tiny_models.py and test_quantize.py); every
other ggml type (IQ1_S ... IQ3_S, TQ1_0/TQ2_0, MXFP4 ...) is read and listed by `pyllm info` but
named in an UnsupportedModelError at load and in a QuantizeError by `pyllm quantize`."""
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tools"))
from make_tiny_gguf import make_tiny_model  # noqa: E402

import pyllm  # noqa: E402
from pyllm import cli  # noqa: E402
from pyllm.errors import QuantizeError, UnsupportedModelError  # noqa: E402
from pyllm.gguf import GGUFFile  # noqa: E402
from pyllm.quantize import QuantizeOptions, quantize_file  # noqa: E402

# name: (elements, bytes) per block, ggml's table (ggml-common.h)
FOREIGN = {"IQ2_XXS": (256, 66), "IQ2_XS": (256, 74), "IQ3_XXS": (256, 98), "IQ1_S": (256, 50),
           "IQ3_S": (256, 110), "IQ2_S": (256, 82), "IQ1_M": (256, 56), "TQ1_0": (256, 54),
           "TQ2_0": (256, 66), "MXFP4": (32, 17)}
TENSOR = "blk.1.ffn_up.weight"   # 512 rows of 256


@pytest.fixture(scope="module", params=sorted(FOREIGN))
def foreign_file(request, tmp_path_factory):
    path = tmp_path_factory.mktemp("iq") / f"tiny-{request.param}.gguf"
    make_tiny_model(path, "Q4_0", raw_types={TENSOR: request.param})
    return request.param, path


def test_reader_lists_the_type(foreign_file):
    name, path = foreign_file
    t = GGUFFile(path).tensors[TENSOR]
    block, size = FOREIGN[name]
    assert t["type_name"] == name and not t["supported"]
    assert t["shape"] == [256, 512] and t["nbytes"] == 512 * 256 // block * size
    assert GGUFFile(path).tensors["blk.1.ffn_gate.weight"]["supported"]


def test_load_names_tensor_and_type(foreign_file):
    name, path = foreign_file
    with pytest.raises(UnsupportedModelError) as e:
        pyllm.Model(path, n_ctx=32)
    msg = str(e.value)
    assert f"'{TENSOR}' has type {name}, which pyllm does not run" in msg
    assert "supported:" in msg and "IQ4_NL" in msg and "IQ4_XS" in msg and "Q4_K" in msg


def test_info_lists_file(foreign_file, capsys):
    name, path = foreign_file
    assert cli.main(["info", str(path), "--check", "--tensors"]) == 0
    out = capsys.readouterr().out
    assert f"{name} x1" in out and "Q4_0 x" in out                      # the type summary
    assert f"pyllm does not run {name} (1 tensor)" in out
    assert "1 tensors of types pyllm does not decode are not checked" in out
    assert TENSOR in out and "check: all" in out


def test_quantize_refuses_with_tensor_named(foreign_file, tmp_path):
    name, path = foreign_file
    with pytest.raises(QuantizeError, match=f"'{TENSOR}' has type {name}"):
        quantize_file(path, tmp_path / "out.gguf", "Q8_0", QuantizeOptions(allow_requantize=True))
    assert not (tmp_path / "out.gguf").exists()


def test_tensor_array_of_foreign_type_is_unsupported(foreign_file):
    name, path = foreign_file
    with pytest.raises(UnsupportedModelError, match=name):
        GGUFFile(path).tensor_array(TENSOR)
