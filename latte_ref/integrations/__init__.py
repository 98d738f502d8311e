"""Latte inside other libraries: :mod:`latte_ref.integrations.transformers` (Hugging Face transformers).

Each module here imports its library; importing this package imports none of them.
"""

__all__: list[str] = []
