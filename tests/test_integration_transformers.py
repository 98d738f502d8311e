"""latte_ref.integrations.transformers: "latte" attention in Llama, GPT-2 and BERT, and the LatteCache."""

from __future__ import annotations

from typing import Any

import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

import latte_ref  # noqa: E402
from latte_ref.integrations.transformers import LatteCache, latte_mask, register  # noqa: E402
from latte_ref.integrations.transformers.attention import _key_mask, latte_attention_forward  # noqa: E402

VOCAB = 100
GENERATE = {"do_sample": False, "pad_token_id": 0, "max_new_tokens": 6}


@pytest.fixture(autouse=True)
def _registered() -> None:
    register()


def llama(attn: str = "latte", kv_heads: int = 2, seed: int = 0) -> Any:
    torch.manual_seed(seed)
    config = transformers.LlamaConfig(
        vocab_size=VOCAB,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=kv_heads,
        max_position_embeddings=128,
        bos_token_id=1,
        eos_token_id=2,
    )
    return transformers.AutoModelForCausalLM.from_config(config, attn_implementation=attn).double().eval()


def gpt2(attn: str = "latte", seed: int = 0) -> Any:
    torch.manual_seed(seed)
    config = transformers.GPT2Config(
        vocab_size=VOCAB, n_embd=32, n_layer=2, n_head=4, n_positions=128, bos_token_id=1, eos_token_id=2
    )
    return transformers.AutoModelForCausalLM.from_config(config, attn_implementation=attn).double().eval()


def bert(attn: str = "latte", seed: int = 0) -> Any:
    torch.manual_seed(seed)
    config = transformers.BertConfig(
        vocab_size=VOCAB, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64
    )
    return transformers.AutoModel.from_config(config, attn_implementation=attn).double().eval()


def err(a: Any, b: Any) -> float:
    """Largest absolute difference."""
    return float((a - b).detach().abs().max())


def tokens(batch: int, length: int, seed: int = 1) -> Any:
    return torch.randint(3, VOCAB, (batch, length), generator=torch.Generator().manual_seed(seed))


def captured(module: Any, run: Any) -> tuple[Any, Any]:
    """The hidden states (and keywords) a module was called with, and its output, during ``run()``."""
    seen: dict[str, Any] = {}

    def hook(_: Any, args: Any, kwargs: Any, output: Any) -> None:
        seen["input"] = (args[0] if args else kwargs["hidden_states"], kwargs)
        seen["output"] = output[0]

    handle = module.register_forward_hook(hook, with_kwargs=True)
    try:
        run()
    finally:
        handle.remove()
    return seen["input"], seen["output"]


# --- a layer's output is latte_ref.causal on its projections ---------------------------------------


def test_llama_layer_equals_latte_causal_with_grouped_heads() -> None:
    from transformers.models.llama.modeling_llama import apply_rotary_pos_emb

    model = llama(kv_heads=2)
    attn = model.model.layers[1].self_attn
    (x, kwargs), out = captured(attn, lambda: model(tokens(2, 9)))
    b, t, _ = x.shape
    q = attn.q_proj(x).view(b, t, 4, 8).transpose(1, 2)
    k = attn.k_proj(x).view(b, t, 2, 8).transpose(1, 2)
    v = attn.v_proj(x).view(b, t, 2, 8).transpose(1, 2)
    q, k = apply_rotary_pos_emb(q, k, *kwargs["position_embeddings"])
    k, v = (a.repeat_interleave(2, dim=1) for a in (k, v))  # query head h reads key/value head h // 2
    y = latte_ref.causal(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2))
    expected = attn.o_proj(y.reshape(b, t, 32))
    assert out.dtype == torch.float64
    assert err(out, expected) <= 1e-12


def test_gpt2_layer_equals_latte_causal() -> None:
    model = gpt2()
    attn = model.transformer.h[0].attn
    (x, _), out = captured(attn, lambda: model(tokens(2, 9)))
    b, t, _ = x.shape
    q, k, v = (a.view(b, t, 4, 8) for a in attn.c_attn(x).split(32, dim=2))
    expected = attn.c_proj(latte_ref.causal(q, k, v).reshape(b, t, 32))
    assert err(out, expected) <= 1e-12


def test_llama_output_differs_from_softmax_attention() -> None:
    ids = tokens(1, 8)
    latte, sdpa = llama("latte"), llama("sdpa")
    assert err(latte(ids).logits, sdpa(ids).logits) > 1e-3


# --- training --------------------------------------------------------------------------------------


def test_training_lowers_the_loss() -> None:
    model = llama().float().train()
    optimiser = torch.optim.Adam(model.parameters(), lr=1e-2)
    generator = torch.Generator().manual_seed(0)
    losses = []
    for _ in range(30):
        start = torch.randint(3, VOCAB, (8, 1), generator=generator)
        ids = 3 + (start - 3 + torch.arange(16)) % (VOCAB - 3)  # each token is the previous one plus 1
        loss = model(ids, labels=ids).loss
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0], losses


