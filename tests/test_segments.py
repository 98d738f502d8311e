"""Packed sequences: with ``segment_ids``, every form equals running each document on its own."""

from __future__ import annotations

from itertools import pairwise
from typing import Any

import numpy as np
import pytest

import latte_ref
from latte_ref.testing.inputs import random_qkv
from latte_ref.testing.tolerance import relative_error

T = 40
# Two rows packed differently: documents of length 1, documents that cross chunks of 3 and 16, one document alone.
PACKINGS = [[0, 1, 2, 7, 8, 25, 26, 40], [0, 17, 18, 33, 40]]
CHUNK_SIZES = [1, 3, 16]


def _documents(cu: list[int]) -> list[slice]:
    return [slice(start, stop) for start, stop in pairwise(cu)]


def _ids(packings: list[list[int]] = PACKINGS) -> np.ndarray:
    return np.stack([np.asarray(latte_ref.segment_ids_from_cu_seqlens(cu)) for cu in packings])


def _forms(chunk_size: int) -> dict[str, Any]:
    return {
        "causal": lambda q, k, v, **kw: latte_ref.causal(q, k, v, chunk_size=chunk_size, **kw),
        "recurrent": latte_ref.recurrent,
        "bidirectional": latte_ref.bidirectional,
        "definition-causal": lambda q, k, v, **kw: latte_ref.definition(q, k, v, causal=True, **kw),
        "definition-bidirectional": lambda q, k, v, **kw: latte_ref.definition(q, k, v, causal=False, **kw),
    }


def _tokens(arrays: tuple[Any, ...], start: int, stop: int) -> list[Any]:
    """Tokens start..stop-1 of arrays (..., T, H, X), indexed as the Array API allows."""
    return [a[..., start:stop, :, :] for a in arrays]


def _separately(q: np.ndarray, k: np.ndarray, v: np.ndarray, mask: np.ndarray | None, causal: bool) -> np.ndarray:
    """Each document of each row run on its own by the float64 definition: (B, T, H, D)."""
    y = np.zeros((*q.shape[:-1], v.shape[-1]))
    for row, cu in enumerate(PACKINGS):
        for doc in _documents(cu):
            doc_mask = None if mask is None else mask[row, doc]
            y[row, doc] = latte_ref.definition(q[row, doc], k[row, doc], v[row, doc], causal=causal, mask=doc_mask)
    return y


@pytest.mark.parametrize("chunk_size", CHUNK_SIZES)
@pytest.mark.parametrize("form", list(_forms(1)))
@pytest.mark.parametrize("padded", [False, True], ids=["packed", "packed+padded"])
def test_packed_rows_equal_each_document_on_its_own(case, rng, form, chunk_size, padded):
    if chunk_size != CHUNK_SIZES[0] and form != "causal":
        pytest.skip("only causal has a chunk size")
    q, k, v = random_qkv(rng, (2,), T, 2, 3, 4, scale=3.0)
    mask = rng.random((2, T)) < 0.75 if padded else None
    arrays = [case.array(a) for a in (q, k, v)]
    exact = [case.numpy(a) for a in arrays]  # the inputs as the backend holds them
    options = {"segment_ids": case.array(_ids())}
    if mask is not None:
        options["mask"] = case.array(mask)
    y = case.numpy(_forms(chunk_size)[form](*arrays, **options))
    expected = _separately(*exact, mask, causal="bidirectional" not in form)
    assert relative_error(y, expected) <= case.tol


@pytest.mark.parametrize("form", ["causal", "recurrent"])
@pytest.mark.parametrize("cut", [5, 20, 30])
def test_a_stream_cut_inside_a_document_equals_the_uncut_run(case, rng, form, cut):
    q, k, v = (case.array(a) for a in random_qkv(rng, (2,), T, 2, 3, 4, scale=3.0))
    ids = case.array(_ids())
    run = latte_ref.causal if form == "causal" else latte_ref.recurrent
    options = {"chunk_size": 3} if form == "causal" else {}
    whole, final = run(q, k, v, segment_ids=ids, return_state=True, **options)
    head, state = run(*_tokens((q, k, v), 0, cut), segment_ids=ids[:, :cut], return_state=True, **options)
    tail, state = run(*_tokens((q, k, v), cut, T), segment_ids=ids[:, cut:], state=state, return_state=True, **options)
    assert relative_error(case.numpy(case.xp.concat([head, tail], axis=1)), case.numpy(whole)) <= case.tol
    for got, expected in zip(state, final, strict=True):
        np.testing.assert_allclose(case.numpy(got), case.numpy(expected), rtol=10 * case.tol, atol=0)


