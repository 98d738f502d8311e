"""Causal Latte, chunkwise-parallel form: every chunk at once, two matrix products each, exact for any logits.

The sequence is cut into N chunks of C tokens. Every key of a chunk is weighed
against one reference R, the running max at the chunk's first token:

    exp(k_s - m_t) = exp(k_s - R) · exp(R - m_t),

and the factor exp(R - m_t), which depends on the query alone, cancels between
numerator and normaliser. Each chunk then costs two matrix products
(queries·keysᵀ masked causally, then ·values) and L exponentials per token, as
the fastest linear-attention kernels do. The state before each chunk follows
from the chunks' own summaries by a linear recurrence, since the running maxima
at the chunks' ends are known in advance (a prefix max over the chunks' maxima).
R depends on no token after the chunk's first, so no output depends on a later
token, not even in its last bit.

The factored chunk is exact to rounding while no key rises more than a bound,
set by the dtype (:func:`factoring_bound`), above R. From the first token where
one does (a latent's logits jumping by tens inside the chunk), or where a key or
value is not finite, the chunk is computed again with the per-token form
:func:`causal_chunk`, which uses every token's own running max. On JAX arrays,
whose values cannot be read while they are traced, every chunk takes the
per-token form: a rule that does not depend on the data. (Dask arrays go to the
sequence-parallel graph, whose tasks run this function on NumPy blocks.)

Packed documents (``segment_ids``) cut chunks into pieces, one per document
(:class:`Pieces`): the products keep to a piece, each piece has its own reference,
and the recurrence over the chunks starts again where a document starts.

The package's modules name its parts; each imports only those listed before it:

- :mod:`latte_ref.causal.sizes`: the chunk and block sizes, and the blocks a sequence is cut into;
- :mod:`latte_ref.causal.chunks`: taking chunks out along the chunk axis and putting them back;
- :mod:`latte_ref.causal.maxima`: prefix maxima, plain and segmented;
- :mod:`latte_ref.causal.pieces`: where packed segments cut the chunks (:class:`Pieces`);
- :mod:`latte_ref.causal.scans`: each chunk's maxima and summary, and the states carried between chunks;
- :mod:`latte_ref.causal.exact`: the per-token chunk, :func:`causal_chunk`;
- :mod:`latte_ref.causal.factored`: the factored chunks and their bound, :func:`factoring_bound`;
- :mod:`latte_ref.causal.block`: a block of whole chunks, the states carried between them, and the
  form each chunk takes;
- :mod:`latte_ref.causal.form`: the public :func:`causal`.
"""

from __future__ import annotations

from .block import causal_block as causal_block
from .exact import causal_chunk
from .factored import factoring_bound
from .form import causal
from .maxima import prefix_max as prefix_max
from .maxima import segmented_prefix_max as segmented_prefix_max
from .pieces import Pieces as Pieces
from .scans import _doubling_scan as _doubling_scan
from .scans import _loop_scan as _loop_scan
from .sizes import BLOCK_TOKENS, DEFAULT_CHUNK_SIZE
from .sizes import TRACED_BLOCK_TOKENS as TRACED_BLOCK_TOKENS

__all__ = ["BLOCK_TOKENS", "DEFAULT_CHUNK_SIZE", "causal", "causal_chunk", "factoring_bound"]
