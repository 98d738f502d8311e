"""The weights of one Latte layer, in the authors' layout: :class:`LatteParams` and :func:`init_params`."""

from __future__ import annotations

import sys
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import array_api_extra as xpx
import numpy as np

from ._array import Array, namespace_of, resolve_namespace
from ._checks import check_dtype_request, check_positive_int, same_device

__all__ = ["LatteParams", "init_params", "register_jax_pytree"]


@dataclass(frozen=True, repr=False)
class LatteParams:
    """Weights of one Latte layer, laid out as in the authors' code.

    Where JAX is imported, ``LatteParams`` is a JAX pytree: the four weights are its
    leaves and ``n_heads`` is static, so ``jax.grad``, ``jax.jit`` and ``jax.tree.map``
    take it as it is (see :func:`register_jax_pytree`).

    Attributes
    ----------
    wq, wk : array, shape (d_model, n_latents)
        Latent projections. The n_latents columns are split into ``n_heads`` equal
        groups: head h owns columns ``h*L : (h+1)*L`` with ``L = n_latents // n_heads``.
    wv, wo : array, shape (d_model, d_model)
        Value and output projections; head h owns value columns ``h*D : (h+1)*D``
        with ``D = d_model // n_heads``.
    n_heads : int
        H.

    Examples
    --------
    >>> import latte_ref
    >>> latte_ref.init_params(d_model=16, n_latents=8, n_heads=4)
    LatteParams(d_model=16, n_latents=8, n_heads=4, wq/wk (16, 8), wv/wo (16, 16), float64)
    """

    wq: Array
    wk: Array
    wv: Array
    wo: Array
    n_heads: int

    def __post_init__(self) -> None:
        if not _registered and "jax" in sys.modules:  # JAX was imported after latte_ref: register now
            register_jax_pytree()
        check_positive_int("n_heads", self.n_heads)
        weights = {name: getattr(self, name) for name in ("wq", "wk", "wv", "wo")}
        xp = namespace_of(**weights)
        same_device(**weights)
        for name, w in weights.items():
            if w.ndim != 2:
                raise ValueError(f"{name} must be a matrix, got shape {tuple(w.shape)}")
            if not xp.isdtype(w.dtype, "real floating"):
                raise TypeError(f"{name} must be real floating-point, got dtype {w.dtype}")
        d_model, n_latents = self.wq.shape
        if tuple(self.wk.shape) != (d_model, n_latents):
            raise ValueError(f"wk must have the shape of wq {(d_model, n_latents)}, got {tuple(self.wk.shape)}")
        for name in ("wv", "wo"):
            if tuple(getattr(self, name).shape) != (d_model, d_model):
                raise ValueError(f"{name} must have shape {(d_model, d_model)}, got {tuple(getattr(self, name).shape)}")
        for name, size in (("n_latents", n_latents), ("d_model", d_model)):
            if size == 0 or size % self.n_heads:
                raise ValueError(f"{name} must be a positive multiple of n_heads={self.n_heads}, got {size}")

    @classmethod
    def _unchecked(cls, wq: Array, wk: Array, wv: Array, wo: Array, *, n_heads: int) -> LatteParams:
        """Weights already known to pass ``__post_init__``'s checks, put together without running them again."""
        p = object.__new__(cls)
        for name, w in (("wq", wq), ("wk", wk), ("wv", wv), ("wo", wo)):
            object.__setattr__(p, name, w)
        object.__setattr__(p, "n_heads", n_heads)
        return p

    @property
    def d_model(self) -> int:
        return int(self.wq.shape[0])

    @property
    def n_latents(self) -> int:
        return int(self.wq.shape[1])

    def __repr__(self) -> str:
        # Shapes and dtype only: the weights of a real layer would fill the screen.
        dtypes = {str(w.dtype).removeprefix("torch.") for w in (self.wq, self.wk, self.wv, self.wo)}
        return (
            f"LatteParams(d_model={self.d_model}, n_latents={self.n_latents}, n_heads={self.n_heads},"
            f" wq/wk {tuple(self.wq.shape)}, wv/wo {tuple(self.wv.shape)}, {'/'.join(sorted(dtypes))})"
        )

    @classmethod
    def from_authors(cls, params: Mapping[str, Any], *, n_heads: int) -> LatteParams:
        """The weights of the authors' Flax modules (``BidLatte``, ``StableScanLatte``) as ``LatteParams``.

        Parameters
        ----------
        params : mapping
            The module's parameters, keys ``Wq``, ``Wk`` (d_model, n_latents), ``Wv`` and ``o_proj``
            (d_model, d_model); or the dict that ``module.init`` returns, which holds them under ``"params"``.
            The arrays are kept as they are (a JAX array stays one; nested lists become NumPy arrays).
        n_heads : int
            The module's ``n_heads``, which its parameters do not record.

        Returns
        -------
        LatteParams
            ``wq, wk, wv, wo = Wq, Wk, Wv, o_proj``: the authors' layout is this package's.

        Examples
        --------
        >>> import numpy as np, latte_ref
        >>> rng = np.random.default_rng(0)
        >>> authors = {"params": {"Wq": rng.normal(size=(16, 8)), "Wk": rng.normal(size=(16, 8)),
        ...                       "Wv": rng.normal(size=(16, 16)), "o_proj": rng.normal(size=(16, 16))}}
        >>> p = latte_ref.LatteParams.from_authors(authors, n_heads=4)
        >>> p.n_latents, p.n_heads, bool(np.all(p.wo == authors["params"]["o_proj"]))
        (8, 4, True)
        """
        if not isinstance(params, Mapping):
            raise TypeError(f"params must be a mapping of the authors' parameter names, got {type(params).__name__}")
        if "params" in params and isinstance(params["params"], Mapping):
            params = params["params"]
        names = {"wq": "Wq", "wk": "Wk", "wv": "Wv", "wo": "o_proj"}
        missing = [key for key in names.values() if key not in params]
        if missing:
            raise KeyError(f"the authors' parameters need the keys Wq, Wk, Wv, o_proj; missing {missing}")
        weights = {ours: params[theirs] for ours, theirs in names.items()}
        weights = {
            k: w if hasattr(w, "__array_namespace__") or hasattr(w, "dtype") else np.asarray(w)
            for k, w in weights.items()
        }
        return cls(**weights, n_heads=n_heads)


