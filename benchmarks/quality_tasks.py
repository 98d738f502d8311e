"""The data of ``benchmarks/quality.py``: a corpus that ships with Python, and four generated tasks.

Every batch is ``(inputs, targets)``, both (B, T) int64, where ``targets[b, t]`` is what
position t should predict and :data:`IGNORE` marks positions that are not scored.
"""

from __future__ import annotations

import hashlib
import sysconfig
from pathlib import Path

import numpy as np
import torch

__all__ = [
    "IGNORE",
    "CharText",
    "copy_batch",
    "copy_vocab_size",
    "mqar_batch",
    "mqar_gap_probabilities",
    "needle_batch",
    "needle_vocab_size",
    "recall_batch",
    "recall_vocab_size",
    "stdlib_corpus",
]

IGNORE = -100  # torch.nn.functional.cross_entropy's ignore_index
Batch = tuple[torch.Tensor, torch.Tensor]


# -- characters ----------------------------------------------------------------------------------


def stdlib_corpus(max_bytes: int) -> tuple[bytes, str, int]:
    """The Python standard library's ``*.py`` sources, sorted by relative path and concatenated.

    The corpus ships with every Python, so the run downloads nothing; it differs between Python
    versions, hence its SHA-256 in the records. Returns the first ``max_bytes`` bytes, their
    SHA-256 (hex) and the number of files they come from.
    """
    if max_bytes < 1:
        raise ValueError(f"max_bytes must be positive, got {max_bytes}")
    root = Path(sysconfig.get_paths()["stdlib"])
    parts: list[bytes] = []
    size, n_files = 0, 0
    for path in sorted(root.rglob("*.py"), key=lambda p: p.relative_to(root).as_posix()):
        if size >= max_bytes:
            break
        data = path.read_bytes()
        parts.append(data)
        size += len(data)
        n_files += 1
    corpus = b"".join(parts)[:max_bytes]
    return corpus, hashlib.sha256(corpus).hexdigest(), n_files


class CharText:
    """Bytes of a corpus (vocabulary 256), split into training text and a held-out tail of ``held_out`` bytes."""

    def __init__(self, corpus: bytes, held_out: int) -> None:
        if not 0 < held_out < len(corpus):
            raise ValueError(f"held_out must be in 1..{len(corpus) - 1}, got {held_out}")
        ids = np.frombuffer(corpus, dtype=np.uint8).astype(np.int64)
        self.vocab_size = 256
        self.train, self.held_out = ids[:-held_out], ids[-held_out:]

    def batch(self, batch: int, length: int, rng: np.random.Generator) -> Batch:
        """``batch`` random training windows: inputs (B, length) and their next bytes (B, length)."""
        return _windows(self.train, rng.integers(0, len(self.train) - length - 1, size=batch), length)

    def held_out_batches(self, length: int, batch: int) -> list[Batch]:
        """Every non-overlapping window of the held-out text, ``batch`` at a time: the same for every run."""
        starts = np.arange(0, len(self.held_out) - length - 1, length)
        return [_windows(self.held_out, starts[i : i + batch], length) for i in range(0, len(starts), batch)]


def _windows(ids: np.ndarray, starts: np.ndarray, length: int) -> Batch:
    window = np.stack([ids[s : s + length + 1] for s in starts])
    return torch.from_numpy(window[:, :-1].copy()), torch.from_numpy(window[:, 1:].copy())


# -- the one-token-per-pair recall of the first comparison ---------------------------------------

N_KEYS, N_VALUES = 32, 8


def recall_vocab_size() -> int:
    """Query tokens (one per key), pair tokens (one per key and value), answer tokens (one per value)."""
    return N_KEYS + N_KEYS * N_VALUES + N_VALUES


def recall_batch(batch: int, n_pairs: int, rng: np.random.Generator) -> Batch:
    """Easy associative recall: ``n_pairs`` one-token pairs ``N_KEYS + key * N_VALUES + value``, then each key.

    Keys are distinct, drawn from 32; values from 8 (with repeats); queries in a random order,
    right after the pairs (T = 2 n_pairs). Scored: at each query, the answer token of its value.
    """
    if not 1 <= n_pairs <= N_KEYS:
        raise ValueError(f"n_pairs must be in 1..{N_KEYS}, got {n_pairs}")
    keys = np.argsort(rng.random((batch, N_KEYS)), axis=1)[:, :n_pairs]  # (B, n) distinct
    values = rng.integers(0, N_VALUES, size=(batch, n_pairs))
    order = np.argsort(rng.random((batch, n_pairs)), axis=1)
    query_keys = np.take_along_axis(keys, order, axis=1)
    query_values = np.take_along_axis(values, order, axis=1)
    inputs = np.concatenate([N_KEYS + keys * N_VALUES + values, query_keys], axis=1)
    targets = np.full_like(inputs, IGNORE)
    targets[:, n_pairs:] = N_KEYS + N_KEYS * N_VALUES + query_values
    return torch.from_numpy(inputs), torch.from_numpy(targets)


# -- multi-query associative recall in Zoology's format ------------------------------------------


def mqar_gap_probabilities(space: int, power: float) -> np.ndarray:
    """P(gap = g) proportional to (g + 1)^(power - 1), g = 0 .. space - 1: a power law, near gaps likeliest."""
    p = np.arange(1, space + 1, dtype=np.float64) ** (power - 1.0)
    return p / p.sum()


