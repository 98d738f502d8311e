r"""Sequence-parallel Latte on Dask: a sequence chunked along T becomes a graph of per-block tasks.

:func:`latte_ref.causal` and :func:`latte_ref.bidirectional` hand Dask inputs to this
module (through :mod:`latte_ref._dispatch`) once they have checked them. With the sequence
in blocks ``0..n-1`` along T (the Dask chunks of T), and ``⊕`` the associative
:func:`latte_ref.combine`, the graph for every block of the batch axes and heads is

.. code-block:: text

    local_i  = summarise(k_i, v_i)                         n tasks, one block each
    before_i = state ⊕ local_0 ⊕ ... ⊕ local_(i-1)          a scan: at most ceil(log2(n + 1)) rounds
    y_i      = causal(q_i, k_i, v_i, state=before_i)       n tasks, one block and one state each

and, bidirectionally, ``total = local_0 ⊕ ... ⊕ local_(n-1)`` reduced as a binary tree
(depth ``ceil(log2 n)``) and ``y_i = read_out(softmax(q_i), total)``. A state holds
H·L·(D + 2) numbers, so no task holds more than one block of the sequence plus states,
and the n tasks of each pass are independent. Each block runs the core functions on
the arrays Dask holds (NumPy, or CuPy).

A block's output needs only the states of the blocks before it, so the scheduler can run
the two passes as one wave from the first block to the last: a block read for its state
is used for its outputs soon after, and memory stays at a few blocks per worker.

Packed rows (``segment_ids``, chunked like the mask) cut every block into pieces, one per
segment it touches. Pairs (a segment starts in the block, the state of its last piece)
merge associatively by :func:`latte_ref.state.segmented_combine`, so the same scan gives
``before_i``, the state of the segment that runs into block i, however many blocks it
spans; block i drops it where its first token begins a segment (its id differs from the
last id of the block before). Bidirectionally a second scan runs backwards over pairs (a
segment ends in the block, the state of its first piece) for ``after_i``; a block's first
piece reads ``before_i ⊕ piece ⊕ after_i`` (its last piece likewise), and the pieces wholly
inside it are read by the core. Each block's first and last ids are small tasks of their own.

Dask is imported inside the functions, so importing this package needs no Dask.

The package's modules name its parts; each imports only those listed before it:

- :mod:`latte_ref.parallel.dask.pieces`: the pieces of a block of a packed row, and the pairs the
  segmented scans merge (functions of the namespace, which the JAX path uses too);
- :mod:`latte_ref.parallel.dask.scans`: the scan and the tree reduction, as delayed merges;
- :mod:`latte_ref.parallel.dask.tasks`: the per-block tasks, the core functions on one block's arrays;
- :mod:`latte_ref.parallel.dask.layout`: the block layout, and a caller's state in and the final state out;
- :mod:`latte_ref.parallel.dask.forms`: :func:`causal` and :func:`bidirectional`, row by row of blocks.
"""

from __future__ import annotations

from .forms import bidirectional, causal
from .pieces import (
    backward_piece,
    ends_at_last,
    forward_piece,
    packed_read,
    piece_state,
    segmented_merge,
    starts_at_first,
)
from .scans import inclusive_scan, tree_reduce

__all__ = [
    "backward_piece",
    "bidirectional",
    "causal",
    "ends_at_last",
    "forward_piece",
    "inclusive_scan",
    "packed_read",
    "piece_state",
    "segmented_merge",
    "starts_at_first",
    "tree_reduce",
]
