"""Backends as test parameters: every installed backend x device x dtype.

A backend that is not installed (or, for CuPy, has no GPU) still appears as a
parameter, skipped with the reason, so a missing framework is never a silent pass.
Dask cases also check that the library computed nothing while it was called.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pytest

from latte_ref import backends

# Tolerances on max |error| / max |reference| against the float64 oracle, per input dtype.
TOLERANCE = {"float64": 1e-12, "float32": 2e-5, "float16": 2e-2, "bfloat16": 1e-1}


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "slow: long-running; deselected unless --slow")
    config.addinivalue_line("markers", "full_matrix: on JAX and Dask only with --slow (see EXPENSIVE_BACKENDS)")
    try:  # property tests: 200 examples each by default, 2000 with --slow
        from hypothesis import HealthCheck, settings

        for name, examples in (("default-run", 200), ("slow-run", 2000)):
            settings.register_profile(
                name, max_examples=examples, deadline=None, suppress_health_check=[HealthCheck.too_slow]
            )
        settings.load_profile("slow-run" if config.getoption("--slow") else "default-run")
    except ImportError:
        pass
    try:  # float64 on JAX needs x64 mode, and it must be set before any JAX array exists
        import jax

        jax.config.update("jax_enable_x64", True)
    except ImportError:
        pass


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--slow", action="store_true", help="run slow tests and more hypothesis examples")


# JAX compiles every operation anew for each shape, and Dask turns every step into tasks: on them the
# parametrisations marked `full_matrix` (the larger shapes, chunk size 1) run only with --slow.
EXPENSIVE_BACKENDS = ("jax", "dask")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if config.getoption("--slow"):
        return
    skip_slow = pytest.mark.skip(reason="slow; run with --slow")
    skip_full = pytest.mark.skip(reason="larger shapes on JAX and Dask run with --slow")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip_slow)
        params = getattr(item, "callspec", None)
        param = params.params.get("case", params.params.get("case64")) if params else None
        if "full_matrix" in item.keywords and param is not None and param[0].name in EXPENSIVE_BACKENDS:
            item.add_marker(skip_full)


@dataclass
class Case:
    """One backend, device and dtype that a test runs on."""

    backend: backends.Backend
    device: Any
    dtype_name: str
    computes: list[str] = field(default_factory=list)

    @property
    def xp(self) -> Any:
        return self.backend.namespace()

    @property
    def dtype(self) -> Any:
        return self.backend.dtype(self.dtype_name)

    @property
    def tol(self) -> float:
        return TOLERANCE[self.dtype_name]

    def array(self, x: Any, dtype: str | None = None) -> Any:
        """``x`` (NumPy) as an array of this case: float arrays take the case's dtype, others keep theirs."""
        x = np.asarray(x)
        if dtype is None:
            dtype = self.dtype_name if x.dtype.kind == "f" else x.dtype.name
        return self.backend.asarray(x, dtype=dtype, device=self.device)

    def numpy(self, x: Any) -> np.ndarray:
        """A float64 NumPy copy of a result (computed with an explicit scheduler on Dask)."""
        if self.backend.name == "dask":
            return np.asarray(x.compute(scheduler="sync"), dtype=np.float64)
        return np.asarray(self.backend.to_numpy(x), dtype=np.float64)

    def __str__(self) -> str:
        return f"{self.backend.name}-{self.device}-{self.dtype_name}"


def _cases(dtypes: tuple[str, ...] | None = None) -> list[Any]:
    params = []
    for name, backend in backends.BACKENDS.items():
        reason = backend.unavailable_reason()
        if reason is not None:
            params.append(pytest.param(None, id=name, marks=pytest.mark.skip(reason=reason)))
            continue
        for device in backend.devices():
            for dtype in backend.dtypes(device):
                if dtypes is None or dtype in dtypes:
                    params.append(pytest.param((backend, device, dtype), id=f"{name}-{device}-{dtype}"))
    return params


def _make_case(request: pytest.FixtureRequest) -> Iterator[Case]:
    backend, device, dtype = request.param
    case = Case(backend, device, dtype)
    if backend.name != "dask":
        yield case
        return
    import dask

    # The library must only build graphs: any compute through the default scheduler is counted.
    def counting_scheduler(dsk: Any, keys: Any, **kwargs: Any) -> Any:
        case.computes.append(str(keys)[:80])
        return dask.get(dsk, keys, **kwargs)

    with dask.config.set(scheduler=counting_scheduler):
        yield case
    assert not case.computes, f"the library computed a Dask graph inside a call: {case.computes}"


@pytest.fixture(params=_cases())
def case(request: pytest.FixtureRequest) -> Iterator[Case]:
    """Every installed backend x device x dtype."""
    yield from _make_case(request)


@pytest.fixture(params=_cases(("float64",)))
def case64(request: pytest.FixtureRequest) -> Iterator[Case]:
    """Every installed backend x device, in float64 only (for tight comparisons)."""
    yield from _make_case(request)


@pytest.fixture
def xp(case: Case) -> Any:
    """The Array-API namespace of the current case."""
    return case.xp


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(20240607)
