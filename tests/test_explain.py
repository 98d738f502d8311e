"""``latte-ref explain``: the worked example is Latte, its text says so, and --plot draws a PNG."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

import latte_ref
from latte_ref.cli import main
from latte_ref.explain import (
    DEFAULT_PLOT,
    format_example,
    heatmap_cells,
    plot_example,
    softmax_attention,
    worked_example,
)


@pytest.mark.parametrize("n_latents", [1, 3])
def test_factors_are_distributions_and_multiply_to_the_matrix(n_latents: int) -> None:
    ex = worked_example(n_latents=n_latents, seed=5)
    n = len(ex.tokens)
    assert ex.p_latent.shape == (n, n_latents)
    assert np.allclose(ex.p_latent.sum(axis=1), 1.0)
    assert np.allclose(ex.p_key_bidirectional.sum(axis=1), 1.0)
    assert np.allclose(ex.p_key_causal.sum(axis=2), 1.0)
    assert np.all(np.triu(ex.p_key_causal, 1) == 0), "a causal latent put weight on a future token"
    # The last causal row sees every token, so it is the bidirectional distribution.
    assert np.allclose(ex.p_key_causal[:, -1, :], ex.p_key_bidirectional)
    assert np.allclose(ex.p_latent @ ex.p_key_bidirectional, ex.attention_bidirectional)
    assert np.allclose(np.einsum("tl,lts->ts", ex.p_latent, ex.p_key_causal), ex.attention_causal)
    assert np.linalg.matrix_rank(ex.attention_bidirectional) <= n_latents


def test_outputs_are_the_library_forms_and_the_matrix_times_v() -> None:
    ex = worked_example(seed=1)
    q, k, v = ex.q[:, None, :], ex.k[:, None, :], ex.v[:, None, :]
    assert np.allclose(ex.y_causal, np.asarray(latte_ref.recurrent(q, k, v))[:, 0])
    assert np.allclose(ex.attention_causal @ ex.v, ex.y_causal)
    assert np.allclose(ex.attention_bidirectional @ ex.v, ex.y_bidirectional)


def test_softmax_attention_is_standard_attention() -> None:
    rng = np.random.default_rng(0)
    q, k = rng.normal(size=(2, 5, 4))
    scores = q @ k.T / 2.0
    expected = np.exp(scores) / np.exp(scores).sum(axis=1, keepdims=True)
    assert np.allclose(softmax_attention(q, k, causal=False), expected)
    causal = softmax_attention(q, k, causal=True)
    assert np.all(np.triu(causal, 1) == 0) and np.allclose(causal.sum(axis=1), 1.0)
    assert np.allclose(causal[-1], expected[-1])


def test_text_shows_every_section_and_small_checks(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["explain"]) == 0
    out = capsys.readouterr().out
    for heading in ("p(l | t)", "p(s | l)", "p(s | l, t)", "implied attention matrix", "standard attention", "y_t"):
        assert heading in out
    checks = out.split("checks, max |difference|:")[1].split()
    errors = [float(word) for word in checks if "e-" in word]
    assert len(errors) == 4 and max(errors) < 1e-12


def test_plot_writes_a_png(tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    path = tmp_path / "attention.png"
    assert main(["explain", "--latents", "2", "--plot", str(path)]) == 0
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_plot_without_matplotlib_names_the_extra(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib now raises ImportError
    with pytest.raises(SystemExit, match=r"latte-ref\[plot\]"):
        plot_example(worked_example(), str(tmp_path / "x.png"))
    assert not (tmp_path / "x.png").exists()


def test_format_is_deterministic() -> None:
    assert format_example(worked_example(seed=3)) == format_example(worked_example(seed=3))


def test_plot_has_a_default_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("matplotlib")
    monkeypatch.chdir(tmp_path)
    assert main(["explain", "--plot"]) == 0
    assert (tmp_path / DEFAULT_PLOT).stat().st_size > 1000


def test_masked_future_cells_are_not_drawn_as_probability_zero() -> None:
    ex = worked_example()
    cells = heatmap_cells(ex.attention_causal, causal=True)
    t = ex.attention_causal.shape[0]
    assert cells.mask.tolist() == np.triu(np.ones((t, t), dtype=bool), k=1).tolist()
    assert not np.ma.getmaskarray(heatmap_cells(ex.attention_bidirectional, causal=False)).any()