@pytest.mark.parametrize("form", ["causal", "recurrent"])
def test_a_stream_cut_at_a_boundary_starts_afresh_with_no_state(case, rng, form):
    cut = 17  # where row 1's second document starts
    q, k, v = (case.array(a) for a in random_qkv(rng, (), T, 2, 3, 4, scale=3.0))
    ids = case.array(_ids()[1])
    run = latte_ref.causal if form == "causal" else latte_ref.recurrent
    whole = case.numpy(run(q, k, v, segment_ids=ids))
    tail = case.numpy(run(*_tokens((q, k, v), cut, T), segment_ids=ids[cut:], state=None))
    assert relative_error(tail, whole[cut:]) <= case.tol


def test_the_state_after_a_packed_row_is_its_last_documents(case, rng):
    q, k, v = (case.array(a) for a in random_qkv(rng, (), T, 2, 3, 4))
    ids = case.array(_ids()[1])
    _, packed = latte_ref.causal(q, k, v, segment_ids=ids, return_state=True)
    _, alone = latte_ref.causal(*_tokens((q, k, v), 33, T), return_state=True)
    for got, expected in zip(packed, alone, strict=True):
        np.testing.assert_allclose(case.numpy(got), case.numpy(expected), rtol=10 * case.tol, atol=0)


@pytest.mark.parametrize("form", list(_forms(3)))
def test_a_nan_stays_in_its_document(case, rng, form):
    q, k, v = random_qkv(rng, (), T, 2, 3, 4)
    v[10, 0, 1] = np.nan  # in row 1's first document, [0, 17)
    y = case.numpy(_forms(3)[form](*(case.array(a) for a in (q, k, v)), segment_ids=case.array(_ids()[1])))
    assert np.all(np.isfinite(y[17:])), "the nan left its document"
    assert np.all(np.isnan(y[10:17, 0, 1])) or "bidirectional" in form


def test_decreasing_ids_are_refused_where_they_can_be_read(case, rng):
    if case.backend.name in ("dask", "jax"):
        pytest.skip("ids are read only where reading is free: not on lazy arrays (see test_lazy_ids_are_runs)")
    q, k, v = (case.array(a) for a in random_qkv(rng, (), 6, 1, 2, 3))
    ids = case.array(np.array([0, 0, 1, 1, 0, 0]))
    for form in _forms(3).values():
        with pytest.raises(ValueError, match="segment_ids"):
            form(q, k, v, segment_ids=ids)


def test_lazy_ids_are_runs(rng):
    """Where ids are not read (under jax.jit), every run of equal ids is a segment, in every form alike."""
    jax = pytest.importorskip("jax")
    q, k, v = random_qkv(rng, (), 6, 1, 2, 3)
    decreasing, in_order = np.array([0, 0, 1, 1, 0, 0]), np.array([0, 0, 1, 1, 2, 2])
    for name, form in _forms(3).items():
        jitted = jax.jit(lambda q, k, v, ids, form=form: form(q, k, v, segment_ids=ids))
        y = np.asarray(jitted(q, k, v, decreasing))
        causal = "bidirectional" not in name
        np.testing.assert_allclose(y, latte_ref.definition(q, k, v, causal=causal, segment_ids=in_order), rtol=1e-5)


