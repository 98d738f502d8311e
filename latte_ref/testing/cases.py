"""The conformance cases: edge shapes, adversarial logits, padding, carried state and long sequences.

Every case is plain float64 NumPy data drawn from a generator seeded by the suite
seed and the case's name, so ``(name, seed)`` reproduces a case exactly on any
machine. The arrays are cast to the candidate's backend, device and dtype only
when it is run.
"""

from __future__ import annotations

import zlib
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from .inputs import random_qkv

__all__ = ["FORMS", "ValidationCase", "case_names", "generate_cases", "make_case"]

FORMS = ("bidirectional", "causal", "step")
"""The contracts a candidate can follow (see :func:`latte_ref.testing.validate`)."""

LONG_T = 4096
"""Tokens in the long-sequence cases: far beyond any chunk size, short enough to run on CPU in a second."""


@dataclass
class ValidationCase:
    """One conformance case: float64 NumPy inputs in the (..., T, H, L) / (..., T, H, D) layout.

    Attributes
    ----------
    name : str
        Unique within a suite; with ``seed`` it reproduces the case.
    seed : int
        The suite seed the case was drawn with.
    description : str
        What the case probes, in one line.
    q, k : ndarray, shape (..., T, H, L)
    v : ndarray, shape (..., T, H, D)
    mask : bool ndarray, shape (..., T), or None
        Only in cases for candidates that take ``mask=``.
    cuts : tuple of int
        Token positions where the sequence is cut into calls that carry the state
        (empty: one call over the whole sequence).
    """

    name: str
    seed: int
    description: str
    q: np.ndarray
    k: np.ndarray
    v: np.ndarray
    mask: np.ndarray | None = None
    cuts: tuple[int, ...] = field(default_factory=tuple)

    @property
    def shape(self) -> str:
        """``batch x T x H x L x D`` as text, for the report."""
        return "x".join(str(n) for n in (*self.q.shape, self.v.shape[-1]))

    @property
    def n_tokens(self) -> int:
        return int(self.q.shape[-3])


def case_rng(seed: int, name: str) -> np.random.Generator:
    """The generator of one case: a function of the suite seed and the case's name only."""
    return np.random.default_rng([seed, zlib.crc32(name.encode())])


Builder = Callable[[np.random.Generator], tuple[np.ndarray, ...]]


def _shape(batch: tuple[int, ...], t: int, h: int, n_latents: int, d: int) -> Builder:
    return lambda rng: random_qkv(rng, batch, t, h, n_latents, d)


def _large_logits(rng: np.random.Generator) -> tuple[np.ndarray, ...]:
    # exp(800) overflows float16, float32 and float64 alike: only a max-subtracted softmax survives.
    q, k, v = random_qkv(rng, (2,), 29, 2, 4, 8)
    return 50.0 * q, 800.0 + 20.0 * k, v


def _increasing_logits(rng: np.random.Generator) -> tuple[np.ndarray, ...]:
    # k grows by 5 per token: the global max sits ~850 above the first keys, so exp(k - global max)
    # underflows to 0 even in float64, and only a running max keeps the early outputs.
    q, k, v = random_qkv(rng, (2,), 173, 2, 4, 8)
    steps = 5.0 * np.arange(173)[:, None, None]  # [T, 1, 1]
    return q, steps + k, v


def _nearly_tied(rng: np.random.Generator) -> tuple[np.ndarray, ...]:
    # Logits equal up to 1e-3: the softmaxes are nearly uniform and rounding decides the ties.
    q, k, v = random_qkv(rng, (2,), 41, 2, 4, 8)
    return 3.0 + 1e-3 * q, 3.0 + 1e-3 * k, v


def _base_builders() -> dict[str, tuple[str, Builder]]:
    return {
        "t1": ("a single token (T = 1)", _shape((), 1, 2, 3, 4)),
        "t_prime_37": ("T prime and no multiple of 8, 16, 32 or 64", _shape((), 37, 2, 4, 8)),
        "t_prime_131": ("T prime, past 128: several chunks and a ragged last one", _shape((), 131, 2, 4, 8)),
        "one_head": ("H = 1", _shape((), 23, 1, 4, 8)),
        "one_latent": ("L = 1: p(l | t) = 1", _shape((), 23, 2, 1, 8)),
        "large_d": ("D = 256 values per head", _shape((), 19, 2, 4, 256)),
        "batch_dims": ("two batch axes (2, 3)", _shape((2, 3), 11, 2, 3, 5)),
        "large_logits": ("keys around 800, logits spread 20-50: exp overflows without a max", _large_logits),
        "increasing_logits": ("keys growing 5 per token: a global max underflows the early tokens", _increasing_logits),
        "nearly_tied": ("logits tied up to 1e-3", _nearly_tied),
        "long": (f"a long sequence, T = {LONG_T}", _shape((), LONG_T, 2, 8, 16)),
    }


