"""Latte as a layer of a framework: :mod:`latte_ref.layers.torch` and :mod:`latte_ref.layers.flax`.

As einops' ``einops.layers.torch``: each module here imports its own framework, and
nothing else in latte_ref imports these modules, so the core still imports no framework.
Importing this package imports neither.
"""

__all__: list[str] = []
