"""The conformance cases: edge shapes, adversarial logits, padding, carried state, long and packed sequences.

Every case is plain float64 NumPy data drawn from a generator seeded by the suite
seed and the case's name, so ``(name, seed)`` reproduces a case exactly on any
machine. The arrays are cast to the candidate's backend, device and dtype only
when it is run.

The packed cases (``packed_*``) hold several documents per row, told apart by
``segment_ids``; they run only for a candidate that takes ``segment_ids=``, and
:func:`skipped_cases` says why each of them does not run otherwise.
"""

from __future__ import annotations

import zlib
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from .grad_cases import GRAD_CASES, build_grad_case, grad_case_names
from .inputs import random_qkv, segment_ids_of, segment_lengths

__all__ = [
    "FORMS",
    "PACKED_FORMS",
    "ValidationCase",
    "case_names",
    "generate_cases",
    "make_case",
    "packed_names",
    "segment_ids_of",
    "segment_lengths",
    "skipped_cases",
]

FORMS = ("bidirectional", "causal", "step")
"""The contracts a candidate can follow (see :func:`latte_ref.testing.validate`)."""

PACKED_FORMS = ("bidirectional", "causal")
"""The forms whose contract has ``segment_ids=`` (a ``step`` has no time axis to pack)."""

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
    segment_ids : int ndarray, shape (..., T), or None
        Only in the packed cases: the document of each token, never decreasing along T.
    """

    name: str
    seed: int
    description: str
    q: np.ndarray
    k: np.ndarray
    v: np.ndarray
    mask: np.ndarray | None = None
    cuts: tuple[int, ...] = field(default_factory=tuple)
    segment_ids: np.ndarray | None = None

    @property
    def shape(self) -> str:
        """``batch x T x H x L x D`` as text, for the report."""
        return "x".join(str(n) for n in (*self.q.shape, self.v.shape[-1]))

    @property
    def n_tokens(self) -> int:
        return int(self.q.shape[-3])

    @property
    def segments(self) -> list[list[int]] | None:
        """The documents' lengths in each row (batch axes flattened), for the report; None when not packed."""
        if self.segment_ids is None:
            return None
        rows = self.segment_ids.reshape(-1, self.segment_ids.shape[-1])
        return [segment_lengths(row) for row in rows]


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


def case_names(
    form: str,
    *,
    with_mask: bool = False,
    with_state: bool = False,
    with_segments: bool = False,
    with_grad: bool = False,
) -> list[str]:
    """The names of the cases :func:`generate_cases` makes for these flags, in order (the tied-key ones with grad).

    Examples
    --------
    >>> from latte_ref.testing import case_names
    >>> [n for n in case_names("causal", with_segments=True) if n.startswith("packed_")]
    ['packed_rows', 'packed_length_one', 'packed_across_chunks', 'packed_logit_jump']
    """
    _check_form(form)
    names = list(_base_builders())
    if with_mask:
        names += [*_masks(2, 2), "mask_random"]
    if with_state and form == "causal":
        names += ["state_cuts", "state_cuts_increasing"]
    if with_segments:
        skipped = skipped_cases(form, with_mask=with_mask, with_state=with_state, with_segments=True)
        names += [name for name in packed_names(form) if name not in skipped]
    if with_grad:
        names += grad_case_names(form, with_mask=with_mask, with_state=with_state)
    return names


def packed_names(form: str) -> list[str]:
    """Every packed case of a form, whatever the flags: none for ``step``, the cut ones for ``causal`` only."""
    _check_form(form)
    if form not in PACKED_FORMS:
        return []
    return [name for name, packing in _packings().items() if form == "causal" or "state" not in packing.needs]


def skipped_cases(
    form: str, *, with_mask: bool = False, with_state: bool = False, with_segments: bool = False
) -> dict[str, str]:
    """The packed cases of ``form`` that these flags leave out -> why: what the candidate must take.

    Examples
    --------
    >>> from latte_ref.testing import skipped_cases
    >>> skipped_cases("bidirectional")["packed_rows"]
    'needs segment_ids= (--with-segments)'
    >>> skipped_cases("causal", with_segments=True)
    {'packed_padding': 'needs mask= (--with-mask)', 'packed_state_cuts': 'needs state= (--with-state)'}
    """
    given = {"segments": with_segments, "mask": with_mask, "state": with_state}
    reasons = {}
    for name in packed_names(form):
        missing = [need for need in ("segments", *_packings()[name].needs) if not given[need]]
        if missing:
            keywords = " and ".join(_CAPABILITIES[need][0] for need in missing)
            flags = " ".join(_CAPABILITIES[need][1] for need in missing)
            reasons[name] = f"needs {keywords} ({flags})"
    return reasons


_CAPABILITIES = {
    "segments": ("segment_ids=", "--with-segments"),
    "mask": ("mask=", "--with-mask"),
    "state": ("state=", "--with-state"),
}
"""What a packed case may need of the candidate beyond q, k, v -> (its keyword, the command-line flag)."""


