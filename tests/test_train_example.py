"""Smoke test of examples/train_char.py: a few steps with torch autograd and with jax.grad make the loss fall."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest

import latte_ref.model as lm

SMALL = ["--d-model", "32", "--n-layers", "1", "--n-heads", "2", "--n-latents", "8", "--batch", "8", "--length", "32"]


def _example() -> ModuleType:
    path = Path(__file__).resolve().parents[1] / "examples" / "train_char.py"
    spec = importlib.util.spec_from_file_location("train_char", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_torch_training_lowers_the_loss_and_saves_weights(tmp_path):
    pytest.importorskip("torch")
    example = _example()
    out = tmp_path / "weights.npz"
    args = ["--steps", "25", "--seconds", "0", "--lr", "1e-2", "--log-every", "1000"]
    args += ["--out", str(out), "--generate", "30"]
    result = example.main([*SMALL, *args])
    assert result["steps"] == 25
    assert result["last_loss"] < result["first_loss"] - 0.5
    assert result["held_out_trained"] < result["held_out_untrained"] - 0.5
    model, vocab = example.load(out)
    assert isinstance(model, lm.LatteModel) and len(result["text"]) == len("MENENIUS:\n") + 30
    assert set(result["text"]) <= set(vocab)
    again = example.main(["--load", str(out), "--prompt", "CORIOLANUS:", "--generate", "12", "--temperature", "0"])
    assert again["text"].startswith("CORIOLANUS:") and len(again["text"]) == len("CORIOLANUS:") + 12


def test_help_shows_every_default(capsys):
    with pytest.raises(SystemExit):
        _example().parse(["--help"])
    out = " ".join(capsys.readouterr().out.split())
    for text in ("(default: 180.0)", "(default: torch)", "(default: 0.8)", "--load PATH", "--prompt"):
        assert text in out, text


def test_jax_grad_steps_lower_the_loss():
    pytest.importorskip("jax")
    example = _example()
    ids, vocab = example.load_text()
    steps = ["--steps", "4", "--seconds", "0", "--lr", "1e-2", "--log-every", "1000"]
    args = example.parse([*SMALL, "--backend", "jax", *steps])
    model, losses = example.train_jax(ids, len(vocab), args)
    assert len(losses) == 4 and all(np.isfinite(losses))
    batch = example.batches(ids, 8, 32, np.random.default_rng(5))
    before = float(lm.next_token_loss(example.new_model(len(vocab), args), batch))
    after = float(lm.next_token_loss(lm.LatteModel(model.config, lm.tree_map(np.asarray, model.weights)), batch))
    assert after < before - 0.1
