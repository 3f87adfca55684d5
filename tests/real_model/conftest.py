"""Fixtures for the tests against a real model (tests/support/real_runtime.py has the
runtime's helpers)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import trio

from tests.support.real_runtime import RUNTIME_VARIABLE, Llama, runtime_folder, start_llama

from . import build_runtime


@pytest.fixture(scope="session")
def runtime_dir() -> Path:
    folder = runtime_folder()
    assert folder is not None  # the tests carry ``needs_runtime``
    if not build_runtime.is_built(folder):
        pytest.fail(
            f"{RUNTIME_VARIABLE}={folder} holds no built runtime; run "
            "`python tests/real_model/build_runtime.py` (or `nox -s real-model`)"
        )
    return folder


@pytest.fixture
async def llama(nursery: trio.Nursery, runtime_dir: Path, tmp_path: Path) -> AsyncIterator[Llama]:
    yield await start_llama(nursery, runtime_dir, tmp_path)