def test_bad_segment_ids_are_refused(rng):
    q, k, v = random_qkv(rng, (2,), 6, 1, 2, 3)
    with pytest.raises(TypeError, match="segment_ids must be an integer array"):
        latte_ref.causal(q, k, v, segment_ids=np.zeros((2, 6)))
    with pytest.raises(ValueError, match=r"segment_ids must have shape \(2, 6\)"):
        latte_ref.bidirectional(q, k, v, segment_ids=np.zeros(6, dtype=np.int64))
    with pytest.raises(ValueError, match="segment_ids needs q and k of one length"):
        latte_ref.bidirectional(q, k[:, :4], v[:, :4], segment_ids=np.zeros((2, 6), dtype=np.int64))


def test_segment_ids_from_cu_seqlens():
    ids = latte_ref.segment_ids_from_cu_seqlens([0, 5, 22, 31, 40])
    assert ids.shape == (40,)
    np.testing.assert_array_equal(np.bincount(ids), [5, 17, 9, 9])
    np.testing.assert_array_equal(latte_ref.segment_ids_from_cu_seqlens(np.array([0, 2, 2, 3])), [0, 0, 2])
    assert latte_ref.segment_ids_from_cu_seqlens([0]).shape == (0,)
    for bad in ([1, 3], [0, 3, 2], np.array([0.0, 2.0])):
        with pytest.raises(ValueError, match="cu_seqlens"):
            latte_ref.segment_ids_from_cu_seqlens(bad)


def test_segment_ids_from_cu_seqlens_keeps_the_namespace():
    torch = pytest.importorskip("torch")
    ids = latte_ref.segment_ids_from_cu_seqlens(torch.tensor([0, 2, 5]))
    assert isinstance(ids, torch.Tensor) and ids.tolist() == [0, 0, 1, 1, 1]
    assert isinstance(latte_ref.segment_ids_from_cu_seqlens([0, 2], xp=torch), torch.Tensor)


# -- gradients ------------------------------------------------------------------------------------

GRADIENT_FORMS = {
    "causal": lambda q, k, v, **kw: latte_ref.causal(q, k, v, chunk_size=3, **kw),
    "recurrent": latte_ref.recurrent,
    "bidirectional": latte_ref.bidirectional,
}


def _gradient_problem() -> tuple[np.ndarray, ...]:
    rng = np.random.default_rng(11)
    q, k, v = random_qkv(rng, (2,), T, 2, 3, 4, scale=2.0)
    weights = rng.normal(size=(2, T, 2, 4))  # a random linear read-out makes every output matter
    return q, k, v, weights


def _torch_gradients(form: Any, packed: bool) -> list[np.ndarray]:
    """Gradients of sum(weights * y) for the packed rows, or for every document run on its own."""
    torch = pytest.importorskip("torch")
    q, k, v, weights = _gradient_problem()
    qkv = [torch.tensor(a, requires_grad=True) for a in (q, k, v)]
    if packed:
        y = form(*qkv, segment_ids=torch.tensor(_ids()))
    else:
        rows = []
        for row, cu in enumerate(PACKINGS):
            docs = _documents(cu)
            rows.append(torch.cat([form(*(a[row, doc] for a in qkv)) for doc in docs]))
        y = torch.stack(rows)
    (y * torch.tensor(weights)).sum().backward()
    return [a.grad.numpy() for a in qkv]


def _jax_gradients(form: Any, packed: bool) -> list[np.ndarray]:
    jax = pytest.importorskip("jax")
    jnp = jax.numpy
    q, k, v, weights = _gradient_problem()
    ids = jnp.asarray(_ids())

    def loss(q: Any, k: Any, v: Any) -> Any:
        if packed:
            y = form(q, k, v, segment_ids=ids)
        else:
            rows = []
            for row, cu in enumerate(PACKINGS):
                docs = _documents(cu)
                rows.append(jnp.concatenate([form(q[row, d], k[row, d], v[row, d]) for d in docs]))
            y = jnp.stack(rows)
        return jnp.sum(y * weights)

    grads = jax.grad(loss, argnums=(0, 1, 2))(*(jnp.asarray(a) for a in (q, k, v)))  # float64: tests run in x64
    return [np.asarray(g) for g in grads]


