"""Gradients where the forms' frames tie or strain, in torch autograd and jax.grad, against the recurrence's.

The fast forms keep sums of exponentials in a frame (a running max, or a chunk's reference) that
cancels out of every output, so its choice must not reach the gradients either. These tests put the
frames where that is hardest: tied keys (all zero, on a 0.5 grid, a carried state whose running max
equals later keys, flat keys in packed rows and under masks, layers whose key weights are zero), keys
that rise 0.5, 0.9 and 0.99 of :func:`latte_ref.causal.factoring_bound` above their chunk's first key,
and keys hundreds above it (past the bound, where the per-token form takes over). Each gradient is
compared with that of :func:`latte_ref.recurrent` (causal forms) or of ``definition(causal=False)``
(bidirectional), as ``max |g - g_ref| / max |g_ref|``: 1e-9 in float64.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import array_api_compat.numpy as np_namespace
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import latte_ref
from latte_ref.causal import factoring_bound

CHUNK_SIZES = [1, 2, 3, 16, 64]
FRAMEWORKS = ["torch", "jax"]
# JAX compiles every operation anew for each shape, and takes the per-token form at every chunk size: there,
# one chunk size, and inputs of one shape (2, 12, 1, 3) wherever the test allows.
RUNS = [("torch", c) for c in CHUNK_SIZES] + [("jax", 3)]
LENGTH = {"torch": 72, "jax": 12}  # torch: several chunks of 16 and more than one of 64
NEAR_THE_BOUND = [(*run, f) for run in RUNS for f in (0.5, 0.9, 0.99) if run[0] == "torch" or f == 0.99]
HUNDREDS = [(*run, r) for run in RUNS for r in (360.0, 400.0, 590.0, 700.0) if run[0] == "torch" or r == 400.0]
TOL = 1e-9  # float64
TOL_FLOAT32 = 1e-5  # float32 against the float64 recurrence, keys up to ~35 above their reference (seen: 7e-7)

Form = Callable[..., Any]
"""(q, k, v, to) -> y; ``to`` turns a NumPy array (a mask, segment ids) into one of the framework."""


def _relative(g: np.ndarray, g_ref: np.ndarray, floor: float = 0.0) -> float:
    """max |g - g_ref| / max |g_ref|, the denominator at least ``floor`` (absolute where both are 0)."""
    scale = max(float(np.max(np.abs(g_ref), initial=0.0)), floor) or 1.0
    return float(np.max(np.abs(g - g_ref), initial=0.0)) / scale


def _grads(
    framework: str,
    form: Form,
    arrays: tuple[np.ndarray, ...],
    *,
    dtype: str = "float64",
    readout: bool = True,
    jit: bool = True,
) -> list[np.ndarray]:
    """Gradients of sum(form(*arrays) * r) with respect to every array, as float64 NumPy arrays.

    r is a fixed random array of y's shape (so that every output counts), or 1 with ``readout=False``.
    On JAX the gradient is compiled whole (``jit``): compiling it once costs less than running it op by
    op the first time, which compiles every operation on its own.
    """

    def weights(shape: tuple[int, ...]) -> np.ndarray:
        return np.random.default_rng(11).normal(size=shape) if readout else np.ones(shape)

    if framework == "torch":
        torch = pytest.importorskip("torch")
        tensors = [torch.tensor(a, dtype=getattr(torch, dtype), requires_grad=True) for a in arrays]
        y = form(*tensors, torch.as_tensor)
        (y * torch.as_tensor(weights(tuple(y.shape)), dtype=y.dtype)).sum().backward()
        return [t.grad.double().numpy() for t in tensors]
    jax = pytest.importorskip("jax")
    jnp = jax.numpy

    def loss(*xs: Any) -> Any:
        y = form(*xs, jnp.asarray)
        return (y * jnp.asarray(weights(y.shape), dtype=y.dtype)).sum()

    grad = jax.grad(loss, argnums=tuple(range(len(arrays))))
    inputs = [jnp.asarray(a, dtype=dtype) for a in arrays]
    return [np.asarray(g, dtype=np.float64) for g in (jax.jit(grad) if jit else grad)(*inputs)]


def _assert_same_grads(
    framework: str, form: Form, oracle: Form, arrays: tuple[np.ndarray, ...], *, tol: float = TOL
) -> None:
    _assert_close(_grads(framework, form, arrays), _oracle_grads(framework, oracle, arrays), "qkv", tol)


def _oracle_grads(framework: str, oracle: Form, arrays: tuple[np.ndarray, ...]) -> list[np.ndarray]:
    """The oracle's float64 gradients: by torch where it is installed (the same function, and no JAX trace)."""
    try:
        import torch  # noqa: F401
    except ImportError:
        return _grads(framework, oracle, arrays)
    return _grads("torch", oracle, arrays)


