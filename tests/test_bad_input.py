# mypy: disable-error-code="arg-type"
"""Bad input gets a clear error at the public boundary, on every installed backend.

Each case is a call with one thing wrong, the exception it must raise, and words the
message must contain: the argument's name and what was expected or given. A wrong
answer, an IndexError or a framework's broadcasting error all fail the test.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from collections.abc import Callable, Iterator
from typing import Any, NamedTuple

import numpy as np
import pytest
from helpers import case_params, make_case

import latte_ref
from latte_ref import backends
from latte_ref.testing.matrix import Case

B, T, H, L, D = 2, 5, 2, 3, 4


@pytest.fixture(params=case_params(("float32",)))
def case32(request: pytest.FixtureRequest) -> Iterator[Case]:
    """Every installed backend x device, float32 only: the checks do not depend on the float dtype."""
    yield from make_case(request)


class Inputs:
    """Valid inputs of one case, from which each bad call changes one thing."""

    def __init__(self, case: Case) -> None:
        rng = np.random.default_rng(0)
        self.case = case
        self.q = case.array(rng.normal(size=(B, T, H, L)))
        self.k = case.array(rng.normal(size=(B, T, H, L)))
        self.v = case.array(rng.normal(size=(B, T, H, D)))
        self.mask = case.array(np.ones((B, T), dtype=bool))
        self.state = latte_ref.init_state((B,), H, L, D, xp=case.xp, dtype=case.dtype, device=case.device)
        self.params = latte_ref.init_params(8, 4, 2, xp=case.xp, dtype=case.dtype, device=case.device)
        self.x = case.array(rng.normal(size=(B, T, 8)))

    def a(self, shape: tuple[int, ...], dtype: str | None = None) -> Any:
        """An array of this case of ``shape`` (float32 unless ``dtype``)."""
        return self.case.array(np.ones(shape), dtype=dtype)

    def foreign(self, x: Any) -> Any:
        """``x`` as an array of another library: array-api-strict for NumPy, NumPy for the rest."""
        x_np = self.case.numpy(x).astype(np.float32) if x.dtype != self.case.xp.bool else self.case.numpy(x) > 0
        if self.case.backend.name != "numpy":
            return x_np
        strict = backends.get_backend("array_api_strict")
        if strict.unavailable_reason() is not None:
            pytest.skip("array-api-strict is not installed: no second library to mix with NumPy")
        return strict.asarray(x_np)

    def empty_state(self, batch: tuple[int, ...], heads: int, latents: int, dim: int) -> latte_ref.LatteState:
        return latte_ref.init_state(
            batch, heads, latents, dim, xp=self.case.xp, dtype=self.case.dtype, device=self.case.device
        )

    def state_with(self, **fields: Any) -> latte_ref.LatteState:
        return self.state._replace(**fields)


class Bad(NamedTuple):
    name: str
    call: Callable[[Inputs], Any]
    error: type[Exception]
    words: tuple[str, ...]


BAD = [
    # rank and shape of q, k, v
    Bad("q of rank 2", lambda i: latte_ref.bidirectional(i.a((T, L)), i.k, i.v), ValueError, ("q", "axes", "(5, 3)")),
    Bad("k of rank 1", lambda i: latte_ref.causal(i.q, i.a((L,)), i.v), ValueError, ("k", "axes")),
    Bad(
        "q and k of different L", lambda i: latte_ref.causal(i.q, i.a((B, T, H, L + 1)), i.v), ValueError, ("q and k",)
    ),
    Bad(
        "q and k of different T, causal",  # cross-attention (Tq != Tk) is bidirectional only
        lambda i: latte_ref.definition(i.q, i.a((B, T + 1, H, L)), i.a((B, T + 1, H, D)), causal=True),
        ValueError,
        ("q and k",),
    ),
    Bad("v of another T", lambda i: latte_ref.bidirectional(i.q, i.k, i.a((B, T + 1, H, D))), ValueError, ("v",)),
    Bad(
        "mask with q and k of different T",
        lambda i: latte_ref.bidirectional(i.q, i.a((B, T + 1, H, L)), i.a((B, T + 1, H, D)), mask=i.mask),
        ValueError,
        ("key_mask",),
    ),
    Bad(
        "key_mask of the wrong length",
        lambda i: latte_ref.bidirectional(i.q, i.k, i.v, key_mask=i.a((B, T + 1)) > 0),
        ValueError,
        ("key_mask",),
    ),
    Bad("v of another H", lambda i: latte_ref.recurrent(i.q, i.k, i.a((B, T, H + 1, D))), ValueError, ("v",)),
    Bad("v of another batch", lambda i: latte_ref.causal(i.q, i.k, i.a((B + 1, T, H, D))), ValueError, ("v",)),
    Bad(
        "no latents (L = 0)", lambda i: latte_ref.bidirectional(*(i.a((B, T, H, 0)),) * 2, i.v), ValueError, ("L >= 1",)
    ),
    # dtypes
    Bad(
        "integer q", lambda i: latte_ref.bidirectional(i.a((B, T, H, L), "int32"), i.k, i.v), TypeError, ("q", "int32")
    ),
    Bad("complex v", lambda i: latte_ref.causal(i.q, i.k, i.a((B, T, H, D), "complex64")), TypeError, ("v", "complex")),
    Bad("boolean k", lambda i: latte_ref.recurrent(i.q, i.a((B, T, H, L), "bool"), i.v), TypeError, ("k", "bool")),
    Bad(
        "integer x",
        lambda i: latte_ref.latte_attention(i.a((B, T, 8), "int64"), i.params, causal=True),
        TypeError,
        ("x", "int64"),
    ),
    # not arrays, or arrays of two libraries
    Bad("q a list", lambda i: latte_ref.bidirectional([[[1.0]]], i.k, i.v), TypeError, ("q", "array", "list")),
    Bad(
        "k of another library",
        lambda i: latte_ref.bidirectional(i.q, i.foreign(i.k), i.v),
        TypeError,
        ("different array libraries", "k"),
    ),
    Bad(
        "state of another library",
        lambda i: latte_ref.causal(i.q, i.k, i.v, state=i.state_with(numerator=i.foreign(i.state.numerator))),
        TypeError,
        ("different array libraries", "state.numerator"),
    ),
    # masks
    Bad(
        "mask of the wrong shape",
        lambda i: latte_ref.causal(i.q, i.k, i.v, mask=i.a((B, T + 1), "bool")),
        ValueError,
        ("mask", "(2, 5)", "(2, 6)"),
    ),
    Bad(
        "mask over heads too",
        lambda i: latte_ref.bidirectional(i.q, i.k, i.v, mask=i.a((B, T, H), "bool")),
        ValueError,
        ("mask", "(2, 5)"),
    ),
    Bad(
        "float mask",
        lambda i: latte_ref.bidirectional(i.q, i.k, i.v, mask=i.a((B, T))),
        TypeError,
        ("mask", "boolean", "float32"),
    ),
    Bad(
        "integer mask",
        lambda i: latte_ref.recurrent(i.q, i.k, i.v, mask=i.a((B, T), "int32")),
        TypeError,
        ("mask", "boolean", "int32"),
    ),
    Bad("mask a list", lambda i: latte_ref.causal(i.q, i.k, i.v, mask=[[True] * T] * B), TypeError, ("mask", "list")),
    Bad(
        "mask of another library",
        lambda i: latte_ref.causal(i.q, i.k, i.v, mask=i.foreign(i.mask)),
        TypeError,
        ("different array libraries", "mask"),
    ),
    Bad(
        "mask_t of the wrong shape",
        lambda i: latte_ref.step(i.q[:, 0, ...], i.k[:, 0, ...], i.v[:, 0, ...], None, mask_t=i.a((B, 1), "bool")),
        ValueError,
        ("mask_t", "(2,)"),
    ),
    Bad(
        "x mask of the wrong shape",
        lambda i: latte_ref.latte_attention(i.x, i.params, causal=False, mask=i.a((B, T, 8), "bool")),
        ValueError,
        ("mask", "(2, 5)"),
    ),
    # chunk_size
    Bad("chunk_size 0", lambda i: latte_ref.causal(i.q, i.k, i.v, chunk_size=0), ValueError, ("chunk_size", "0")),
    Bad("chunk_size -4", lambda i: latte_ref.causal(i.q, i.k, i.v, chunk_size=-4), ValueError, ("chunk_size", "-4")),
    Bad("chunk_size 2.5", lambda i: latte_ref.causal(i.q, i.k, i.v, chunk_size=2.5), TypeError, ("chunk_size", "2.5")),
    Bad(
        "chunk_size True", lambda i: latte_ref.causal(i.q, i.k, i.v, chunk_size=True), TypeError, ("chunk_size", "True")
    ),
    Bad("chunk_size '8'", lambda i: latte_ref.causal(i.q, i.k, i.v, chunk_size="8"), TypeError, ("chunk_size", "'8'")),
    # states
    Bad(
        "state a tuple",
        lambda i: latte_ref.causal(i.q, i.k, i.v, state=tuple(i.state)),
        TypeError,
        ("state", "LatteState", "tuple"),
    ),
    Bad(
        "state of another L",
        lambda i: latte_ref.causal(i.q, i.k, i.v, state=i.empty_state((B,), H, L + 1, D)),
        ValueError,
        ("state.running_max", "(2, 2, 3)", "(2, 2, 4)"),
    ),
    Bad(
        "state of another batch",
        lambda i: latte_ref.recurrent(i.q, i.k, i.v, state=i.empty_state((B + 1,), H, L, D)),
        ValueError,
        ("state.running_max", "batch (2,)"),
    ),
    Bad(
        "state of another D",
        lambda i: latte_ref.step(i.q[:, 0, ...], i.k[:, 0, ...], i.v[:, 0, ...], i.empty_state((B,), H, L, D + 1)),
        ValueError,
        ("state.numerator", "(2, 2, 3, 4)"),
    ),
    Bad(
        "integer state",
        lambda i: latte_ref.causal(i.q, i.k, i.v, state=i.state_with(normaliser=i.a((B, H, L), "int32"))),
        TypeError,
        ("state.normaliser", "int32"),
    ),
    Bad(
        "bad state with T = 0",
        lambda i: latte_ref.recurrent(
            i.q[:, :0, ...], i.k[:, :0, ...], i.v[:, :0, ...], state=i.empty_state((B,), H, L + 1, D)
        ),
        ValueError,
        ("state",),
    ),
    Bad(
        "combine of two shapes",
        lambda i: latte_ref.combine(i.state, i.empty_state((), H, L, D)),
        ValueError,
        ("earlier and later",),
    ),
    Bad(
        "combine with a tuple", lambda i: latte_ref.combine(i.state, tuple(i.state)), TypeError, ("later", "LatteState")
    ),
    Bad(
        "combine of a torn state",
        lambda i: latte_ref.combine(i.state_with(normaliser=i.a((B, H, L + 1))), i.state),
        ValueError,
        ("earlier", "(2, 2, 3)", "(2, 2, 4)"),
    ),
    Bad("init_state n_heads 0", lambda i: latte_ref.init_state((B,), 0, L, D, xp=i.case.xp), ValueError, ("n_heads",)),
    Bad(
        "init_state batch_shape a list",
        lambda i: latte_ref.init_state([B], H, L, D, xp=i.case.xp),
        TypeError,
        ("batch_shape", "[2]"),
    ),
    Bad(
        "init_state integer dtype",
        lambda i: latte_ref.init_state((B,), H, L, D, xp=i.case.xp, dtype=i.case.xp.int32),
        TypeError,
        ("dtype", "int32"),
    ),
    # flags and forms
    Bad("causal='yes'", lambda i: latte_ref.definition(i.q, i.k, i.v, causal="yes"), TypeError, ("causal", "'yes'")),
    Bad("causal=None", lambda i: latte_ref.latte_attention(i.x, i.params, causal=None), TypeError, ("causal", "None")),
    Bad("return_state=1", lambda i: latte_ref.causal(i.q, i.k, i.v, return_state=1), TypeError, ("return_state",)),
    Bad(
        "attention_matrix q and k of two shapes",
        lambda i: latte_ref.attention_matrix(i.q, i.k[..., :1], causal=True),
        ValueError,
        ("q and k",),
    ),
    Bad(
        "unknown form",
        lambda i: latte_ref.latte_attention(i.x, i.params, causal=True, form="fast"),
        ValueError,
        ("form", "'fast'"),
    ),
    Bad(
        "recurrent form, bidirectional",
        lambda i: latte_ref.latte_attention(i.x, i.params, causal=False, form="recurrent"),
        ValueError,
        ("recurrent", "causal"),
    ),
    # the layer
    Bad(
        "x of another d_model",
        lambda i: latte_ref.latte_attention(i.a((B, T, 6)), i.params, causal=True),
        ValueError,
        ("x", "d_model=8", "(2, 5, 6)"),
    ),
    Bad("x of rank 1", lambda i: latte_ref.latte_attention(i.a((8,)), i.params, causal=True), ValueError, ("x",)),
    Bad(
        "params a dict",
        lambda i: latte_ref.latte_attention(i.x, {"wq": i.params.wq}, causal=True),
        TypeError,
        ("params", "LatteParams", "dict"),
    ),
    Bad(
        "n_latents not divisible by n_heads",
        lambda i: latte_ref.init_params(8, 6, 4, xp=i.case.xp),
        ValueError,
        ("n_latents", "n_heads=4", "6"),
    ),
    Bad(
        "d_model not divisible by n_heads",
        lambda i: latte_ref.init_params(6, 8, 4, xp=i.case.xp),
        ValueError,
        ("d_model", "n_heads=4", "6"),
    ),
    Bad("n_heads 2.0", lambda i: latte_ref.init_params(8, 4, 2.0, xp=i.case.xp), TypeError, ("n_heads", "2.0")),
    Bad(
        "LatteParams with n_latents not divisible",
        lambda i: latte_ref.LatteParams(i.a((8, 6)), i.a((8, 6)), i.a((8, 8)), i.a((8, 8)), n_heads=4),
        ValueError,
        ("n_latents", "6"),
    ),
    Bad(
        "LatteParams with an integer wv",
        lambda i: latte_ref.LatteParams(i.a((8, 4)), i.a((8, 4)), i.a((8, 8), "int32"), i.a((8, 8)), n_heads=2),
        TypeError,
        ("wv", "int32"),
    ),
    Bad(
        "LatteParams of two libraries",
        lambda i: latte_ref.LatteParams(i.a((8, 4)), i.a((8, 4)), i.a((8, 8)), i.foreign(i.a((8, 8))), n_heads=2),
        TypeError,
        ("different array libraries", "wo"),
    ),
]


@pytest.mark.parametrize("bad", BAD, ids=[b.name for b in BAD])
def test_bad_input_is_a_clear_error(case32: Case, bad: Bad) -> None:
    inputs = Inputs(case32)
    with pytest.raises(bad.error) as info:
        bad.call(inputs)
    message = str(info.value)
    for word in bad.words:
        assert word in message, f"{bad.name}: {word!r} not in {message!r}"


def test_the_table_is_large_enough() -> None:
    assert len(BAD) >= 30


def test_arrays_on_two_devices_are_refused() -> None:
    """q on the CPU and k elsewhere: PyTorch's shape-only 'meta' device stands in for a second device."""
    torch = pytest.importorskip("torch")
    q = torch.zeros((T, H, L))
    for where, call in {
        "k": lambda: latte_ref.causal(q, q.to("meta"), torch.zeros((T, H, D))),
        "mask": lambda: latte_ref.bidirectional(
            q, q, torch.zeros((T, H, D)), mask=torch.ones(T, dtype=torch.bool, device="meta")
        ),
        "state.numerator": lambda: latte_ref.recurrent(
            q,
            q,
            torch.zeros((T, H, D)),
            state=latte_ref.init_state((), H, L, D, xp=torch, dtype=torch.float32)._replace(
                numerator=torch.zeros((H, L, D), device="meta")
            ),
        ),
    }.items():
        with pytest.raises(ValueError, match="one device") as info:
            call()
        assert where in str(info.value) and "meta" in str(info.value)