@dataclass(frozen=True)
class Packing:
    """How a packed case fills its rows: the documents' lengths in each row, and what else it needs.

    Row r numbers its documents ``5 r, 5 r + (r + 1), ...``: ids need be neither 0-based nor consecutive.
    """

    description: str
    rows: tuple[tuple[int, ...], ...]
    needs: tuple[str, ...] = ()

    @property
    def n_tokens(self) -> int:
        return sum(self.rows[0])

    def segment_ids(self) -> np.ndarray:
        """(rows, T) int32: each row's documents one after another."""
        if any(sum(row) != self.n_tokens for row in self.rows):
            raise ValueError(f"every row must hold {self.n_tokens} tokens, got {[sum(r) for r in self.rows]}")
        return np.stack([segment_ids_of(row, first=5 * r, step=r + 1) for r, row in enumerate(self.rows)])


def _packings() -> dict[str, Packing]:
    return {
        "packed_rows": Packing("packed: 3 and 5 documents in the two rows", ((7, 20, 14), (3, 5, 9, 2, 22))),
        "packed_length_one": Packing(
            "packed: documents of one token, the first and last among them; a row of only such",
            ((1, 1, 1, 5, 1, 6, 1, 1, 5, 1), (1,) * 23),
        ),
        "packed_across_chunks": Packing(
            "packed: documents across chunk edges (16 to 128), and starting on them",
            ((20, 150, 27), (64, 64, 1, 68), (63, 2, 130, 2)),
        ),
        "packed_logit_jump": Packing(
            "packed: keys 800 higher in the first document: a max carried over underflows the next",
            ((10, 15, 16), (25, 16)),
        ),
        "packed_padding": Packing(
            "packed and padded: documents padded at the end or start, or padding only",
            ((9, 11, 9), (4, 3, 13, 9)),
            needs=("mask",),
        ),
        "packed_state_cuts": Packing(
            "packed rows cut into calls inside documents: the state is the first one's history",
            ((17, 23, 20), (5, 1, 27, 27)),
            needs=("state",),
        ),
    }


PACKED_PADDING = (
    (7, 8, 18, 19, 27, 28),  # the last two tokens of each document
    (4, 5, 6, 7, 8, *range(20, 29)),  # a document of padding only, one whose first two are padding, padded tail
)
"""The padded tokens of each row of ``packed_padding``."""

PACKED_CUTS = (1, 18, 34, 41, 50)
"""Where ``packed_state_cuts`` cuts its rows: never where a document starts (a call's first token continues the
state), but at the second token of documents (18 and 41 in the first row, 34 in the second) and inside them."""


def _packed_case(name: str, seed: int, rng: np.random.Generator) -> ValidationCase:
    """The packed case ``name``: random q, k, v over the packing's rows, its ids, and its mask or cuts."""
    packing = _packings()[name]
    ids = packing.segment_ids()
    q, k, v = random_qkv(rng, (len(packing.rows),), packing.n_tokens, 2, 4, 8)
    case = ValidationCase(name, seed, packing.description, q, k, v, segment_ids=ids)
    if name == "packed_logit_jump":
        first_document = ids == ids[:, :1]  # [B, T]
        case.k = k + 800.0 * first_document[..., None, None]
    elif name == "packed_padding":
        case.mask = np.ones(ids.shape, dtype=bool)
        for row, padded in enumerate(PACKED_PADDING):
            case.mask[row, list(padded)] = False
    elif name == "packed_state_cuts":
        case.cuts = PACKED_CUTS
    return case


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
    if name in packed_names(form):
        return _packed_case(name, seed, rng)
    builders = _base_builders()
    if name in builders:
        description, build = builders[name]
        q, k, v = build(rng)
        return ValidationCase(name, seed, description, q, k, v)
    if name in GRAD_CASES:
        q, k, v, mask, cuts = build_grad_case(name, rng)
        return ValidationCase(name, seed, GRAD_CASES[name].description, q, k, v, mask=mask, cuts=cuts)
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
    known = ", ".join(case_names(form, with_mask=True, with_state=True, with_segments=True, with_grad=True))
    raise ValueError(f"unknown case {name!r}; known for form {form!r}: {known}")


def generate_cases(
    form: str,
    *,
    with_mask: bool = False,
    with_state: bool = False,
    with_segments: bool = False,
    with_grad: bool = False,
    seed: int = 0,
    names: list[str] | None = None,
) -> list[ValidationCase]:
    """The conformance suite for a form: every case of :func:`case_names`, or just ``names``.

    Examples
    --------
    >>> from latte_ref.testing import generate_cases
    >>> [c.name for c in generate_cases("causal", with_mask=True)][-4:]
    ['mask_right', 'mask_left', 'mask_all_padded', 'mask_random']
    """
    if names is None:
        flags = {"with_mask": with_mask, "with_state": with_state, "with_segments": with_segments}
        names = case_names(form, **flags, with_grad=with_grad)
    return [make_case(name, form, seed=seed) for name in names]


def _check_form(form: str) -> None:
    if form not in FORMS:
        raise ValueError(f"form must be one of {FORMS}, got {form!r}")
