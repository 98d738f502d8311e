"""``LatteCache``: a transformers ``Cache`` that holds one Latte state per layer instead of keys and values.

Causal Latte needs no past keys and values: the state (m, a, S) of each layer, of shapes
(B, H_kv, L) and (B, H_kv, L, D), summarises every token seen (see :mod:`latte_ref.state`),
so the cache has the same size after 10 tokens as after 100 000.

How the state reaches the attention function. In transformers' attention modules (Llama,
GPT-2, BERT, ...) the module calls ``cache.update(key, value, layer_idx)`` and then, with
no other step between, the attention function with the tensors ``update`` returned; the
attention function is not given the cache. :meth:`LatteCache.update` therefore returns the
new tokens' keys and values unchanged (the same tensor objects) and hands its layer over,
by the identity of that key tensor, to the next attention call on this thread
(:func:`claim`). The attention function reads the layer's state, runs the new tokens
through it and stores the state after them. A model whose attention is not "latte" never
claims the layer: the next ``update`` then raises instead of letting that attention read
only the new tokens.
"""

from __future__ import annotations

import threading
from typing import Any

import torch
from transformers.cache_utils import Cache, CacheLayerMixin

from ...state import LatteState

__all__ = ["LatteCache", "LatteCacheLayer", "claim"]

_HANDOFF = threading.local()  # (key tensor, LatteCacheLayer, LatteCache) of the last update on this thread


