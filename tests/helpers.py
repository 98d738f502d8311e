"""The pytest side of the testing toolkit (imported as ``helpers``; tests/ is on sys.path under pytest).

The case type, the matrix, the inputs and the tolerances live in :mod:`latte_ref.testing`;
this module only turns the matrix into pytest parameters and a case into a fixture value.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from latte_ref.testing.matrix import Case, matrix

__all__ = ["case_params", "make_case", "run_pytest"]


def case_params(dtypes: tuple[str, ...] | None = None) -> list[Any]:
    """The matrix as parameters: an unusable backend is one parameter, skipped with the reason."""
    params = []
    for entry in matrix(dtypes):
        if entry.unavailable is not None:
            params.append(pytest.param(None, id=entry.id, marks=pytest.mark.skip(reason=entry.unavailable)))
        else:
            params.append(pytest.param((entry.backend, entry.device, entry.dtype_name), id=entry.id))
    return params


def make_case(request: pytest.FixtureRequest) -> Iterator[Case]:
    """The case of a parameter from :func:`case_params`; on Dask the test fails if the library computed a graph."""
    backend, device, dtype = request.param
    with Case(backend, device, dtype).no_compute() as case:
        yield case


def run_pytest(folder: str | os.PathLike[str] | Path, *args: str) -> subprocess.CompletedProcess[str]:
    """A user's ``pytest -q`` run in ``folder`` (one process, no cache; skip reasons shown), for the plugin tests.

    ``tests/`` goes on ``PYTHONPATH`` so that the planted candidates import as modules.
    """
    env = {**os.environ, "PYTHONPATH": os.path.dirname(__file__)}
    command = [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-p", "no:xdist", "-q", "-rs", *args]
    return subprocess.run(command, cwd=folder, capture_output=True, text=True, env=env, timeout=300)