@pytest.mark.parametrize("framework", ["torch", "jax"])
@pytest.mark.parametrize("form", list(GRADIENT_FORMS))
def test_packed_gradients_equal_those_of_the_documents(framework, form):
    gradients = _torch_gradients if framework == "torch" else _jax_gradients
    for name, packed, alone in zip(
        "qkv", gradients(GRADIENT_FORMS[form], True), gradients(GRADIENT_FORMS[form], False), strict=True
    ):
        assert relative_error(packed, alone) <= 1e-12, name


# -- the layers -----------------------------------------------------------------------------------


@pytest.mark.parametrize("causal", [True, False], ids=["causal", "bidirectional"])
def test_the_torch_layer_takes_packed_rows(causal):
    torch = pytest.importorskip("torch")
    from latte_ref.layers.torch import LatteAttention

    layer = LatteAttention(16, 8, 2, causal=causal, dtype=torch.float64)
    x = torch.randn(2, T, 16, dtype=torch.float64)
    y = layer(x, segment_ids=torch.tensor(_ids()))
    for row, cu in enumerate(PACKINGS):
        for doc in _documents(cu):
            assert relative_error(y[row, doc].detach().numpy(), layer(x[row, doc]).detach().numpy()) <= 1e-12


@pytest.mark.parametrize("causal", [True, False], ids=["causal", "bidirectional"])
def test_the_model_takes_packed_rows(causal):
    import latte_ref.model as lm

    model = lm.init_model(vocab_size=11, d_model=16, n_layers=2, n_heads=2, n_latents=8)
    tokens = np.random.default_rng(3).integers(0, 11, size=(2, T))
    logits = lm.forward(model, tokens, causal=causal, segment_ids=_ids())
    predictions, total = 0, 0.0
    for row, cu in enumerate(PACKINGS):
        for doc in _documents(cu):
            alone = lm.forward(model, tokens[row, doc], causal=causal)
            assert relative_error(logits[row, doc], alone) <= 1e-12
            if causal and doc.stop - doc.start >= 2:
                n = doc.stop - doc.start - 1
                total += n * float(lm.next_token_loss(model, tokens[row, doc]))
                predictions += n
    if causal:
        packed_loss = float(lm.next_token_loss(model, tokens, segment_ids=_ids()))
        assert abs(packed_loss - total / predictions) <= 1e-12 * total / predictions


@pytest.mark.parametrize("bad", [np.nan, np.inf], ids=["nan", "inf"])
@pytest.mark.parametrize("form", ["causal", "bidirectional"])
def test_a_bad_key_at_a_documents_first_token_stays_in_its_document(case, rng, form, bad):
    """The first key of a piece is its reference: a nan or +inf there must not reach the chunk's other pieces."""
    q, k, v = random_qkv(rng, (), T, 2, 3, 4)
    k[17, 0, 1] = bad  # the first token of row 1's second document, [17, 18), inside a chunk of 16
    k[18, 1, 2] = bad  # and of its third, [18, 33)
    run = _forms(16)[form]
    y = case.numpy(run(*(case.array(a) for a in (q, k, v)), segment_ids=case.array(_ids()[1])))
    exact = [case.numpy(case.array(a)) for a in (q, k, v)]
    for doc in (slice(0, 17), slice(33, 40)):
        alone = latte_ref.definition(*(a[doc] for a in exact), causal=form == "causal")
        assert relative_error(y[doc], alone) <= case.tol


def test_an_infinite_history_stays_in_its_document(rng):
    q, k, v = random_qkv(rng, (), 8, 1, 2, 3)
    _, state = latte_ref.causal(q, k, v, return_state=True)
    state = latte_ref.LatteState(np.full_like(state.running_max, np.inf), state.normaliser, state.numerator)
    ids = np.array([0, 1, 1, 1, 1, 2, 2, 2])
    y = latte_ref.causal(q, k, v, segment_ids=ids, chunk_size=8, state=state)
    assert relative_error(y[1:5], latte_ref.definition(q[1:5], k[1:5], v[1:5], causal=True)) <= 1e-12
