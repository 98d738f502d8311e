"""The backend registry, mixed inputs, the dtype policy and the core's independence from frameworks."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

import latte_ref
from latte_ref import backends
from latte_ref.testing.inputs import random_qkv


def test_registry_lists_every_framework_with_a_reason_when_missing():
    assert set(backends.BACKENDS) == {"numpy", "array_api_strict", "torch", "jax", "cupy", "dask"}
    assert "numpy" in backends.available_backends()
    for name, b in backends.BACKENDS.items():
        reason = b.unavailable_reason()
        assert (name in backends.available_backends()) == (reason is None)
        if reason is not None:
            assert isinstance(reason, str) and reason
    with pytest.raises(ValueError, match="unknown backend"):
        backends.get_backend("tensorflow")


def test_round_trip_through_every_backend(case):
    x = np.arange(6.0).reshape(2, 3) / 7
    y = case.array(x)
    assert case.backend.owns(y) and backends.backend_of(y) is case.backend
    assert str(y.dtype).endswith(case.dtype_name)
    np.testing.assert_allclose(case.numpy(y), x, rtol=case.tol * 10 if case.dtype_name[-2:] == "16" else 1e-6)


def test_outputs_keep_the_callers_namespace_device_and_dtype(case, rng):
    q, k, v = (case.array(a) for a in random_qkv(rng, (), 5, 2, 3, 4))
    for y in (latte_ref.bidirectional(q, k, v), latte_ref.causal(q, k, v), latte_ref.definition(q, k, v, causal=True)):
        assert case.backend.owns(y)
        assert y.dtype == q.dtype
        from array_api_compat import device

        assert device(y) == device(q)


def test_mixed_frameworks_raise_a_clear_type_error(rng):
    torch = pytest.importorskip("torch")
    q, k, v = random_qkv(rng, (), 5, 2, 3, 4)
    with pytest.raises(TypeError, match="different array libraries"):
        latte_ref.causal(q, torch.asarray(k), v)


def test_low_precision_is_accumulated_in_float32(case, rng):
    if case.dtype_name not in ("float16", "bfloat16"):
        pytest.skip("only 16-bit dtypes are upcast")
    q, k, v = (case.array(a) for a in random_qkv(rng, (), 40, 2, 3, 4))
    y, state = latte_ref.causal(q, k, v, return_state=True)
    assert y.dtype == q.dtype
    assert state.numerator.dtype == case.xp.float32


def test_the_core_imports_no_framework(tmp_path):
    code = (
        "import sys, latte_ref, latte_ref.commands.check\n"
        "from latte_ref import backends\n"
        "backends.available_backends.__doc__\n"
        "bad = [m for m in ('torch', 'jax', 'cupy', 'dask') if m in sys.modules]\n"
        "print(', '.join(bad))\n"
    )
    # From a scratch folder, so that the installed latte_ref is imported, not the checkout's folder.
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "", f"importing latte_ref imported {result.stdout.strip()}"
