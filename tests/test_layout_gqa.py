"""The forms' ``layout="BHTD"`` and grouped-query K/V heads, on every backend; their errors name the argument."""

from __future__ import annotations

import numpy as np
import pytest

import latte_ref
from latte_ref.testing.tolerance import relative_error

B, T, H, H_KV, L, D = 2, 9, 4, 2, 3, 5


def _inputs(seed: int = 0, heads_kv: int = H):
    rng = np.random.default_rng(seed)
    q = rng.normal(scale=2.0, size=(B, T, H, L))
    k = rng.normal(scale=2.0, size=(B, T, heads_kv, L))
    v = rng.normal(size=(B, T, heads_kv, D))
    mask = np.ones((B, T), dtype=bool)
    mask[1, -3:] = False
    ids = np.broadcast_to(latte_ref.segment_ids_from_cu_seqlens([0, 4, T]), (B, T)).copy()
    return q, k, v, mask, ids


FORMS = {
    "causal": lambda q, k, v, **kw: latte_ref.causal(q, k, v, chunk_size=4, **kw),
    "recurrent": latte_ref.recurrent,
    "bidirectional": latte_ref.bidirectional,
    "definition-causal": lambda q, k, v, **kw: latte_ref.definition(q, k, v, causal=True, **kw),
    "definition": lambda q, k, v, **kw: latte_ref.definition(q, k, v, causal=False, **kw),
}


@pytest.mark.parametrize("extra", ["plain", "mask", "segment_ids"])
@pytest.mark.parametrize("form", list(FORMS))
def test_head_first_layout_is_the_transposed_default(case64, form, extra):
    q, k, v, mask, ids = _inputs()
    kwargs = {"plain": {}, "mask": {"mask": case64.array(mask)}, "segment_ids": {"segment_ids": case64.array(ids)}}
    kw = kwargs[extra]
    q, k, v = (case64.array(a) for a in (q, k, v))
    xp = case64.xp
    expected = case64.numpy(FORMS[form](q, k, v, **kw))
    head_first = [xp.permute_dims(a, (0, 2, 1, 3)) for a in (q, k, v)]
    y = case64.numpy(FORMS[form](*head_first, layout="BHTD", **kw))
    assert y.shape == (B, H, T, D)
    assert relative_error(np.moveaxis(y, 1, 2), expected) <= case64.tol


