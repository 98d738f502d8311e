"""Smoke test of benchmarks/quality.py: ``--quick`` at tiny settings writes complete records of finite values.

Nothing here says which model wins: that is for a full run to measure (docs/comparison.md).
"""

from __future__ import annotations

import importlib.util
import json
import math
import sys
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest

pytest.importorskip("torch")

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"
KEYS = {"task", "model", "seed", "metric", "value", "n_params", "steps", "seconds", "lr"}


def _quality() -> ModuleType:
    spec = importlib.util.spec_from_file_location("quality", BENCHMARKS / "quality.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["quality"] = module
    spec.loader.exec_module(module)
    return module


def test_quick_run_writes_complete_finite_records(tmp_path: Path) -> None:
    quality = _quality()
    models = ("softmax", "latte", "hybrid")
    args = ["--quick", "--output", str(tmp_path), "--steps", "4", "--lr-grid", "1e-3,3e-3", "--no-plots"]
    returned = quality.main([*args, "--models", ",".join(models)])
    records = json.loads((tmp_path / "results.json").read_text())
    assert records == json.loads(json.dumps(returned))
    quick = quality.quick()
    for record in records:
        assert KEYS <= record.keys(), KEYS - record.keys()
        assert math.isfinite(record["value"]) and record["seconds"] > 0
        assert record["n_params"] > 0 and record["lr"] in (1e-3, 3e-3)
        assert record["steps"] == (quick.timing_steps if record["task"] == "timing" else 4)
    main = [r for r in records if r["phase"] == "main"]
    assert {r["task"] for r in main} == {"char", "recall", "mqar", "copy", "needle", "timing"}
    assert {r["model"] for r in main} == set(models)
    searched = {(r["task"], r["model"], r["conv"], r["lr"]) for r in records if r["phase"] == "lr_search"}
    assert len(searched) == (4 * len(models) + 2 * len(models)) * 2  # 4 tasks, mqar with and without conv; 2 lrs
    hardest = {r["T"] for r in records if r["phase"] == "lr_search" and r["task"] == "needle"}
    assert hardest == {max(quick.needle_lengths)}
    assert {r["conv"] for r in main if r["task"] == "mqar"} == {False, True}
    assert {(r["T"], r["n_pairs"]) for r in main if r["task"] == "mqar"} == set(quick.mqar_settings)
    assert {r["T"] for r in main if r["task"] == "timing"} == set(quick.timing_lengths)
    assert {r["n_pairs"] for r in main if r["task"] == "recall"} == set(quick.recall_pairs)
    sweep = {(r["model"], r["size"]) for r in records if r["phase"] == "state_sweep"}
    assert sweep == {(m, s) for m, sizes in quick.state_sweep if m in models for s in sizes}
    assert all(r["state_per_layer"] > 0 for r in records if r["task"] != "timing")
    char = [r for r in main if r["task"] == "char"]
    assert all(0 < r["value"] < 10 for r in char)  # nats per byte, near log(256) untrained
    assert all(len(r["corpus_sha256"]) == 64 and r["corpus_bytes"] == quick.char_corpus_bytes for r in char)
    summary = (tmp_path / "summary.md").read_text()
    assert summary.startswith("| phase") and "± 0.000" not in summary and "(n=1)" in summary
    report = (tmp_path / "report.md").read_text()
    assert "## MQAR" in report and "## Learning rates" in report and "## State size" in report


def test_every_model_has_the_same_parameters_but_latte_s_latent_projections() -> None:
    _quality()
    from quality_models import TinyTransformer, count_parameters

    d_model, n_heads = 32, 4
    counts = {
        kind: count_parameters(TinyTransformer(kind, 50, d_model, 2, n_heads, n_latents=d_model))
        for kind in ("softmax", "latte", "linear", "window", "retnet")
    }
    assert len(set(counts.values())) == 1  # n_latents = d_model: wq, wk are (d_model, d_model) in every model
    smaller = count_parameters(TinyTransformer("latte", 50, d_model, 2, n_heads, n_latents=8))
    assert counts["latte"] - smaller == 2 * 2 * d_model * (d_model - 8)


def test_linear_attention_matches_its_quadratic_definition() -> None:
    import torch

    _quality()
    from quality_models import LinearAttention

    torch.manual_seed(0)
    layer = LinearAttention(16, 2, chunk=3)
    x = torch.randn(2, 10, 16)
    q, k, v = (x @ w for w in (layer.wq, layer.wk, layer.wv))
    heads = [slice(0, 8), slice(8, 16)]
    outputs = []
    for h in heads:
        phi_q, phi_k = torch.nn.functional.elu(q[..., h]) + 1, torch.nn.functional.elu(k[..., h]) + 1
        weights = (phi_q @ phi_k.transpose(-1, -2)).tril()
        outputs.append(weights / weights.sum(-1, keepdim=True) @ v[..., h])
    expected = torch.cat(outputs, -1) @ layer.wo
    assert torch.allclose(layer(x), expected, atol=1e-5)


def test_tasks_score_what_they_say() -> None:
    _quality()
    from quality_tasks import IGNORE, N_KEYS, N_VALUES, needle_batch, recall_batch

    rng = np.random.default_rng(0)
    inputs, targets = recall_batch(3, 5, rng)
    assert inputs.shape == targets.shape == (3, 10)
    for b in range(3):
        pairs = {(int(t) - N_KEYS) // N_VALUES: (int(t) - N_KEYS) % N_VALUES for t in inputs[b, :5]}
        scored = (targets[b] != IGNORE).nonzero().flatten().tolist()
        assert scored == list(range(5, 10)) and len(pairs) == 5
        answer = N_KEYS + N_KEYS * N_VALUES
        assert all(answer + pairs[int(inputs[b, t])] == int(targets[b, t]) for t in scored)
    inputs, targets = needle_batch(4, 128, rng)
    signals = inputs < 8
    assert signals.sum(1).tolist() == [1, 1, 1, 1] and bool(signals[:, -1].sum() == 0)
    position = signals.int().argmax(1)
    for b in range(4):
        assert (targets[b, position[b] + 1 :] == inputs[b, position[b]]).all()
        assert (targets[b, : position[b] + 1] == IGNORE).all()
    _, last = needle_batch(4, 128, np.random.default_rng(0), last_only=True)
    assert bool((last[:, :-1] == IGNORE).all()) and bool((last[:, -1] != IGNORE).all())
