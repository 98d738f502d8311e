"""Latte in x-transformers: LatteAttend in place of Attend equals the forms on the same projections."""

from __future__ import annotations

import pytest

import latte_ref

torch = pytest.importorskip("torch")
pytest.importorskip("x_transformers")

from x_transformers import Decoder, Encoder, TransformerWrapper  # noqa: E402
from x_transformers.x_transformers import Attention  # noqa: E402

from latte_ref.integrations.x_transformers import LatteAttend, use_latte  # noqa: E402


@pytest.mark.parametrize("kv_heads", [4, 2, 1], ids=["mha", "gqa", "mqa"])
@pytest.mark.parametrize("causal", [True, False], ids=["causal", "bidirectional"])
def test_an_attention_module_computes_latte_on_its_projections(causal, kv_heads):
    torch.manual_seed(0)
    attention = use_latte(Attention(dim=32, heads=4, dim_head=8, causal=causal, kv_heads=kv_heads)).double()
    assert isinstance(attention.attend, LatteAttend)
    x = torch.randn(2, 9, 32, dtype=torch.float64)
    keep = torch.ones(2, 9, dtype=torch.bool)
    keep[1, 6:] = False
    q = attention.to_q(x).unflatten(-1, (4, 8))  # (B, T, H, L)
    k = attention.to_k(x).unflatten(-1, (kv_heads, 8))  # (B, T, H_kv, L): the forms repeat the K/V heads
    v = attention.to_v(x).unflatten(-1, (kv_heads, 8))
    if causal:
        y = latte_ref.causal(q, k, v, mask=keep)
    else:
        y = latte_ref.bidirectional(q, k, v, key_mask=keep)
    expected = attention.to_out(y.flatten(-2))
    out = attention(x, mask=keep)
    rows = keep[..., None].expand_as(out)  # the real tokens' outputs (each library has its own for padding)
    torch.testing.assert_close(out[rows], expected[rows], rtol=1e-12, atol=1e-12)


def test_a_decoder_is_causal_and_trains():
    torch.manual_seed(1)
    model = TransformerWrapper(
        num_tokens=50, max_seq_len=32, attn_layers=Decoder(dim=32, depth=2, heads=4, attn_kv_heads=2)
    )
    model = use_latte(model)
    tokens = torch.randint(0, 50, (2, 16))
    logits = model(tokens)
    changed = tokens.clone()
    changed[:, 10:] = (changed[:, 10:] + 1) % 50
    logits_changed = model(changed)
    torch.testing.assert_close(logits_changed[:, :10], logits[:, :10], rtol=0, atol=0)  # t < 10 sees no later token
    assert (logits_changed[:, 10:] - logits[:, 10:]).abs().max() > 1e-3
    loss = torch.nn.functional.cross_entropy(logits[:, :-1].flatten(0, 1), tokens[:, 1:].flatten())
    loss.backward()
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)


def test_what_latte_cannot_honour_is_refused():
    attention = use_latte(Attention(dim=16, heads=2))
    q = k = v = torch.randn(1, 2, 5, 8)
    with pytest.raises(ValueError, match=r"^attn_bias: Latte forms no attention logits"):
        attention.attend(q, k, v, attn_bias=torch.zeros(2, 5, 5))
    with pytest.raises(ValueError, match=r"^mask: Latte honours a key-padding mask \(B, 1, 1, S\) only"):
        attention.attend(q, k, v, mask=torch.ones(1, 2, 5, 5, dtype=torch.bool))
    with pytest.raises(ValueError, match=r"^model has no x-transformers Attention"):
        use_latte(torch.nn.Linear(2, 2))
    encoder = TransformerWrapper(num_tokens=10, max_seq_len=8, attn_layers=Encoder(dim=16, depth=1, heads=2))
    assert use_latte(encoder)(torch.randint(0, 10, (1, 8))).shape == (1, 8, 10)
