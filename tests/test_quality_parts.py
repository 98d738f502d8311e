"""The parts of benchmarks/quality.py: the tasks' data format, the models' causality, the lr rule, the statistics.

Nothing here says which model wins: that is for a full run to measure (docs/comparison.md).
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"
if str(BENCHMARKS) not in sys.path:
    sys.path.insert(0, str(BENCHMARKS))

if importlib.util.find_spec("quality_tasks") is None:  # pragma: no cover
    pytest.skip("benchmarks not importable", allow_module_level=True)

from quality_models import ATTENTIONS, TinyTransformer, make_attention, state_per_layer  # noqa: E402
from quality_report import paired_difference, t_quantile_975  # noqa: E402
from quality_tasks import (  # noqa: E402
    IGNORE,
    CharText,
    copy_batch,
    mqar_batch,
    mqar_gap_probabilities,
    needle_batch,
    stdlib_corpus,
)
from quality_train import choose_lr  # noqa: E402


def test_mqar_has_zoology_s_format() -> None:
    vocab, length, n = 1024, 128, 16
    inputs, targets = mqar_batch(64, length, n, vocab, np.random.default_rng(0))
    assert inputs.shape == targets.shape == (64, length)
    for b in range(64):
        keys, values = inputs[b, 0 : 2 * n : 2], inputs[b, 1 : 2 * n : 2]
        assert bool((keys >= 1).all() and (keys < vocab // 2).all())  # key and value vocabularies apart
        assert bool((values >= vocab // 2).all() and (values < vocab).all())
        assert len(set(keys.tolist())) == n and len(set(values.tolist())) == n  # distinct keys, distinct values
        answer = dict(zip(keys.tolist(), values.tolist(), strict=True))
        scored = (targets[b] != IGNORE).nonzero().flatten().tolist()
        assert len(scored) == n and all(t >= 2 * n and (t - 2 * n) % 2 == 0 for t in scored)
        assert sorted(int(inputs[b, t]) for t in scored) == sorted(keys.tolist())  # each key asked once
        assert all(answer[int(inputs[b, t])] == int(targets[b, t]) for t in scored)


def test_mqar_query_gaps_follow_the_power_law() -> None:
    length, n = 256, 4
    _, targets = mqar_batch(4000, length, n, 1024, np.random.default_rng(1))
    slots = ((targets != IGNORE).nonzero()[:, 1] - 2 * n) // 2
    counts = np.bincount(slots.numpy(), minlength=(length - 2 * n) // 2)
    p = mqar_gap_probabilities(len(counts), 0.01)
    assert p[0] > 10 * p[-1] and np.all(np.diff(p) < 0)
    # the near slots are asked far more often than the far ones, about as the law says
    assert counts[:4].sum() > 5 * counts[-4:].sum()
    assert counts[0] > counts[10] > counts[100]


def test_mqar_rejects_bad_arguments() -> None:
    rng = np.random.default_rng(0)
    with pytest.raises(ValueError, match="length"):
        mqar_batch(2, 30, 8, 1024, rng)
    with pytest.raises(ValueError, match="vocab_size"):
        mqar_batch(2, 64, 8, 32, rng)


def test_needle_positions_are_uniform_and_the_test_scores_the_last_token() -> None:
    inputs, targets = needle_batch(20_000, 64, np.random.default_rng(2), last_only=True)
    position = (inputs < 8).int().argmax(1).numpy()
    counts = np.bincount(position, minlength=63)
    assert counts.shape == (63,) and counts.min() > 0.7 * counts.mean() and counts.max() < 1.3 * counts.mean()
    assert bool((targets[:, -1] == inputs[np.arange(20_000), position]).all())
    with pytest.raises(ValueError, match="length"):
        needle_batch(2, 4, np.random.default_rng(0))


def test_selective_copy_asks_for_the_tokens_in_order() -> None:
    inputs, targets = copy_batch(8, 40, 6, np.random.default_rng(3))
    for b in range(8):
        content = [int(t) for t in inputs[b, :34] if t < 16]
        assert content == targets[b, 34:].tolist() and len(content) == 6
        assert bool((targets[b, :34] == IGNORE).all())
    with pytest.raises(ValueError, match="n_tokens"):
        copy_batch(2, 10, 6, np.random.default_rng(0))


def test_char_corpus_is_sorted_stdlib_bytes_with_its_hash() -> None:
    corpus, sha256, n_files = stdlib_corpus(50_000)
    assert len(corpus) == 50_000 and n_files >= 1 and len(sha256) == 64
    assert stdlib_corpus(50_000)[1] == sha256  # deterministic
    text = CharText(corpus, held_out=10_000)
    assert len(text.held_out) == 10_000 and len(text.train) == 40_000
    windows = text.held_out_batches(100, 16)
    assert sum(int(w[0].shape[0]) for w in windows) == len(range(0, 10_000 - 101, 100))
    with pytest.raises(ValueError, match="held_out"):
        CharText(corpus, held_out=0)
    with pytest.raises(ValueError, match="max_bytes"):
        stdlib_corpus(0)


@pytest.mark.parametrize("kind", ATTENTIONS)
@pytest.mark.parametrize("conv", [False, True])
def test_every_model_is_causal(kind: str, conv: bool) -> None:
    torch.manual_seed(0)
    model = TinyTransformer(kind, 30, 32, 2, 4, 16, size={"window": 5, "hybrid": 4}.get(kind), conv=conv).eval()
    tokens = torch.randint(0, 30, (2, 24))
    changed = tokens.clone()
    changed[:, 15:] = (changed[:, 15:] + 1) % 30
    with torch.no_grad():
        y, y_changed = model(tokens), model(changed)
    assert y.shape == (2, 24, 30)
    assert torch.allclose(y[:, :15], y_changed[:, :15], atol=1e-5)  # output at t ignores later tokens
    assert not torch.allclose(y[:, 15:], y_changed[:, 15:], atol=1e-3)


def test_window_attention_sees_only_its_window() -> None:
    torch.manual_seed(0)
    layer = make_attention("window", 16, 2, 8, size=3)
    x = torch.randn(1, 10, 16)
    moved = x.clone()
    moved[:, :6] = torch.randn(1, 6, 16)  # 3 or more tokens back from t = 9
    assert torch.allclose(layer(x)[:, 8:], layer(moved)[:, 8:], atol=1e-6)


def test_bad_model_arguments_name_the_argument() -> None:
    with pytest.raises(ValueError, match="attention"):
        make_attention("mamba", 16, 2, 8)
    with pytest.raises(ValueError, match="window"):
        make_attention("window", 16, 2, 8, size=0)
    with pytest.raises(ValueError, match="feature_size"):
        make_attention("taylor", 16, 2, 8, size=-1)


def test_state_per_layer_follows_its_formulas() -> None:
    d, h, length = 64, 4, 256  # D = 16
    assert state_per_layer("softmax", d, h, 64, None, length) == 2 * 256 * 64
    assert state_per_layer("window", d, h, 64, 32, length) == 2 * 32 * 64
    assert state_per_layer("latte", d, h, 64, 32, length) == 32 * 17
    assert state_per_layer("linear", d, h, 64, None, length) == 4 * 16 * 17
    assert state_per_layer("taylor", d, h, 64, 8, length) == 4 * 73 * 17
    assert state_per_layer("retnet", d, h, 64, None, length) == 4 * 16 * 16
    assert state_per_layer("abc", d, h, 64, 64, length) == 64 * 33
    assert state_per_layer("hybrid", d, h, 64, 16, length, conv=True) == 2 * 16 * 64 + 64 * 17 + 2 * 64


def test_lr_choice_breaks_ties_by_validation_loss() -> None:
    trials = [
        {"lr": 1e-3, "validation": 1.0, "validation_loss": 0.30},
        {"lr": 3e-3, "validation": 1.0, "validation_loss": 0.10},
        {"lr": 1e-2, "validation": 0.9, "validation_loss": 0.01},
    ]
    assert choose_lr(trials, "accuracy") == 3e-3  # the tie at 1.0 goes to the lower loss
    assert choose_lr(trials[:1] + trials[2:], "accuracy") == 1e-3  # a higher accuracy beats a lower loss
    losses = [
        {"lr": 1e-3, "validation": 2.5, "validation_loss": 2.5},
        {"lr": 3e-2, "validation": 2.4, "validation_loss": 2.4},
    ]
    assert choose_lr(losses, "loss") == 3e-2
    with pytest.raises(ValueError, match="metric"):
        choose_lr(trials, "f1")
    with pytest.raises(ValueError, match="trials"):
        choose_lr([], "loss")


def test_paired_difference_interval() -> None:
    mean, half, n = paired_difference({0: 0.9, 1: 0.8, 2: 0.7}, {0: 0.5, 1: 0.6, 2: 0.4, 3: 0.1})
    diffs = np.array([0.4, 0.2, 0.3])
    assert n == 3 and mean == pytest.approx(0.3)
    assert half == pytest.approx(4.303 * diffs.std(ddof=1) / np.sqrt(3))
    assert paired_difference({0: 1.0}, {0: 0.25}) == (0.75, None, 1)
    assert t_quantile_975(4) == 2.776
    with pytest.raises(ValueError, match="seed"):
        paired_difference({0: 1.0}, {1: 1.0})
    with pytest.raises(ValueError, match="df"):
        t_quantile_975(0)