@pytest.mark.parametrize("layout", ["BTHD", "BHTD"])
@pytest.mark.parametrize("form", list(FORMS))
def test_grouped_kv_heads_equal_repeating_them_by_hand(case64, form, layout):
    q, k, v, mask, _ = _inputs(1, heads_kv=H_KV)
    k_full, v_full = (np.repeat(a, H // H_KV, axis=2) for a in (k, v))  # query head h reads kv head h // 2
    arrays = [q, k, v, k_full, v_full]
    if layout == "BHTD":
        arrays = [np.moveaxis(a, 1, 2) for a in arrays]
    q, k, v, k_full, v_full = (case64.array(a) for a in arrays)
    m = case64.array(mask)
    y = FORMS[form](q, k, v, mask=m, layout=layout)
    expected = FORMS[form](q, k_full, v_full, mask=m, layout=layout)
    assert relative_error(case64.numpy(y), case64.numpy(expected)) <= case64.tol


def test_grouped_kv_heads_in_states_step_and_attention_matrix():
    q, k, v, _, _ = _inputs(2, heads_kv=1)
    k_full, v_full = (np.repeat(a, H, axis=2) for a in (k, v))
    y, state = latte_ref.causal(q[:, :5], k[:, :5], v[:, :5], return_state=True)
    assert state.numerator.shape == (B, H, L, D)  # states have the query heads
    tail = latte_ref.causal(q[:, 5:], k[:, 5:], v[:, 5:], state=state)
    np.testing.assert_allclose(np.concatenate([y, tail], 1), latte_ref.causal(q, k_full, v_full), rtol=1e-12)
    y_t, _ = latte_ref.step(q[:, 5], k[:, 5], v[:, 5], state)
    y_t_again, _ = latte_ref.step(q[:, 5], k[:, 5], v[:, 5], state)  # the cached checks repeat the heads too
    np.testing.assert_allclose(y_t, tail[:, 0], rtol=1e-12)
    np.testing.assert_allclose(y_t_again, tail[:, 0], rtol=1e-12)
    a = latte_ref.attention_matrix(q, k, causal=True)
    np.testing.assert_allclose(a, latte_ref.attention_matrix(q, k_full, causal=True), rtol=1e-12)
    a_head_first = latte_ref.attention_matrix(np.moveaxis(q, 1, 2), np.moveaxis(k, 1, 2), causal=True, layout="BHTD")
    np.testing.assert_allclose(a_head_first, a, rtol=1e-12)


def test_grouped_kv_heads_get_gradients_summed_over_their_group():
    torch = pytest.importorskip("torch")
    q, k, v, _, _ = (torch.tensor(a) if isinstance(a, np.ndarray) else a for a in _inputs(3, heads_kv=H_KV))
    k, v = k.requires_grad_(), v.requires_grad_()
    latte_ref.causal(q, k, v).sum().backward()
    k_full = k.detach().repeat_interleave(H // H_KV, dim=2).requires_grad_()
    v_full = v.detach().repeat_interleave(H // H_KV, dim=2).requires_grad_()
    latte_ref.causal(q, k_full, v_full).sum().backward()
    grouped = k_full.grad.reshape(B, T, H_KV, H // H_KV, L).sum(3)
    torch.testing.assert_close(k.grad, grouped)
    torch.testing.assert_close(v.grad, v_full.grad.reshape(B, T, H_KV, H // H_KV, D).sum(3))


@pytest.mark.parametrize("layout", ["bthd", "THD", None, 3])
def test_an_unknown_layout_is_a_one_line_error_naming_it(layout):
    q, k, v, _, _ = _inputs()
    for form in (latte_ref.causal, latte_ref.bidirectional, latte_ref.recurrent):
        with pytest.raises(ValueError, match=r"^layout must be 'BTHD' .* or 'BHTD'") as info:
            form(q, k, v, layout=layout)
        assert "\n" not in str(info.value)


def test_kv_heads_that_do_not_divide_the_query_heads_are_named():
    q, k, v, _, _ = _inputs(heads_kv=3)
    with pytest.raises(ValueError, match=r"^k and v have 3 heads, which must divide the 4 heads of q"):
        latte_ref.causal(q, k, v)
    with pytest.raises(ValueError, match=r"^v must share all axes but the last with k"):
        latte_ref.causal(q, k, v[:, :, :2])


def test_head_first_arrays_given_as_time_major_name_the_layout():
    q, k, v, mask, ids = _inputs()
    head_first = [np.moveaxis(a, 1, 2) for a in (q, k, v)]
    for kwargs in ({"mask": mask}, {"segment_ids": ids}):  # the mask says T, which q has on the other axis
        with pytest.raises(ValueError, match=r"fit layout='BHTD' \(\.\.\., H, T, L/D\): pass layout='BHTD'$"):
            latte_ref.causal(*head_first, **kwargs)
    with pytest.raises(ValueError, match=r"fit layout='BTHD' .*: pass layout='BTHD'$"):
        latte_ref.recurrent(q, k, v, mask=mask, layout="BHTD")
    _, state = latte_ref.causal(q, k, v, return_state=True)  # the state says H
    with pytest.raises(ValueError, match=r"pass layout='BHTD'"):
        latte_ref.causal(*head_first, state=state)


def test_one_transposed_array_is_named():
    q, k, v, _, _ = _inputs()
    with pytest.raises(ValueError, match=r"^k looks transposed .* with its T and H axes swapped it fits layout='BTHD'"):
        latte_ref.causal(q, np.moveaxis(k, 1, 2), v)
    with pytest.raises(ValueError, match=r"^v looks transposed"):
        latte_ref.bidirectional(q, k, np.moveaxis(v, 1, 2))


def test_shapes_that_fit_both_layouts_are_taken_as_given():
    rng = np.random.default_rng(4)
    q, k = rng.normal(size=(2, 1, 6, 6, 3))  # T = H: nothing tells the layouts apart, and nothing is wrong
    v = rng.normal(size=(1, 6, 6, 2))
    y = latte_ref.causal(q, k, v, mask=np.ones((1, 6), dtype=bool))
    np.testing.assert_allclose(y, latte_ref.definition(q, k, v, causal=True), rtol=1e-12)
    # Shapes wrong in both layouts keep the usual message.
    with pytest.raises(ValueError, match=r"^q and k must have the same number of latents"):
        latte_ref.causal(q, k[..., :2], v)