class LatteCacheLayer(CacheLayerMixin):
    """One layer's Latte state, plus the count of positions (padding included) it has seen.

    Attributes
    ----------
    state : LatteState or None
        running_max and normaliser (B, H_kv, L), numerator (B, H_kv, L, D); None before the first token.
        One state per key/value head: under grouped-query attention the query heads of a group share
        their keys and values, hence their state.
    seen : int
        Positions seen, padding included, as ``DynamicCache.get_seq_length`` counts them.
    """

    is_compileable = False
    is_croppable = False  # a state cannot forget its last tokens
    is_sliding = False

    def __init__(self, **kwargs: Any) -> None:
        super().__init__()
        self.state: LatteState | None = None
        self.seen = 0
        self.dims: tuple[int, int, int] | None = None  # (H_kv, L, D) of the model that filled it
        self.index = 0  # the model layer it serves, for error messages

    def lazy_initialization(self, key_states: torch.Tensor, value_states: torch.Tensor) -> None:
        self.device = key_states.device
        self.dims = (key_states.shape[1], key_states.shape[-1], value_states.shape[-1])
        self.is_initialized = True

    def update(
        self, key_states: torch.Tensor, value_states: torch.Tensor, *args: Any, **kwargs: Any
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Count the new tokens and return their keys and values (B, H_kv, T, L | D) unchanged."""
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        dims = (key_states.shape[1], key_states.shape[-1], value_states.shape[-1])
        if key_states.ndim != 4 or value_states.ndim != 4 or dims != self.dims:
            raise ValueError(
                f"cache (past_key_values): this LatteCache holds states of (H_kv, L, D) = {self.dims}, but this model"
                f" gives keys {tuple(key_states.shape)} and values {tuple(value_states.shape)}; use a new LatteCache()"
            )
        if self.state is not None and self.state.numerator.shape[0] != key_states.shape[0]:
            raise ValueError(
                f"cache (past_key_values): this LatteCache holds {self.state.numerator.shape[0]} rows, the input has"
                f" {key_states.shape[0]}; use a new LatteCache()"
            )
        self.seen += key_states.shape[-2]
        return key_states, value_states

    def get_mask_sizes(self, query_length: int) -> tuple[int, int]:
        """(kv_length, kv_offset) as for a ``DynamicLayer``: the mask covers every position seen and the new ones."""
        return self.seen + query_length, 0

    def get_seq_length(self) -> int:
        return self.seen

    def get_max_length(self) -> int:
        return -1  # no bound: the state does not grow

    def reset(self) -> None:
        self.state, self.seen, self.dims, self.is_initialized = None, 0, None, False

    def _map(self, function: Any) -> None:
        if self.state is not None:
            self.state = LatteState(*(function(a) for a in self.state))

    def reorder_cache(self, beam_idx: torch.LongTensor) -> None:
        """Rows of the state in the order of ``beam_idx`` (beam search)."""
        self._map(lambda a: a.index_select(0, beam_idx.to(a.device)))

    def batch_repeat_interleave(self, repeats: int) -> None:
        self._map(lambda a: a.repeat_interleave(repeats, dim=0))

    def batch_select_indices(self, indices: torch.Tensor) -> None:
        self._map(lambda a: a[indices, ...])

    def crop(self, tokens_to_remove: int) -> None:
        if tokens_to_remove != 0:
            raise ValueError(
                f"tokens_to_remove: a LatteCache cannot drop tokens (got {tokens_to_remove}); its state has no"
                " per-token entries"
            )

    def offload(self) -> None:
        self._map(lambda a: a.to("cpu", non_blocking=True))

    def prefetch(self) -> None:
        if self.is_initialized:
            self._map(lambda a: a.to(self.device, non_blocking=True))

    @property
    def nbytes(self) -> int:
        """Bytes of the state (0 before the first token)."""
        return 0 if self.state is None else sum(a.nbytes for a in self.state)


class LatteCache(Cache):
    """Constant-memory cache (``past_key_values``) for models with ``attn_implementation="latte"``.

    Built with no arguments, like ``DynamicCache()``: its layers appear as the model first
    calls them. Pass it to ``model.generate(..., cache=LatteCache())`` (the argument was
    ``past_key_values`` in earlier transformers) or to a forward call with ``use_cache=True``.
    Padding is taken from the attention mask: a padded position leaves the state as it was,
    so each row of a left- or right-padded batch gets the state (and the tokens) it gets alone.
    Memory: per layer, (2·L + L·D)·H_kv numbers per row, whatever the number of tokens.

    Examples
    --------
    >>> from latte_ref.integrations.transformers import LatteCache
    >>> cache = LatteCache()
    >>> cache.get_seq_length(), cache.nbytes
    (0, 0)
    """

    def __init__(self) -> None:
        super().__init__(layer_class_to_replicate=LatteCacheLayer)

    def update(
        self, key_states: torch.Tensor, value_states: torch.Tensor, layer_idx: int, *args: Any, **kwargs: Any
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Return the new tokens' keys and values unchanged and hand layer ``layer_idx`` to the next attention call.

        key_states (B, H_kv, T, L), value_states (B, H_kv, T, D). The attention function (see
        :mod:`latte_ref.integrations.transformers.attention`) claims the layer by these tensors.
        """
        pending = getattr(_HANDOFF, "pending", None)
        if pending is not None and pending[2] is self:
            _HANDOFF.pending = None
            raise ValueError(
                "cache (past_key_values): a LatteCache needs attn_implementation='latte' (its update returns only the"
                f" new tokens, which no 'latte' attention read for layer {pending[1].index}); call"
                " latte_ref.integrations.transformers.register() and set the model's attention to 'latte'"
            )
        keys, values = super().update(key_states, value_states, layer_idx, *args, **kwargs)
        layer = self.layers[layer_idx]
        assert isinstance(layer, LatteCacheLayer)
        layer.index = layer_idx
        _HANDOFF.pending = (keys, layer, self)
        return keys, values

    @property
    def states(self) -> list[LatteState | None]:
        """The state of each layer (None for a layer that has seen no token)."""
        return [layer.state for layer in self.layers if isinstance(layer, LatteCacheLayer)]

    @property
    def nbytes(self) -> int:
        """Bytes of all the layers' states: constant in the number of tokens seen."""
        return sum(layer.nbytes for layer in self.layers if isinstance(layer, LatteCacheLayer))


def claim(key_states: torch.Tensor) -> LatteCacheLayer | None:
    """The cache layer whose ``update`` returned ``key_states`` just before this call, or None (no LatteCache)."""
    pending = getattr(_HANDOFF, "pending", None)
    if pending is None or pending[0] is not key_states:
        return None
    _HANDOFF.pending = None
    layer: LatteCacheLayer = pending[1]
    return layer
