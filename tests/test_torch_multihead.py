"""LatteMultiheadAttention inside torch's Transformer layers, from_module, from_projections, LatteState on torch."""

from __future__ import annotations

import io
import warnings

import pytest

import latte_ref

torch = pytest.importorskip("torch")
nn = torch.nn

from latte_ref.layers.torch import LatteAttention, LatteMultiheadAttention  # noqa: E402

E, HEADS, T = 32, 4, 7


def _padded(batch_first: bool):
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(3, T, E, generator=gen, dtype=torch.float64)
    padding = torch.zeros(3, T, dtype=torch.bool)
    padding[1, 4:] = True
    padding[2, 2:] = True
    return x, padding


def _encoder(batch_first: bool, swap_after_building: bool = False):
    torch.manual_seed(1)
    layer = nn.TransformerEncoderLayer(E, HEADS, dim_feedforward=64, dropout=0.0, batch_first=batch_first)
    layer = layer.double()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch's own note that nested tensors are off for this layer
        if swap_after_building:
            encoder = nn.TransformerEncoder(layer, 2)
            for each in encoder.layers:
                each.self_attn = LatteMultiheadAttention.from_module(each.self_attn)
        else:
            layer.self_attn = LatteMultiheadAttention.from_module(layer.self_attn)
            encoder = nn.TransformerEncoder(layer, 2)
    return encoder


def _time_first(x, batch_first):
    return x if batch_first else x.transpose(0, 1)


