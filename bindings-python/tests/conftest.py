"""Fixtures: the real default model (SmolLM2-135M-Instruct Q4_1), loaded once.

The tests run on whichever ``pardec`` is imported: the source folder (``python -m pytest
bindings-python/tests`` in a checkout) or the installed wheel (scripts/test-python.sh, which
sets PARDEC_TEST_INSTALLED so that importing the source by mistake fails).

Sessions in these tests use one compute thread: with several, llama.cpp's threads spin-wait
at a barrier for each other, and any other load on the machine (a parallel build) then slows
decoding a hundredfold.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

import pardec

REPO = Path(__file__).resolve().parents[2]

if os.environ.get("PARDEC_TEST_INSTALLED") and \
        Path(pardec.__file__).resolve().parent == REPO / "bindings-python" / "pardec":
    raise RuntimeError(f"PARDEC_TEST_INSTALLED is set, but pardec was imported from the source tree "
                       f"({pardec.__file__}): the tests would not test the installed package")


def model_path() -> Path:
    env = os.environ.get("PARDEC_MODEL")
    if env:
        return Path(env)
    cache = os.environ.get("PARDEC_MODEL_DIR") or Path(
        os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "pardec" / "models"
    return Path(cache) / "SmolLM2-135M-Instruct.Q4_1.gguf"


@pytest.fixture(scope="session")
def model_file() -> Path:
    path = model_path()
    if not path.is_file():
        raise RuntimeError(f"model {path} not found: run scripts/fetch-models.sh default or set PARDEC_MODEL")
    return path


@pytest.fixture(scope="session")
def model(model_file):
    m = pardec.Model(model_file)
    yield m
    m.close()


@pytest.fixture
def session(model):
    s = pardec.Session(model, n_ctx=512, max_branches=4, n_threads=1)
    yield s
    s.close()


@pytest.fixture(scope="session")
def header() -> str:
    return (REPO / "include" / "pardec.h").read_text()
