"""JAX: its CPU (and GPU, where installed) devices; float64 only with ``jax_enable_x64``."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import numpy as np

from ._base import Backend

# The jitted function of each (function, static arguments) that ``one_graph`` has run: jax.jit caches its
# compilations per shape on the jitted function, so it must be the same object from call to call.
_ONE_GRAPH: dict[Any, Any] = {}


class JaxBackend(Backend):
    name = "jax"
    module = "jax"

    def framework(self) -> Any:
        import jax.numpy as jnp

        return jnp

    def x64_enabled(self) -> bool:
        import jax

        return bool(jax.config.read("jax_enable_x64"))

    def enable_x64(self) -> None:
        """Turn on float64 (JAX computes in float32 unless asked); affects the whole process."""
        import jax

        jax.config.update("jax_enable_x64", True)

    @contextlib.contextmanager
    def x64(self, enabled: bool) -> Iterator[None]:
        """x64 mode set to ``enabled`` inside, and restored afterwards (for one run of one dtype)."""
        import jax

        before = self.x64_enabled()
        jax.config.update("jax_enable_x64", enabled)
        try:
            yield
        finally:
            jax.config.update("jax_enable_x64", before)

    def devices(self) -> list[Any]:
        import jax

        return list(jax.devices())

    def dtypes(self, device: Any = None) -> list[str]:
        wide = ["float64"] if self.x64_enabled() else []
        return [*wide, "float32", "float16", "bfloat16"]

    def dtype(self, name: str) -> Any:
        if name == "float64" and not self.x64_enabled():
            raise ValueError(
                "float64 on JAX needs x64 mode (jax.config.update('jax_enable_x64', True));"
                " without it JAX would silently compute in float32"
            )
        return super().dtype(name)

    def asarray(self, x: Any, *, dtype: str | None = None, device: Any = None) -> Any:
        import jax

        x = np.asarray(x)
        array = self.framework().asarray(x, dtype=self.dtype(dtype or x.dtype.name))
        return jax.device_put(array, device) if device is not None else array

    def to_numpy(self, x: Any) -> np.ndarray:
        jnp = self.framework()
        if x.dtype == jnp.bfloat16:
            x = x.astype(jnp.float32)
        return np.array(x, copy=True)

    def stop_gradient(self, x: Any) -> Any:
        import jax

        return jax.lax.stop_gradient(x)

    def vjp(self, function: Any, arrays: tuple[Any, ...], cotangent: np.ndarray, *, jit: bool = False) -> tuple:
        import jax

        def pull(*arrays: Any) -> Any:
            y, pullback = jax.vjp(function, *arrays)
            return pullback(jax.numpy.asarray(cotangent, dtype=y.dtype))

        return tuple((jax.jit(pull) if jit else pull)(*arrays))

    def cond(self, pred: Any, if_true: Any, if_false: Any, operands: tuple[Any, ...]) -> Any:
        """``jax.lax.cond`` on a traced ``pred`` (under ``jit``), a Python ``if`` on a concrete one."""
        import jax

        if isinstance(pred, jax.core.Tracer):
            return jax.lax.cond(pred, if_true, if_false, *operands)
        return if_true(*operands) if bool(pred) else if_false(*operands)

    def one_graph(
        self, fn: Any, args: tuple[Any, ...], kwargs: dict[str, Any], static: tuple[tuple[int, ...], tuple[str, ...]]
    ) -> Any:
        """``jax.jit(fn)``, made once per function and static arguments.

        Eager JAX compiles every operation for every new shape: eager ``causal`` at T = 1,024 took
        8.1 s and 165 compilations on its first call, 26 ms on later ones; with its block as one
        graph, 2.4 s, 8 compilations and 4.9 ms. Under an outer ``jit``, ``grad`` or ``vmap`` the
        inner ``jit`` is traced through like any other function.
        """
        import jax

        key = (fn, static)
        jitted = _ONE_GRAPH.get(key)
        if jitted is None:
            jitted = _ONE_GRAPH[key] = jax.jit(fn, static_argnums=static[0], static_argnames=static[1])
        return jitted(*args, **kwargs)

    def synchronize(self, x: Any) -> Any:
        return x.block_until_ready()

    @property
    def array_modules(self) -> tuple[str, ...]:
        return ("jax", "jaxlib")