# --- generation with LatteCache ----------------------------------------------------------------------


def left_padded(length: int = 7, pad: int = 3) -> tuple[Any, Any]:
    ids = tokens(2, length)
    mask = torch.ones_like(ids)
    ids[1, :pad], mask[1, :pad] = 0, 0
    return ids, mask


@pytest.mark.parametrize("build", [llama, gpt2], ids=["llama", "gpt2"])
def test_generate_with_latte_cache_equals_no_cache(build: Any) -> None:
    model = build()
    ids, mask = left_padded()
    cache = LatteCache()
    with_cache = model.generate(ids, attention_mask=mask, cache=cache, **GENERATE)
    without = model.generate(ids, attention_mask=mask, use_cache=False, **GENERATE)
    assert torch.equal(with_cache, without)
    # The padded row gives the tokens it gives alone.
    alone = model.generate(ids[1:, 3:], cache=LatteCache(), **GENERATE)
    assert torch.equal(with_cache[1:, 3:], alone)
    assert cache.get_seq_length() == ids.shape[1] + GENERATE["max_new_tokens"] - 1


def test_right_padded_prefill_gives_each_row_its_own_state() -> None:
    model = llama()
    ids = tokens(2, 7)
    mask = torch.ones_like(ids)
    mask[1, 4:] = 0
    cache, alone = LatteCache(), LatteCache()
    model(ids, attention_mask=mask, cache=cache, use_cache=True)
    model(ids[1:, :4], cache=alone, use_cache=True)
    for state, own in zip(cache.states, alone.states, strict=True):
        assert state is not None and own is not None
        for a, b in zip(state, own, strict=True):
            assert err(a[1:], b) <= 1e-12


def test_latte_cache_memory_is_constant_in_generated_tokens() -> None:
    model = llama(kv_heads=2)
    ids = tokens(2, 5)
    sizes = []
    for new in (2, 12):
        cache = LatteCache()
        model.generate(ids, cache=cache, **{**GENERATE, "max_new_tokens": new})
        sizes.append(cache.nbytes)
    # One state per layer and key/value head: m and a (B, H_kv, L), S (B, H_kv, L, D), float64.
    assert sizes == [2 * 2 * (2 * 2 * 8 + 2 * 8 * 8) * 8] * 2
    assert all(s is not None and s.numerator.shape == (2, 2, 8, 8) for s in cache.states)


def test_beam_search_with_latte_cache_equals_no_cache() -> None:
    model = llama()
    ids = tokens(2, 6)
    settings = {**GENERATE, "num_beams": 3}
    assert torch.equal(
        model.generate(ids, cache=LatteCache(), **settings), model.generate(ids, use_cache=False, **settings)
    )


def test_default_dynamic_cache_also_matches() -> None:
    model = llama()
    ids, mask = left_padded()
    assert torch.equal(
        model.generate(ids, attention_mask=mask, **GENERATE),
        model.generate(ids, attention_mask=mask, use_cache=False, **GENERATE),
    )


# --- bidirectional: BERT ------------------------------------------------------------------------------


def test_bert_padded_rows_equal_rows_alone() -> None:
    model = bert()
    ids = tokens(3, 8)
    mask = torch.ones_like(ids)
    mask[1, 5:], mask[2, 3:] = 0, 0
    out = model(ids, attention_mask=mask).last_hidden_state
    for row, length in ((0, 8), (1, 5), (2, 3)):
        alone = model(ids[row : row + 1, :length]).last_hidden_state
        assert err(out[row : row + 1, :length], alone) <= 1e-12
    # Every token reads the whole row (not only the past): changing the last token changes the first output.
    changed = ids[:1].clone()
    changed[0, -1] = (changed[0, -1] + 1) % VOCAB
    assert err(model(changed).last_hidden_state[0, 0], out[0, 0]) > 1e-6


# --- set_attn_implementation, register -----------------------------------------------------------------


@pytest.mark.parametrize("start", ["eager", "sdpa"])
def test_set_attn_implementation_converts_an_existing_model(start: str) -> None:
    ids = tokens(2, 6)
    model, reference = llama(start), llama("latte")
    before = model(ids).logits
    model.set_attn_implementation("latte")
    assert model.config._attn_implementation == "latte"
    assert err(model(ids).logits, reference(ids).logits) <= 1e-12
    assert err(model(ids).logits, before) > 1e-3


def test_register_is_idempotent() -> None:
    from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS
    from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

    register()
    register()
    assert ALL_ATTENTION_FUNCTIONS["latte"] is latte_attention_forward
    assert ALL_MASK_ATTENTION_FUNCTIONS["latte"] is latte_mask
    assert sum(key == "latte" for key in ALL_ATTENTION_FUNCTIONS) == 1
    ids = tokens(1, 5)
    assert torch.equal(llama()(ids).logits, llama()(ids).logits)


