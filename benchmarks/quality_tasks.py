"""The data of ``benchmarks/quality.py``: text that ships with the repository, and two generated tasks.

Every batch is ``(inputs, targets)``, both (B, T) int64, where ``targets[b, t]`` is what
position t should predict and :data:`IGNORE` marks positions that are not scored.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

__all__ = ["IGNORE", "CharText", "needle_batch", "needle_vocab_size", "recall_batch", "recall_vocab_size"]

IGNORE = -100  # torch.nn.functional.cross_entropy's ignore_index
TEXT = Path(__file__).resolve().parents[1] / "examples" / "data" / "coriolanus.txt"


class CharText:
    """The characters of ``examples/data/coriolanus.txt``, split 90 / 10 into training and held-out text."""

    def __init__(self, path: Path = TEXT) -> None:
        text = path.read_text(encoding="utf-8")
        self.vocab = sorted(set(text))
        index = {c: i for i, c in enumerate(self.vocab)}
        ids = np.array([index[c] for c in text], dtype=np.int64)
        split = int(0.9 * len(ids))
        self.train, self.held_out = ids[:split], ids[split:]

    def batch(self, batch: int, length: int, rng: np.random.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """``batch`` random training windows: inputs (B, length) and their next characters (B, length)."""
        return _windows(self.train, rng.integers(0, len(self.train) - length - 1, size=batch), length)

    def held_out_batch(self, length: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Every non-overlapping window of the held-out text: the same for every model and seed."""
        starts = np.arange(0, len(self.held_out) - length - 1, length)
        return _windows(self.held_out, starts, length)


def _windows(ids: np.ndarray, starts: np.ndarray, length: int) -> tuple[torch.Tensor, torch.Tensor]:
    window = np.stack([ids[s : s + length + 1] for s in starts])
    return torch.from_numpy(window[:, :-1].copy()), torch.from_numpy(window[:, 1:].copy())


# -- multi-query associative recall --------------------------------------------------------------

N_KEYS, N_VALUES = 32, 8


def recall_vocab_size() -> int:
    """Query tokens (one per key), pair tokens (one per key and value), answer tokens (one per value)."""
    return N_KEYS + N_KEYS * N_VALUES + N_VALUES


def recall_batch(batch: int, n_pairs: int, rng: np.random.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Multi-query associative recall: ``n_pairs`` key-value pairs, then every key as a query.

    Each pair is one token (``N_KEYS + key * N_VALUES + value``), so that one attention
    layer can answer: the query ``key`` must find the pair token of its key and read its
    value. Keys are distinct, drawn from 32; values are drawn from 8 (with repeats); the
    queries come in a random order. The sequence is ``(k1 v1) ... (kn vn) ka kb ...``
    (T = 2 n_pairs). Scored: at each query, the answer token of its value (chance: 1/8).

    Returns
    -------
    inputs, targets : int64 tensors, shape (B, 2 * n_pairs)
    """
    if not 1 <= n_pairs <= N_KEYS:
        raise ValueError(f"n_pairs must be in 1..{N_KEYS}, got {n_pairs}")
    keys = np.argsort(rng.random((batch, N_KEYS)), axis=1)[:, :n_pairs]  # (B, n) distinct
    values = rng.integers(0, N_VALUES, size=(batch, n_pairs))  # (B, n)
    order = np.argsort(rng.random((batch, n_pairs)), axis=1)  # (B, n): the order of the queries
    query_keys = np.take_along_axis(keys, order, axis=1)
    query_values = np.take_along_axis(values, order, axis=1)
    inputs = np.concatenate([N_KEYS + keys * N_VALUES + values, query_keys], axis=1)
    targets = np.full_like(inputs, IGNORE)
    targets[:, n_pairs:] = N_KEYS + N_KEYS * N_VALUES + query_values
    return torch.from_numpy(inputs), torch.from_numpy(targets)


# -- a long-range lookup -------------------------------------------------------------------------

N_SIGNALS, N_NOISE = 8, 1  # one noise token: a blank, as in the copy-memory task of Hochreiter and Schmidhuber


def needle_vocab_size() -> int:
    return N_SIGNALS + N_NOISE


def needle_batch(
    batch: int, length: int, rng: np.random.Generator, *, far_only: bool = False
) -> tuple[torch.Tensor, torch.Tensor]:
    """One signal token (of 8) in the first eighth of ``length`` blanks; every later position names it.

    Training scores every position after the signal: the near ones teach the lookup, the far
    ones need it to hold over distance. ``far_only`` scores only the last quarter, where
    the signal lies between ``length / 8`` and ``length`` tokens back: the reported accuracy.

    Returns
    -------
    inputs, targets : int64 tensors, shape (B, length)
    """
    if length < 8:
        raise ValueError(f"length must be at least 8, got {length}")
    inputs = rng.integers(N_SIGNALS, N_SIGNALS + N_NOISE, size=(batch, length))
    signal = rng.integers(0, N_SIGNALS, size=batch)
    position = rng.integers(0, length // 8, size=batch)
    inputs[np.arange(batch), position] = signal
    after = np.arange(length)[None, :] > position[:, None]
    if far_only:
        after &= np.arange(length)[None, :] >= length - length // 4
    targets = np.where(after, signal[:, None], IGNORE)
    return torch.from_numpy(inputs), torch.from_numpy(targets)