def mqar_batch(
    batch: int, length: int, n_pairs: int, vocab_size: int, rng: np.random.Generator, *, power: float = 0.01
) -> Batch:
    """Multi-query associative recall as in Zoology (Arora et al. 2023, arXiv 2312.04927), from its description.

    ``k_1 v_1 ... k_n v_n`` (keys distinct, from tokens 1 .. V/2 - 1; values distinct, from
    V/2 .. V - 1), then ``length - 2n`` positions of filler (uniform random tokens of the whole
    vocabulary) among which each key is asked once: the query for pair i sits at
    ``2n + 2 g_i``, the slots ``g_i`` distinct and drawn with P(g) of
    :func:`mqar_gap_probabilities`. Scored: at each query, the value of its key.

    Returns
    -------
    inputs, targets : int64 tensors, shape (B, length)
    """
    if length % 2 or length < 4 * n_pairs:
        raise ValueError(f"length must be even and at least 4 * n_pairs = {4 * n_pairs}, got {length}")
    if vocab_size // 2 - 1 < n_pairs or vocab_size <= length:
        raise ValueError(f"vocab_size must exceed length and give n_pairs distinct keys, got {vocab_size}")
    half, context = vocab_size // 2, 2 * n_pairs
    keys = 1 + np.argsort(rng.random((batch, half - 1)), axis=1)[:, :n_pairs]
    values = half + np.argsort(rng.random((batch, vocab_size - half)), axis=1)[:, :n_pairs]
    space = (length - context) // 2
    p = mqar_gap_probabilities(space, power)
    # distinct slots by weighted sampling without replacement: the n smallest of -log(u) / p (Efraimidis-Spirakis)
    slots = np.argsort(-np.log(rng.random((batch, space))) / p, axis=1)[:, :n_pairs]
    inputs = rng.integers(0, vocab_size, size=(batch, length))
    inputs[:, 0:context:2], inputs[:, 1:context:2] = keys, values
    rows = np.arange(batch)[:, None]
    inputs[rows, context + 2 * slots] = keys
    targets = np.full_like(inputs, IGNORE)
    targets[rows, context + 2 * slots] = values
    return torch.from_numpy(inputs), torch.from_numpy(targets)


# -- selective copying ---------------------------------------------------------------------------

N_COPY_TOKENS = 16  # content tokens 0..15; then the blank and the marker


def copy_vocab_size() -> int:
    return N_COPY_TOKENS + 2


def copy_batch(batch: int, length: int, n_tokens: int, rng: np.random.Generator) -> Batch:
    """Selective copying (Gu and Dao 2023): ``n_tokens`` content tokens at random places among blanks, in order.

    The first ``length - n_tokens`` positions hold the content tokens (of 16) at sorted random
    positions, blanks elsewhere; then ``n_tokens`` markers. Scored: at the i-th marker, the
    i-th content token. The model must skip the blanks and count.

    Returns
    -------
    inputs, targets : int64 tensors, shape (B, length)
    """
    if not 1 <= n_tokens <= length // 2:
        raise ValueError(f"n_tokens must be in 1..length // 2 = {length // 2}, got {n_tokens}")
    blank, marker = N_COPY_TOKENS, N_COPY_TOKENS + 1
    region = length - n_tokens
    content = rng.integers(0, N_COPY_TOKENS, size=(batch, n_tokens))
    places = np.sort(np.argsort(rng.random((batch, region)), axis=1)[:, :n_tokens], axis=1)
    inputs = np.full((batch, length), blank, dtype=np.int64)
    inputs[np.arange(batch)[:, None], places] = content
    inputs[:, region:] = marker
    targets = np.full_like(inputs, IGNORE)
    targets[:, region:] = content
    return torch.from_numpy(inputs), torch.from_numpy(targets)


# -- a long-range lookup -------------------------------------------------------------------------

N_SIGNALS, N_NOISE = 8, 1  # one noise token: a blank, as in the copy-memory task of Hochreiter and Schmidhuber


def needle_vocab_size() -> int:
    return N_SIGNALS + N_NOISE


def needle_batch(batch: int, length: int, rng: np.random.Generator, *, last_only: bool = False) -> Batch:
    """One signal token (of 8) at a uniform position 0 .. length - 2 among blanks; every later position names it.

    Training scores every position after the signal. ``last_only`` scores only the last
    position, so that its distance back to the signal is uniform on 1 .. length - 1: the test.

    Returns
    -------
    inputs, targets : int64 tensors, shape (B, length)
    """
    if length < 8:
        raise ValueError(f"length must be at least 8, got {length}")
    inputs = np.full((batch, length), N_SIGNALS, dtype=np.int64)
    signal = rng.integers(0, N_SIGNALS, size=batch)
    position = rng.integers(0, length - 1, size=batch)
    inputs[np.arange(batch), position] = signal
    after = np.arange(length)[None, :] > position[:, None]
    if last_only:
        after &= np.arange(length)[None, :] == length - 1
    targets = np.where(after, signal[:, None], IGNORE)
    return torch.from_numpy(inputs), torch.from_numpy(targets)