def test_mask_function_returns_the_padding_mask() -> None:
    padding = torch.tensor([[0, 1, 1, 1], [1, 1, 1, 1]])
    mask = latte_mask(2, 1, 4, attention_mask=padding)
    assert mask is not None and mask.dtype == torch.bool and mask.tolist() == padding.bool().tolist()
    assert latte_mask(2, 4, 4, attention_mask=None) is None
    # A 4D mask (boolean or additive) tells the same keys apart.
    four_d = transformers.masking_utils.sdpa_mask(2, 4, 4, attention_mask=padding.bool(), allow_is_causal_skip=False)
    assert _key_mask(four_d, 4).tolist() == padding.bool().tolist()
    additive = torch.where(four_d, 0.0, torch.finfo(torch.float32).min)
    assert _key_mask(additive, 4).tolist() == padding.bool().tolist()


# --- bad input ------------------------------------------------------------------------------------------


def test_cache_from_a_model_of_other_dimensions_is_refused() -> None:
    cache = LatteCache()
    llama().generate(tokens(1, 4), cache=cache, **GENERATE)
    with pytest.raises(ValueError, match=r"^cache \(past_key_values\): this LatteCache holds states"):
        gpt2()(tokens(1, 4), cache=cache, use_cache=True)


def test_cache_with_another_attention_is_refused() -> None:
    with pytest.raises(ValueError, match=r"^cache \(past_key_values\): a LatteCache needs attn_implementation"):
        llama("sdpa")(tokens(1, 4), cache=LatteCache(), use_cache=True)


def test_cache_cannot_be_cropped() -> None:
    cache = LatteCache()
    llama()(tokens(1, 4), cache=cache, use_cache=True)
    with pytest.raises(ValueError, match=r"^tokens_to_remove: a LatteCache cannot drop tokens"):
        cache.crop(-1)


def test_unsupported_mask_patterns_are_refused() -> None:
    from transformers.masking_utils import sliding_window_causal_mask_function

    with pytest.raises(ValueError, match=r"^mask_function: the 'latte' attention supports causal and bidirectional"):
        latte_mask(1, 4, 4, mask_function=sliding_window_causal_mask_function(2))


def test_bad_masks_and_heads_are_refused() -> None:
    with pytest.raises(ValueError, match=r"^attention_mask: the 'latte' attention takes"):
        _key_mask(torch.ones(2, 1, 4, dtype=torch.bool), 4)
    with pytest.raises(ValueError, match=r"^attention_mask: covers 3 positions"):
        _key_mask(torch.ones(2, 3, dtype=torch.bool), 4)
    module = torch.nn.Module()
    q, k = torch.randn(1, 4, 5, 8), torch.randn(1, 3, 5, 8)
    with pytest.raises(ValueError, match=r"^key: the 'latte' attention needs"):
        latte_attention_forward(module, q, k, k, None)
    with pytest.raises(ValueError, match=r"^key: causal attention needs at least as many keys"):
        latte_attention_forward(module, q, q[:, :, :2], q[:, :, :2], None)


def test_dropout_is_ignored_with_a_warning() -> None:
    module = torch.nn.Module()
    q = torch.randn(1, 2, 5, 8, dtype=torch.float64)
    with pytest.warns(RuntimeWarning, match=r"^dropout: the 'latte' attention ignores"):
        y, weights = latte_attention_forward(module, q, q, q, None, scaling=0.5, dropout=0.1)
    assert weights is None and y.shape == (1, 5, 2, 8)
    assert torch.equal(y, latte_attention_forward(module, q, q, q, None, scaling=3.0)[0])  # scaling is ignored


# --- the generation benchmark ------------------------------------------------------------------------


def test_hf_generation_benchmark_runs_and_latte_cache_stays_constant() -> None:
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "benchmarks" / "hf_generation.py"
    spec = importlib.util.spec_from_file_location("hf_generation", path)
    assert spec is not None and spec.loader is not None
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    argv = ["--prompts", "8", "64", "--new-tokens", "2", "--repeats", "1", "--hidden", "32", "--vocab", "50"]
    threads = torch.get_num_threads()
    try:
        rows = script.main(argv)
    finally:
        torch.set_num_threads(threads)  # the script sets one thread for its timing
    assert [row["prompt"] for row in rows] == [8, 64]
    assert all(row["sdpa_ms_per_token"] > 0 and row["latte_ms_per_token"] > 0 for row in rows)
    assert rows[0]["latte_cache_bytes"] == rows[1]["latte_cache_bytes"] > 0
    with pytest.raises(SystemExit):
        script.parse(["--prompts", "0"])
