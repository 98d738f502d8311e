"""Fixtures and options of the test suite; the toolkit itself is :mod:`latte_ref.testing` (and ``helpers``).

Backends are test parameters: every installed backend x device x dtype. A backend that
is not installed (or, for CuPy, has no GPU) still appears as a parameter, skipped with
the reason, so a missing framework is never a silent pass. Dask cases also check that
the library computed nothing while it was called.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
from helpers import case_params, make_case

from latte_ref.testing.matrix import Case


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "slow: long-running; deselected unless --slow")
    config.addinivalue_line("markers", "full_matrix: on JAX and Dask only with --slow (see EXPENSIVE_BACKENDS)")
    # Without --full, JAX and Dask run the first parametrisation of each test (see pytest_collection_modifyitems).
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
    else:
        # Eager JAX compiles each operation anew for each shape (about 30 ms an operation on CPU; causal
        # compiles each block whole): a compilation cache in pytest's cache folder lets the workers of one
        # run, and later runs, share those compilations. With `-p no:cacheprovider` the suite runs without it.
        cache = getattr(config, "cache", None)
        if cache is not None:
            jax.config.update("jax_compilation_cache_dir", str(cache.mkdir("jax-compilation-cache")))
            jax.config.update("jax_persistent_cache_min_compile_time_secs", 0)
            jax.config.update("jax_persistent_cache_min_entry_size_bytes", -1)


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--full",
        action="store_true",
        help="the whole matrix, as CI runs it (default: a fast, representative selection)",
    )
    parser.addoption("--slow", action="store_true", help="--full, plus slow tests and more hypothesis examples")


# JAX compiles every operation anew for each shape, and Dask turns every step into tasks: on them the
# parametrisations marked `full_matrix` (the larger shapes, chunk size 1) run only with --slow.
EXPENSIVE_BACKENDS = ("jax", "dask")

# Single tests that take 8 s or more on a 2-core machine; the fast selection leaves them to --full.
FULL_ONLY = (
    "test_page_code_runs[docs/tutorials/jax.md]",
    "test_torch_layer_compiles",
    "test_docstring_examples[latte_ref.layers.flax.LatteAttention]",
    # eager JAX compiles each operation for each document length: 97 s for the causal form alone
    "test_packed_gradients_equal_those_of_the_documents[causal-jax]",
    "test_on_four_cpu_devices",  # a second pytest process with four JAX CPU devices: about a minute
    # 20 to 30 s each on eager JAX (new shapes for every call); their NumPy and torch cases stay
    "test_a_stream_cut_inside_a_document_equals_the_uncut_run[jax-cpu:0-float32-5-causal]",
    "test_causal_is_independent_of_chunk_size[jax-cpu:0-float32-3]",
    # 8 to 9 s each on eager JAX (a non-finite input takes the per-token form: more shapes to compile)
    "test_a_nan_stays_in_its_document[jax-cpu:0-float32-causal]",
    "test_a_bad_key_at_a_documents_first_token_stays_in_its_document[jax-cpu:0-float32-causal-nan]",
    # 9 to 23 s each from a fresh clone, when every eager JAX operation compiled for the first time (before
    # causal compiled its blocks whole); each checks what a faster test of the same module checks on JAX too
    "test_other_forms_compile_to_one_graph[recurrent]",  # torch.compile unrolls the token loop; `step` stays
    "test_gradients_agree_with_the_definition[causal-causal-definition-unmasked-jax]",
    "test_mask_equals_dropping_the_padded_tokens[jax-cpu:0-float32-right]",
    "test_streaming_with_carried_state_equals_whole_run[jax-cpu:0-float32]",
    "test_combine_is_associative_and_matches_concatenation[jax-cpu:0-float32]",
    "test_packed_rows_equal_each_document_on_its_own[jax-cpu:0-float32-packed-causal-1]",
    "test_a_stream_cut_at_a_boundary_starts_afresh_with_no_state[jax-cpu:0-float32-causal]",
)


def _backend_of(item: pytest.Item) -> str | None:
    params = getattr(item, "callspec", None)
    if params is None:
        return None
    case = params.params.get("case", params.params.get("case64"))
    if case is not None:
        return str(case[0].name)
    named = [v for v in params.params.values() if isinstance(v, str) and v in EXPENSIVE_BACKENDS]
    return named[0] if named else None


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Without --full: on JAX and Dask, the first parametrisation of each test only, and none of FULL_ONLY;
    with --full, all of them; with --slow, the slow ones too."""
    if config.getoption("--slow"):
        return
    skip_slow = pytest.mark.skip(reason="slow; run with --slow")
    skip_full = pytest.mark.skip(reason="larger shapes on JAX and Dask run with --slow")
    skip_fast = pytest.mark.skip(reason="in the full matrix; run with --full")
    full = config.getoption("--full")
    seen: set[tuple[str, str]] = set()
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip_slow)
            continue
        backend = _backend_of(item)
        if "full_matrix" in item.keywords and backend in EXPENSIVE_BACKENDS:
            item.add_marker(skip_full)
            continue
        if full:
            continue
        name = item.name if "[" in item.name else item.name + "[]"
        key = (item.nodeid.split("[")[0], backend)
        if name.startswith(FULL_ONLY) or item.name in FULL_ONLY:
            item.add_marker(skip_fast)
            if backend in EXPENSIVE_BACKENDS:  # its other JAX cases are no cheaper: leave them to --full too
                seen.add(key)
        elif backend in EXPENSIVE_BACKENDS:
            if key in seen:
                item.add_marker(skip_fast)
            seen.add(key)


@pytest.fixture(autouse=True, scope="session")
def validate_saves_to_pytests_tree(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """The validator's failing cases (planted bugs, the docs' examples) go under pytest's temporary tree.

    Not to the system's temporary folder, where every run would leave its ``.npz`` files;
    the environment variable reaches the CLI runs in subprocesses too.
    """
    from latte_ref.testing.report import SAVE_DIR_VARIABLE

    previous = os.environ.get(SAVE_DIR_VARIABLE)
    os.environ[SAVE_DIR_VARIABLE] = str(tmp_path_factory.mktemp("latte-validate"))
    yield
    if previous is None:
        del os.environ[SAVE_DIR_VARIABLE]
    else:
        os.environ[SAVE_DIR_VARIABLE] = previous


@pytest.fixture(params=case_params())
def case(request: pytest.FixtureRequest) -> Iterator[Case]:
    """Every installed backend x device x dtype."""
    yield from make_case(request)


@pytest.fixture(params=case_params(("float64",)))
def case64(request: pytest.FixtureRequest) -> Iterator[Case]:
    """Every installed backend x device, in float64 only (for tight comparisons)."""
    yield from make_case(request)


@pytest.fixture
def xp(case: Case) -> Any:
    """The Array-API namespace of the current case."""
    return case.xp


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(20240607)