def _assert_close(grads: list[np.ndarray], expected: list[np.ndarray], names: Any, tol: float) -> None:
    """Each gradient within ``tol`` of its reference, relative to max |g_ref|.

    That denominator is floored at 1e-3 of the largest reference gradient of them all: where every key
    of a row ties, every latent summarises the same values and d/dq is 0 but for rounding.
    """
    floor = 1e-3 * max(float(np.max(np.abs(g), initial=0.0)) for g in expected)
    for name, g, g_ref in zip(names, grads, expected, strict=True):
        assert np.all(np.isfinite(g)), f"d/d{name} is not finite"
        error = _relative(g, g_ref, floor)
        assert error <= tol, f"d/d{name}: {error:.2e}"


def _causal(chunk_size: int, **options: np.ndarray) -> Form:
    """latte_ref.causal at ``chunk_size``, with NumPy ``options`` (mask, segment_ids) in the framework's arrays."""
    return lambda q, k, v, to: latte_ref.causal(q, k, v, chunk_size=chunk_size, **_to(to, options))


def _recurrent(**options: np.ndarray) -> Form:
    return lambda q, k, v, to: latte_ref.recurrent(q, k, v, **_to(to, options))


def _definition(causal: bool, **options: np.ndarray) -> Form:
    return lambda q, k, v, to: latte_ref.definition(q, k, v, causal=causal, **_to(to, options))


def _bidirectional(**options: np.ndarray) -> Form:
    return lambda q, k, v, to: latte_ref.bidirectional(q, k, v, **_to(to, options))


def _to(to: Callable[[np.ndarray], Any], options: dict[str, np.ndarray]) -> dict[str, Any]:
    return {name: to(a) for name, a in options.items()}