def _masks(batch: int, t: int) -> dict[str, tuple[str, np.ndarray]]:
    positions = np.arange(t)
    lengths = np.array([t - 5, 3])[:batch]
    right = positions[None, :] < lengths[:, None]  # [B, T]
    left = positions[None, :] >= (t - lengths)[:, None]
    all_padded = np.stack([np.ones(t, bool), np.zeros(t, bool)])[:batch]
    return {
        "mask_right": ("right padding (real tokens first)", right),
        "mask_left": ("left padding (real tokens last)", left),
        "mask_all_padded": ("one sequence entirely padding, one without padding", all_padded),
    }


def _mask_random(rng: np.random.Generator, batch: int, t: int) -> np.ndarray:
    return rng.random((batch, t)) < 0.7


def case_names(form: str, *, with_mask: bool = False, with_state: bool = False) -> list[str]:
    """The names of the cases :func:`generate_cases` makes for these flags, in order."""
    _check_form(form)
    names = list(_base_builders())
    if with_mask:
        names += [*_masks(2, 2), "mask_random"]
    if with_state and form == "causal":
        names += ["state_cuts", "state_cuts_increasing"]
    return names


def make_case(name: str, form: str, *, seed: int = 0) -> ValidationCase:
    """The case called ``name`` (one of :func:`case_names`), drawn from ``seed``.

    Examples
    --------
    >>> from latte_ref.testing import make_case
    >>> a, b = make_case("t_prime_37", "causal", seed=3), make_case("t_prime_37", "causal", seed=3)
    >>> a.shape, bool((a.q == b.q).all())
    ('37x2x4x8', True)
    """
    _check_form(form)
    rng = case_rng(seed, name)
    builders = _base_builders()
    if name in builders:
        description, build = builders[name]
        q, k, v = build(rng)
        return ValidationCase(name, seed, description, q, k, v)
    if name.startswith("mask_"):
        t = 29
        q, k, v = random_qkv(rng, (2,), t, 2, 4, 8)
        masks = _masks(2, t)
        if name in masks:
            description, mask = masks[name]
        elif name == "mask_random":
            description, mask = "padding at random positions (30%)", _mask_random(rng, 2, t)
        else:
            raise ValueError(f"unknown case {name!r}")
        return ValidationCase(name, seed, description, q, k, v, mask=mask)
    if name == "state_cuts":
        q, k, v = random_qkv(rng, (2,), 50, 2, 4, 8)
        return ValidationCase(
            name, seed, "the state carried across calls cut at tokens 1, 17 and 32", q, k, v, cuts=(1, 17, 32)
        )
    if name == "state_cuts_increasing":
        q, k, v = _increasing_logits(rng)
        return ValidationCase(
            name,
            seed,
            "growing keys cut into calls: the carried state must be rescaled",
            q,
            k,
            v,
            cuts=(7, 60, 61, 120),
        )
    known = ", ".join(case_names(form, with_mask=True, with_state=True))
    raise ValueError(f"unknown case {name!r}; known for form {form!r}: {known}")


def generate_cases(
    form: str, *, with_mask: bool = False, with_state: bool = False, seed: int = 0, names: list[str] | None = None
) -> list[ValidationCase]:
    """The conformance suite for a form: every case of :func:`case_names`, or just ``names``.

    Examples
    --------
    >>> from latte_ref.testing import generate_cases
    >>> [c.name for c in generate_cases("causal", with_mask=True)][-4:]
    ['mask_right', 'mask_left', 'mask_all_padded', 'mask_random']
    """
    chosen = case_names(form, with_mask=with_mask, with_state=with_state) if names is None else names
    return [make_case(name, form, seed=seed) for name in chosen]


def _check_form(form: str) -> None:
    if form not in FORMS:
        raise ValueError(f"form must be one of {FORMS}, got {form!r}")