def test_numpy_integers_are_accepted_as_sizes(rng: np.random.Generator) -> None:
    q, k, v = rng.normal(size=(3, 9, 2, 3))
    np.testing.assert_array_equal(
        latte_ref.causal(q, k, v, chunk_size=np.int64(4)), latte_ref.causal(q, k, v, chunk_size=4)
    )


def test_float64_on_jax_without_x64_is_an_error() -> None:
    """With x64 off JAX turns float64 into float32; latte-ref refuses rather than compute in float32.

    The test suite turns x64 on before JAX starts, so this runs in a fresh interpreter.
    """
    pytest.importorskip("jax")
    script = textwrap.dedent(
        """
        import jax, jax.numpy as jnp, latte_ref
        assert not jax.config.jax_enable_x64
        for make in (lambda: latte_ref.init_state((2,), 2, 3, 4, xp=jnp, dtype=jnp.float64),
                     lambda: latte_ref.init_params(8, 4, 2, xp=jnp, dtype=jnp.float64)):
            try:
                make()
            except ValueError as exc:
                assert "float64" in str(exc) and "jax_enable_x64" in str(exc), exc
            else:
                raise SystemExit("float64 was narrowed silently")
        assert latte_ref.init_state((2,), 2, 3, 4, xp=jnp).numerator.dtype == jnp.float32
        print("ok")
        """
    )
    env_free = {"JAX_ENABLE_X64": "0", "JAX_PLATFORMS": "cpu"}

    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=120, env={**os.environ, **env_free}
    )
    assert result.returncode == 0 and result.stdout.strip() == "ok", result.stderr[-2000:]