@pytest.mark.parametrize("swap_after_building", [False, True], ids=["swapped-first", "swapped-after"])
@pytest.mark.parametrize("mode", ["train", "eval"])
@pytest.mark.parametrize("batch_first", [True, False], ids=["batch-first", "time-first"])
def test_padded_rows_equal_the_same_rows_alone_in_an_encoder(batch_first, mode, swap_after_building):
    encoder = getattr(_encoder(batch_first, swap_after_building), mode)()
    x, padding = _padded(batch_first)
    float_padding = torch.zeros(padding.shape, dtype=torch.float64).masked_fill(padding, float("-inf"))
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the nested-tensor prototype warning (eval, swapped after building)
        y = _time_first(encoder(_time_first(x, batch_first), src_key_padding_mask=padding), batch_first)
        y_float = _time_first(encoder(_time_first(x, batch_first), src_key_padding_mask=float_padding), batch_first)
        for row, length in ((0, T), (1, 4), (2, 2)):
            alone = _time_first(encoder(_time_first(x[row : row + 1, :length], batch_first)), batch_first)
            torch.testing.assert_close(y[row, :length], alone[0], rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(y_float[:, :2], y[:, :2], rtol=1e-12, atol=1e-12)
    if mode == "eval":  # the same as in training (dropout 0): torch's fused softmax path was not taken
        with torch.no_grad():
            y_train = _time_first(
                encoder.train()(_time_first(x, batch_first), src_key_padding_mask=padding), batch_first
            )
        for row, length in ((0, T), (1, 4), (2, 2)):
            torch.testing.assert_close(y[row, :length], y_train[row, :length], rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("mode", ["train", "eval"])
@pytest.mark.parametrize("mask_kind", ["float", "bool", "is_causal"])
def test_a_causal_decoder_never_reads_later_tokens(mode, mask_kind):
    torch.manual_seed(2)
    layer = nn.TransformerDecoderLayer(E, HEADS, dim_feedforward=64, dropout=0.0, batch_first=True).double()
    layer.self_attn = LatteMultiheadAttention.from_module(layer.self_attn)
    layer.multihead_attn = LatteMultiheadAttention.from_module(layer.multihead_attn)
    decoder = getattr(nn.TransformerDecoder(layer, 2), mode)()
    x, _ = _padded(True)
    memory = torch.randn(3, 5, E, dtype=torch.float64)
    float_mask = nn.Transformer.generate_square_subsequent_mask(T, dtype=torch.float64)
    masks = {
        "float": {"tgt_mask": float_mask},
        "bool": {"tgt_mask": float_mask == float("-inf")},
        "is_causal": {"tgt_mask": float_mask, "tgt_is_causal": True},
    }
    y = decoder(x, memory, **masks[mask_kind])
    changed = x.clone()
    changed[:, 4:] += 1.0
    y_changed = decoder(changed, memory, **masks[mask_kind])
    torch.testing.assert_close(y_changed[:, :4], y[:, :4], rtol=1e-12, atol=1e-12)
    assert (y_changed[:, 4:] - y[:, 4:]).abs().max() > 1e-3
    torch.testing.assert_close(y, decoder(x, memory, **masks["float"]), rtol=1e-12, atol=1e-12)


def _by_hand(mha, query, key, value, *, causal, keep=None):
    """What LatteMultiheadAttention.from_module(mha) computes, from mha's tensors and the forms (batch first)."""
    w_q, w_k, w_v = mha.in_proj_weight.chunk(3)
    b_q, b_k, b_v = mha.in_proj_bias.chunk(3)
    q = (query @ w_q.T + b_q).unflatten(-1, (HEADS, -1))
    k = (key @ w_k.T + b_k).unflatten(-1, (HEADS, -1))
    v = (value @ w_v.T + b_v).unflatten(-1, (HEADS, -1))
    y = latte_ref.causal(q, k, v, mask=keep) if causal else latte_ref.bidirectional(q, k, v, key_mask=keep)
    return y.flatten(-2) @ mha.out_proj.weight.T + mha.out_proj.bias


@pytest.mark.parametrize("batch_first", [True, False], ids=["batch-first", "time-first"])
def test_from_module_is_the_hand_computation(batch_first):
    torch.manual_seed(3)
    mha = nn.MultiheadAttention(E, HEADS, batch_first=batch_first, dtype=torch.float64)
    with torch.no_grad():
        mha.in_proj_bias.normal_()
        mha.out_proj.bias.normal_()
    latte = LatteMultiheadAttention.from_module(mha)
    x, padding = _padded(True)
    memory = torch.randn(3, 11, E, dtype=torch.float64)
    memory_padding = torch.zeros(3, 11, dtype=torch.bool)
    memory_padding[0, 6:] = True

    def run(query, key, **kwargs):
        out, weights = latte(_time_first(query, batch_first), *(_time_first(key, batch_first),) * 2, **kwargs)
        return _time_first(out, batch_first), weights

    torch.testing.assert_close(run(x, x, is_causal=True)[0], _by_hand(mha, x, x, x, causal=True))
    torch.testing.assert_close(
        run(x, x, key_padding_mask=padding)[0], _by_hand(mha, x, x, x, causal=False, keep=~padding)
    )
    out, weights = run(x, memory, key_padding_mask=memory_padding, need_weights=True)  # cross-attention
    torch.testing.assert_close(out, _by_hand(mha, x, memory, memory, causal=False, keep=~memory_padding))
    assert weights.shape == (3, T, 11)
    torch.testing.assert_close(weights.sum(-1), torch.ones(3, T, dtype=torch.float64))
    assert torch.all(weights[0, :, 6:] == 0)
    _, per_head = run(x, x, need_weights=True, average_attn_weights=False, is_causal=True)
    assert per_head.shape == (3, HEADS, T, T) and torch.all(per_head.triu(1) == 0)
    unbatched, _ = latte(x[0], x[0], x[0], is_causal=True)
    torch.testing.assert_close(unbatched, _by_hand(mha, x, x, x, causal=True)[0])


def test_separate_projection_weights_and_no_bias():
    mha = nn.MultiheadAttention(E, HEADS, kdim=12, vdim=20, bias=False, batch_first=True, dtype=torch.float64)
    latte = LatteMultiheadAttention.from_module(mha)
    assert latte.in_proj_bias is None and latte.out_proj.bias is None
    torch.testing.assert_close(latte.k_proj_weight, mha.k_proj_weight)
    query, key, value = torch.randn(2, 5, E), torch.randn(2, 9, 12), torch.randn(2, 9, 20)
    out, _ = latte.float()(query, key, value)
    assert out.shape == (2, 5, E)
    out.sum().backward()
    assert latte.v_proj_weight.grad is not None


def test_masks_latte_cannot_honour_are_clear_errors():
    latte = LatteMultiheadAttention(E, HEADS, batch_first=True)
    x = torch.randn(2, T, E)
    band = torch.ones(T, T, dtype=torch.bool).triu(3)  # a sliding window: not causal
    with pytest.raises(ValueError, match=r"^attn_mask must be causal"):
        latte(x, x, x, attn_mask=band)
    with pytest.raises(ValueError, match=r"^attn_mask: a float mask must hold only 0 and -inf"):
        latte(x, x, x, attn_mask=torch.randn(T, T))
    with pytest.raises(ValueError, match=r"^key_padding_mask must have shape \(2, 7\)"):
        latte(x, x, x, key_padding_mask=torch.zeros(2, 5, dtype=torch.bool))
    with pytest.raises(ValueError, match=r"^causal attention needs as many keys as queries"):
        latte(x, x[:, :3], x[:, :3], is_causal=True)
    with pytest.raises(NotImplementedError, match="add_bias_kv"):
        LatteMultiheadAttention(E, HEADS, add_bias_kv=True)
    with pytest.raises(ValueError, match=r"^embed_dim must be a multiple of num_heads=5"):
        LatteMultiheadAttention(E, 5)
    with pytest.raises(TypeError, match=r"^mha must be a torch.nn.MultiheadAttention"):
        LatteMultiheadAttention.from_module(nn.Linear(4, 4))
    allow_all = torch.zeros(T, T)  # blocks nothing: bidirectional
    torch.testing.assert_close(latte(x, x, x, attn_mask=allow_all)[0], latte(x, x, x)[0])


def test_from_projections_reads_linear_orientation():
    torch.manual_seed(4)
    q, k = nn.Linear(E, 16, bias=False), nn.Linear(E, 16, bias=False)
    v, o = nn.Linear(E, E, bias=False), nn.Linear(E, E, bias=False)
    layer = LatteAttention.from_projections(q, k, v.weight, o.weight, n_heads=HEADS, causal=True)
    x = torch.randn(2, T, E)
    heads = [proj(x).unflatten(-1, (HEADS, -1)) for proj in (q, k, v)]
    expected = o(latte_ref.causal(*heads).flatten(-2))
    torch.testing.assert_close(layer(x), expected)
    with pytest.raises(ValueError, match=r"^wk has a bias, which LatteAttention has not"):
        LatteAttention.from_projections(q, nn.Linear(E, 16), v, o, n_heads=HEADS)
    with pytest.raises(ValueError, match=r"^wv must have shape \(32, 32\)"):
        LatteAttention.from_projections(q, k, nn.Linear(E, 8, bias=False), o, n_heads=HEADS)
    with pytest.raises(TypeError, match=r"^wo must be an nn.Linear or a 2-d tensor"):
        LatteAttention.from_projections(q, k, v, torch.ones(3), n_heads=HEADS)


def test_latte_state_to_detach_and_save():
    q, k, v = torch.randn(3, 2, 6, 2, 4, requires_grad=True).unbind(0)
    _, state = latte_ref.causal(q, k, v, return_state=True)
    assert state.numerator.requires_grad
    detached = state.detach()
    assert not any(a.requires_grad for a in detached)
    assert state.to(torch.float64).numerator.dtype == torch.float64
    assert state.to("cpu", dtype=torch.float16).normaliser.dtype == torch.float16
    buffer = io.BytesIO()
    torch.save(detached, buffer)
    buffer.seek(0)
    with pytest.raises(Exception, match="Weights only load failed"):
        torch.load(buffer, weights_only=True)
    buffer.seek(0)
    with torch.serialization.safe_globals([latte_ref.LatteState]):  # the one line the docstring names
        loaded = torch.load(buffer, weights_only=True)
    assert isinstance(loaded, latte_ref.LatteState)
    torch.testing.assert_close(tuple(loaded), tuple(detached))
    buffer = io.BytesIO()
    torch.save(detached._asdict(), buffer)
    buffer.seek(0)
    rebuilt = latte_ref.LatteState(**torch.load(buffer, weights_only=True))
    torch.testing.assert_close(tuple(rebuilt), tuple(detached))


def test_latte_state_to_and_detach_on_numpy_and_jax():
    np = pytest.importorskip("numpy")
    state = latte_ref.init_state((2,), 1, 3, 4)
    assert all(a is b for a, b in zip(state.detach(), state, strict=True))
    assert state.to(dtype=np.float32).numerator.dtype == np.float32
    assert state.to(device="cpu").numerator.dtype == np.float64
    with pytest.raises(TypeError, match=r"^LatteState.to takes only device= and dtype= keywords"):
        state.to(np.float32)
    jax = pytest.importorskip("jax")
    jstate = latte_ref.init_state((2,), 1, 3, 4, xp=jax.numpy, dtype=jax.numpy.float32)
    through = jax.grad(lambda s: s.numerator.sum())(jstate)
    stopped = jax.grad(lambda s: s.detach().numerator.sum())(jstate)
    assert float(through.numerator.sum()) == 24.0 and float(abs(stopped.numerator).sum()) == 0.0
    assert jstate.to(device=jax.devices("cpu")[0]).normaliser.shape == (2, 1, 3)