def _qkv(
    batch: tuple[int, ...], n_tokens: int, keys: np.ndarray | None = None, *, seed: int = 0
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Random q (H = 1, L = 3) and v (D = 2) of (*batch, T, ...); k as given, or all zero: every key tied."""
    rng = np.random.default_rng(seed)
    q = rng.normal(size=(*batch, n_tokens, 1, 3))
    v = rng.normal(size=(*batch, n_tokens, 1, 2))
    return q, np.zeros_like(q) if keys is None else keys, v


def _grid_keys(batch: tuple[int, ...], n_tokens: int, *, seed: int = 1) -> np.ndarray:
    """Keys (*batch, T, 1, 3) on the grid {-1, -0.5, 0, 0.5, 1}: ties everywhere."""
    return 0.5 * np.random.default_rng(seed).integers(-2, 3, size=(*batch, n_tokens, 1, 3)).astype(np.float64)


# --- tied keys -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("framework", "chunk_size"), RUNS)
def test_tied_keys_give_the_key_gradients_worked_out_by_hand(framework, chunk_size):
    """At k = 0 and L = 1, y_t = mean(v_1..v_t), so d(sum_t y_t)/dk_s = sum_{t >= s} (v_s - y_t) / t."""
    q, k, v = np.zeros((3, 1, 1)), np.zeros((3, 1, 1)), np.arange(1.0, 4.0).reshape(3, 1, 1)
    _, dk, dv = _grads(framework, _causal(chunk_size), (q, k, v), readout=False)
    np.testing.assert_allclose(dk.ravel(), [-7 / 12, 1 / 4, 1 / 3], rtol=1e-12)
    np.testing.assert_allclose(dv.ravel(), [11 / 6, 5 / 6, 1 / 3], rtol=1e-12)


@pytest.mark.parametrize(("framework", "chunk_size"), RUNS)
def test_gradients_agree_with_the_recurrence_when_every_key_is_tied(framework, chunk_size):
    arrays = _qkv((2,), LENGTH[framework])
    _assert_same_grads(framework, _causal(chunk_size), _recurrent(), arrays)


@pytest.mark.parametrize("framework", FRAMEWORKS)
def test_definition_and_bidirectional_gradients_agree_when_every_key_is_tied(framework):
    arrays = _qkv((2,), LENGTH[framework])
    _assert_same_grads(framework, _definition(causal=True), _recurrent(), arrays)
    _assert_same_grads(framework, _bidirectional(), _definition(causal=False), arrays)


@pytest.mark.parametrize("chunk_size", CHUNK_SIZES)
def test_gradients_agree_with_the_recurrence_for_keys_on_a_grid(chunk_size):
    """T = 64 keys that are multiples of 0.5: ties between tokens, chunks and running maxima (JAX: the property)."""
    framework = "torch"
    arrays = _qkv((2,), 64, _grid_keys((2,), 64))
    _assert_same_grads(framework, _causal(chunk_size), _recurrent(), arrays)


@pytest.mark.parametrize(("framework", "n_tokens"), [("torch", 64), ("jax", 12)])
def test_definition_and_bidirectional_gradients_agree_for_keys_on_a_grid(framework, n_tokens):
    arrays = _qkv((2,), n_tokens, _grid_keys((2,), n_tokens))
    _assert_same_grads(framework, _definition(causal=True), _recurrent(), arrays)
    _assert_same_grads(framework, _bidirectional(), _definition(causal=False), arrays)


# --- keys near the factoring bound ------------------------------------------------------------------------------


def _rising_keys(chunk_size: int, fraction: float, dtype: str) -> np.ndarray:
    """Keys (2, T, 1, 3), T = max(2C + 2, 12): at most 0, 0 at each chunk's first token, then rises.

    Latent 0 rises in the first chunk (at token C // 2, or the second chunk when C = 1), latent 1
    in the second (at C + C // 2); no key rises more than ``fraction * factoring_bound`` above the
    running max at its chunk's first token, and the tokens at the rise rise exactly that much.
    """
    bound = factoring_bound(np_namespace, np.dtype(dtype), chunk_size)
    n_tokens = max(2 * chunk_size + 2, 12)
    k = -np.random.default_rng(5).uniform(0.0, 1.0, size=(2, n_tokens, 1, 3))
    k[:, ::chunk_size] = 0.0
    for latent, at in ((0, max(chunk_size // 2, 1)), (1, chunk_size + max(chunk_size // 2, 1))):
        k[:, at, :, latent] = 0.0
        k[:, at:, :, latent] += fraction * bound
    return k


@pytest.mark.parametrize(("framework", "chunk_size", "fraction"), NEAR_THE_BOUND)
def test_gradients_agree_with_the_recurrence_for_keys_near_the_factoring_bound(framework, fraction, chunk_size):
    """float64: the keys before a rise of hundreds have gradients of ~exp(-rise), and must keep them."""
    keys = _rising_keys(chunk_size, fraction, "float64")
    arrays = _qkv((2,), keys.shape[-3], keys)
    _assert_same_grads(framework, _causal(chunk_size), _recurrent(), arrays)


@pytest.mark.parametrize(("framework", "chunk_size", "fraction"), NEAR_THE_BOUND)
def test_float32_gradients_near_the_factoring_bound_agree_with_the_float64_recurrence(framework, fraction, chunk_size):
    keys = _rising_keys(chunk_size, fraction, "float32")
    arrays = tuple(a.astype(np.float32).astype(np.float64) for a in _qkv((2,), keys.shape[-3], keys))
    grads = _grads(framework, _causal(chunk_size), arrays, dtype="float32")
    _assert_close(grads, _oracle_grads(framework, _recurrent(), arrays), "qkv", TOL_FLOAT32)


@pytest.mark.parametrize(("framework", "chunk_size", "rise"), HUNDREDS)
def test_gradients_agree_for_keys_hundreds_above_their_chunk_reference(framework, chunk_size, rise):
    """The issue's k = [0, 400]: the truth for the first key is ~1e-174, and it came out as -2 or 2."""
    keys = np.zeros((2, LENGTH[framework], 1, 3))
    keys[:, 1:, :, 0] = rise  # latent 0: a rise at the second token, inside the first chunk (C > 1)
    keys[:, 1:, :, 1] = np.linspace(0.0, rise, LENGTH[framework] - 1)[:, None]  # latent 1: a ramp to it
    _assert_same_grads(framework, _causal(chunk_size), _recurrent(), _qkv((2,), LENGTH[framework], keys))


def test_the_factoring_bound_takes_the_chunk_size():
    """The bound, and with it the tests above, depends on C (keyword or positional); it shrinks as C grows."""
    for dtype in (np.float32, np.float64):
        bounds = [factoring_bound(np_namespace, np.dtype(dtype), chunk_size=c) for c in CHUNK_SIZES]
        assert bounds == [factoring_bound(np_namespace, np.dtype(dtype), c) for c in CHUNK_SIZES]
        assert all(b > 0 for b in bounds) and bounds == sorted(bounds, reverse=True)
    assert factoring_bound(np_namespace, np.dtype(np.float64), 2) < 360  # keys 360 above R gave gradients of -2 and 2


# --- carried states, packed rows, masks ------------------------------------------------------------------------------


@pytest.mark.parametrize(("framework", "chunk_size"), RUNS)
def test_gradients_flow_through_a_carried_state_whose_running_max_equals_later_keys(framework, chunk_size):
    """The first 5 tokens' running max is 1 in every latent; later keys meet it again, at chunks' first tokens too."""
    n_tokens = LENGTH[framework]
    keys = _grid_keys((2,), n_tokens)
    keys[..., :5, :, :] = np.minimum(keys[..., :5, :, :], 0.5)
    keys[..., 2, :, :] = 1.0
    later = np.arange(5, n_tokens)
    keys[..., later[((later - 5) % 3 == 0) | ((later - 5) % 16 == 0)], :, :] = 1.0

    def streamed(q, k, v, to):
        head = (a[..., :5, :, :] for a in (q, k, v))
        y_head, state = latte_ref.causal(*head, chunk_size=chunk_size, return_state=True)
        tail = (a[..., 5:, :, :] for a in (q, k, v))
        return _concat(y_head, latte_ref.causal(*tail, chunk_size=chunk_size, state=state))

    _assert_same_grads(framework, streamed, _recurrent(), _qkv((2,), n_tokens, keys))


@pytest.mark.parametrize(("framework", "chunk_size"), RUNS)
@pytest.mark.parametrize("rise", [0.0, 400.0], ids=["flat", "beyond-the-bound"])
def test_gradients_flow_through_a_state_made_by_differentiable_code(framework, chunk_size, rise):
    """A state from ``recurrent`` and ``combine`` carries its running max's gradient; the causal form keeps it.

    (The sharded forms build their states this way.) With ``rise``, keys in the tail lie hundreds
    above their chunk's reference, and the tail's chunks take the per-token form.
    """
    n_tokens = LENGTH[framework]
    keys = _grid_keys((2,), n_tokens)
    keys[..., 9::7, :, :] += rise

    def streamed(q, k, v, to):
        def part(start, stop):
            return (a[..., start:stop, :, :] for a in (q, k, v))

        y_head, head = latte_ref.recurrent(*part(0, 6), return_state=True)
        y_middle, middle = latte_ref.recurrent(*part(6, 8), return_state=True)
        y_middle = latte_ref.recurrent(*part(6, 8), state=head)  # middle alone has no history
        y_tail = latte_ref.causal(*part(8, None), chunk_size=chunk_size, state=latte_ref.combine(head, middle))
        return _concat(_concat(y_head, y_middle), y_tail)

    _assert_same_grads(framework, streamed, _recurrent(), _qkv((2,), n_tokens, keys))


def _concat(head: Any, tail: Any) -> Any:
    """head and tail joined along T (axis -3), in their framework."""
    from array_api_compat import array_namespace

    return array_namespace(head).concat([head, tail], axis=-3)


PACKING = np.array([[0, 0, 0, 1, 1, 2, 2, 2, 2, 2, 2, 3], [0, 1, 1, 1, 1, 1, 1, 1, 2, 2, 3, 3]])
MASK = np.array([[True, True, False, True, True, True, False, False, True, True, True, True]] * 2)
MASK[1, :3] = False


def _packing(framework: str) -> np.ndarray:
    """PACKING (2, 12) repeated to the framework's length, the ids of every repeat above the last's."""
    return np.concatenate([PACKING + 4 * i for i in range(LENGTH[framework] // 12)], axis=-1)


def _mask(framework: str) -> np.ndarray:
    return np.concatenate([MASK] * (LENGTH[framework] // 12), axis=-1)


@pytest.mark.parametrize(("framework", "chunk_size"), RUNS)
def test_gradients_agree_on_packed_rows_with_flat_keys(framework, chunk_size):
    arrays = _qkv((2,), LENGTH[framework])
    ids = {"segment_ids": _packing(framework)}
    _assert_same_grads(framework, _causal(chunk_size, **ids), _recurrent(**ids), arrays)


@pytest.mark.parametrize("framework", FRAMEWORKS)
def test_bidirectional_and_definition_gradients_agree_on_packed_rows_with_flat_keys(framework):
    arrays = _qkv((2,), LENGTH[framework])
    ids = {"segment_ids": _packing(framework)}
    _assert_same_grads(framework, _bidirectional(**ids), _definition(causal=False, **ids), arrays)
    _assert_same_grads(framework, _definition(causal=True, **ids), _recurrent(**ids), arrays)


@pytest.mark.parametrize(("framework", "chunk_size"), RUNS)
def test_gradients_agree_under_a_mask_with_flat_keys(framework, chunk_size):
    arrays = _qkv((2,), LENGTH[framework])
    options = {"mask": _mask(framework)}
    _assert_same_grads(framework, _causal(chunk_size, **options), _recurrent(**options), arrays)
    both = {"mask": _mask(framework), "segment_ids": _packing(framework)}
    _assert_same_grads(framework, _causal(chunk_size, **both), _recurrent(**both), arrays)


@pytest.mark.parametrize("framework", FRAMEWORKS)
def test_bidirectional_gradients_agree_under_a_mask_with_flat_keys(framework):
    arrays = _qkv((2,), LENGTH[framework])
    mask = _mask(framework)
    for options in ({"mask": mask}, {"mask": mask, "segment_ids": _packing(framework)}):
        _assert_same_grads(framework, _bidirectional(**options), _definition(causal=False, **options), arrays)


# --- torch gradcheck ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "form",
    [
        *(pytest.param(_causal(c), id=f"causal-C{c}") for c in (1, 2, 3)),
        pytest.param(_causal(2, segment_ids=np.array([0, 0, 0, 1, 1, 1])), id="causal-packed"),
        pytest.param(_bidirectional(segment_ids=np.array([0, 0, 0, 1, 1, 1])), id="bidirectional-packed"),
        pytest.param(_bidirectional(), id="bidirectional"),
        pytest.param(_definition(causal=True), id="definition"),
    ],
)
def test_torch_gradcheck_with_tied_keys(form):
    torch = pytest.importorskip("torch")
    keys = np.zeros((6, 1, 2))
    keys[3:, :, 1] = 0.5  # latent 1: two ties, the second above the first
    rng = np.random.default_rng(2)
    arrays = (rng.normal(size=(6, 1, 2)), keys, rng.normal(size=(6, 1, 2)))
    q, k, v = (torch.tensor(a, requires_grad=True) for a in arrays)
    assert torch.autograd.gradcheck(lambda q, k, v: form(q, k, v, torch.as_tensor), (q, k, v))


@pytest.mark.parametrize("chunk_size", [2, 3])
def test_torch_gradcheck_near_the_factoring_bound(chunk_size):
    torch = pytest.importorskip("torch")
    keys = _rising_keys(chunk_size, 0.9, "float64")
    q, k, v = (torch.tensor(a[0], requires_grad=True) for a in _qkv((2,), keys.shape[-3], keys))
    assert torch.autograd.gradcheck(lambda q, k, v: _causal(chunk_size)(q, k, v, torch.as_tensor), (q, k, v))


# --- the layers ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("causal", [True, False], ids=["causal", "bidirectional"])
def test_torch_layer_gradients_agree_with_the_oracle_when_its_key_weights_are_zero(causal):
    """wk = 0 ties every key; the layer's gradients (x and all four weights) match its oracle form's."""
    torch = pytest.importorskip("torch")
    from latte_ref.layers.torch import LatteAttention

    torch.manual_seed(0)
    layer = LatteAttention(8, 4, 2, causal=causal, dtype=torch.float64)
    with torch.no_grad():
        layer.wk.zero_()
    x = torch.randn(2, 150, 8, dtype=torch.float64)  # three chunks of the default 64
    readout = torch.randn(2, 150, 8, dtype=torch.float64)
    oracle = "recurrent" if causal else "definition"
    packing = torch.as_tensor(np.repeat([[0] * 40 + [1] * 90 + [2] * 20], 2, axis=0))

    def grads(run: Callable[[Any], Any]) -> list[np.ndarray]:
        x_ = x.clone().requires_grad_(True)
        layer.zero_grad()
        (run(x_) * readout).sum().backward()
        return [a.grad.numpy().copy() for a in (x_, layer.wq, layer.wk, layer.wv, layer.wo)]

    for options in ({}, {"segment_ids": packing}):
        fast = grads(lambda x_, o=options: layer(x_, **o))
        slow = grads(
            lambda x_, o=options: latte_ref.latte_attention(x_, layer.to_params(), causal=causal, form=oracle, **o)
        )
        _assert_close(fast, slow, ("x", "wq", "wk", "wv", "wo"), TOL)


@pytest.mark.parametrize("causal", [True, False], ids=["causal", "bidirectional"])
def test_flax_layer_gradients_agree_with_the_oracle_when_its_key_weights_are_zero(causal):
    jax = pytest.importorskip("jax")
    pytest.importorskip("flax")
    from flax import nnx

    from latte_ref.layers.flax import LatteAttention

    jnp = jax.numpy
    params = latte_ref.init_params(8, 4, 2, seed=1)
    layer = LatteAttention.from_params(
        latte_ref.LatteParams(params.wq, np.zeros_like(params.wk), params.wv, params.wo, n_heads=2), causal=causal
    )
    rng = np.random.default_rng(4)
    x, readout = jnp.asarray(rng.normal(size=(2, 13, 8))), jnp.asarray(rng.normal(size=(2, 13, 8)))

    # Both compiled whole (see _grads); the oracle is the definition, whose trace is short.
    fast = nnx.jit(nnx.grad(lambda m, x: (m(x) * readout).sum(), argnums=(0, 1)))(layer, x)
    slow = jax.jit(
        jax.grad(
            lambda p, x: (latte_ref.latte_attention(x, p, causal=causal, form="definition") * readout).sum(),
            argnums=(0, 1),
        )
    )(layer.to_params(), x)
    names = ("wq", "wk", "wv", "wo")
    (fast_weights, fast_x), (slow_params, slow_x) = fast, slow
    grads = [np.asarray(fast_x), *(np.asarray(fast_weights[name][...]) for name in names)]
    _assert_close(
        grads, [np.asarray(slow_x), *(np.asarray(getattr(slow_params, name)) for name in names)], ("x", *names), TOL
    )


# --- a property over keys on a small grid -------------------------------------------------------------------------


@st.composite
def _tied_problems(draw: st.DrawFn, *, fixed_shape: bool = False) -> tuple[tuple[np.ndarray, ...], Any, int]:
    """(q, k, v), a mask or None, and a chunk size; keys from {-1, -0.5, 0, 0.5, 1}, so that ties are common.

    ``fixed_shape``: one shape (2, 12, 1, 3) and chunk sizes 3 and 16 only, which JAX traces once each.
    """
    if fixed_shape:
        batch, n_tokens, latents, chunk_size = (2,), 12, 3, draw(st.sampled_from([3, 16]))
    else:
        batch, n_tokens = draw(st.sampled_from([(), (2,)])), draw(st.integers(1, 12))
        latents, chunk_size = draw(st.integers(1, 3)), draw(st.integers(1, 8))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    q = rng.normal(size=(*batch, n_tokens, 1, latents))
    k = 0.5 * rng.integers(-2, 3, size=q.shape).astype(np.float64)
    v = rng.normal(size=(*batch, n_tokens, 1, 2))
    mask = rng.random(size=(*batch, n_tokens)) < 0.8 if draw(st.booleans()) else None
    return (q, k, v), mask, chunk_size


def _property(framework: str, problem: tuple[tuple[np.ndarray, ...], Any, int]) -> None:
    arrays, mask, chunk_size = problem
    options = {} if mask is None else {"mask": mask}
    if framework == "jax":  # compiled once per chunk size, the mask an argument (all True for none)
        every = np.ones(arrays[0].shape[:-2], dtype=bool) if mask is None else mask
        grads = [np.asarray(g) for g in _jax_causal_grad(chunk_size)(*arrays, every)]
    else:
        grads = _grads(framework, _causal(chunk_size, **options), arrays)
    _assert_close(grads, _oracle_grads(framework, _recurrent(**options), arrays), "qkv", TOL)


@functools.cache
def _jax_causal_grad(chunk_size: int) -> Any:
    """jit(grad) of the loss of :func:`_grads` through causal, for inputs (2, 12, 1, 3) and a mask (2, 12)."""
    import jax

    readout = jax.numpy.asarray(np.random.default_rng(11).normal(size=(2, 12, 1, 2)))

    def loss(q: Any, k: Any, v: Any, mask: Any) -> Any:
        return (latte_ref.causal(q, k, v, mask=mask, chunk_size=chunk_size) * readout).sum()

    return jax.jit(jax.grad(loss, argnums=(0, 1, 2)))


@given(_tied_problems())
def test_torch_causal_gradients_agree_with_the_recurrence_on_grid_keys(problem):
    pytest.importorskip("torch")
    _property("torch", problem)


@settings(max_examples=max(10, settings.default.max_examples // 4))  # a quarter: each example calls JAX anew
@given(_tied_problems(fixed_shape=True))
def test_jax_causal_gradients_agree_with_the_recurrence_on_grid_keys(problem):
    pytest.importorskip("jax")
    _property("jax", problem)
