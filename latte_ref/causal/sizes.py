"""The sizes of the causal form: tokens per chunk, and the blocks of chunks evaluated together."""

from __future__ import annotations

DEFAULT_CHUNK_SIZE = 64
"""Tokens per chunk when ``chunk_size=None`` (see docs/performance.md for the measurement)."""

BLOCK_TOKENS = 4096
"""Tokens whose chunks are evaluated together; the state is carried between such blocks.

It bounds memory, and it keeps a block's arrays (a few MB) in cache: on NumPy, blocks
of 4,096 tokens ran 1.2 to 1.5 times as fast as blocks of 16,384 (docs/performance.md).
"""

TRACED_BLOCK_TOKENS = 2048
"""The same for traced and lazy arrays, whose per-token form holds C·L weights per token."""


def _blocks(n_tokens: int, chunk_size: int, *, traced: bool) -> list[tuple[slice, int]]:
    """(tokens, chunk size) of each block: whole chunks, :data:`BLOCK_TOKENS` at a time, then the remainder."""
    per_block = max(1, (TRACED_BLOCK_TOKENS if traced else BLOCK_TOKENS) // chunk_size) * chunk_size
    whole = n_tokens - n_tokens % chunk_size
    blocks = [(slice(start, min(start + per_block, whole)), chunk_size) for start in range(0, whole, per_block)]
    if whole < n_tokens:  # the last, shorter chunk is a block of its own
        blocks.append((slice(whole, n_tokens), n_tokens - whole))
    return blocks