_registered = False


def register_jax_pytree() -> None:
    """Make :class:`LatteParams` a JAX pytree (weights the leaves, ``n_heads`` static); idempotent.

    It uses the JAX that the caller has already imported, and does nothing where none is:
    it runs when ``latte_ref`` is imported after JAX, when a ``LatteParams`` is made after
    JAX was imported, and when :mod:`latte_ref.layers.flax` is imported. So the core never
    imports JAX, and every ``LatteParams`` that can meet a JAX transformation is registered.
    """
    global _registered
    jax = sys.modules.get("jax")
    if _registered or jax is None:
        return

    def flatten(p: LatteParams) -> tuple[tuple[tuple[Any, Array], ...], int]:
        return tuple((jax.tree_util.GetAttrKey(n), getattr(p, n)) for n in ("wq", "wk", "wv", "wo")), p.n_heads

    def unflatten(n_heads: int, leaves: Any) -> LatteParams:
        # Bypass the checks of __post_init__: JAX rebuilds pytrees with tracers and placeholders.
        return LatteParams._unchecked(*leaves, n_heads=n_heads)

    _registered = True
    jax.tree_util.register_pytree_with_keys(LatteParams, flatten, unflatten)


def init_params(
    d_model: int,
    n_latents: int,
    n_heads: int,
    *,
    xp: Any = None,
    dtype: Any = None,
    device: Any = None,
    seed: int = 0,
) -> LatteParams:
    """Random layer weights, drawn with NumPy from ``seed`` and moved to ``xp``/``device``.

    Each matrix is normal with standard deviation ``1 / sqrt(d_model)`` (LeCun
    initialisation), so the same seed gives the same weights on every backend.

    Examples
    --------
    >>> import latte_ref
    >>> p = latte_ref.init_params(d_model=16, n_latents=8, n_heads=4)
    >>> p.wq.shape, p.wo.shape, p.n_heads
    ((16, 8), (16, 16), 4)
    """
    xp = resolve_namespace(xp)
    for name, size in (("d_model", d_model), ("n_latents", n_latents), ("n_heads", n_heads)):
        check_positive_int(name, size)
    for name, size in (("n_latents", n_latents), ("d_model", d_model)):
        if size % n_heads:
            raise ValueError(f"{name} must be a multiple of n_heads={n_heads}, got {size}")
    if dtype is None:
        dtype = xpx.default_dtype(xp, device=device)
    dtype = check_dtype_request(xp, dtype, device)
    rng = np.random.default_rng(seed)
    scale = 1.0 / np.sqrt(d_model)

    def draw(shape: tuple[int, int]) -> Array:
        return xp.asarray(rng.normal(scale=scale, size=shape), dtype=dtype, device=device)

    return LatteParams(
        wq=draw((d_model, n_latents)),
        wk=draw((d_model, n_latents)),
        wv=draw((d_model, d_model)),
        wo=draw((d_model, d_model)),
        n_heads=n_heads,
    )
