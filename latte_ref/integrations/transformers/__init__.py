"""Latte in Hugging Face transformers: ``attn_implementation="latte"`` and a constant-memory ``LatteCache``.

>>> import transformers
>>> from latte_ref.integrations.transformers import LatteCache, register
>>> register()
>>> config = transformers.LlamaConfig(vocab_size=100, hidden_size=32, intermediate_size=64,
...                                   num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2)
>>> model = transformers.AutoModelForCausalLM.from_config(config, attn_implementation="latte")
>>> model.config._attn_implementation
'latte'

Imports transformers and PyTorch (this package only). See ``docs/integrations/transformers.md``.
"""

from .attention import latte_attention_forward, latte_mask, register
from .cache import LatteCache, LatteCacheLayer

__all__ = ["LatteCache", "LatteCacheLayer", "latte_attention_forward", "latte_mask", "register"]
