"""PNG plots of a ``latte-ref bench`` result (needs matplotlib: ``pip install 'latte-ref[plot]'``)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

__all__ = ["plot_all"]


def _series(rows: list[dict[str, Any]], x: str, y: str, **match: Any) -> tuple[list[float], list[float]]:
    picked = sorted(
        (
            r
            for r in rows
            if all(r.get(k) == v for k, v in match.items())
            and y in r
            and "sweep" not in r
            # packed rows are their own series: match them by asking for packed=<documents>
            and ("packed" in r) == ("packed" in match)
        ),
        key=lambda r: r[x],
    )
    return [r[x] for r in picked], [r[y] for r in picked]


def plot_all(result: dict[str, Any], output: Path) -> list[Path]:
    """Write time-vs-T, memory-vs-T and step-vs-context plots; return their paths."""
    rows = result["rows"]
    written = []
    backends = sorted({r["backend"] for r in rows if r.get("kind") == "form"})  # the backends whose forms were timed
    for backend in backends:
        fig, ax = plt.subplots(figsize=(6.4, 4.8))
        for form, style in (("bidirectional", "o-"), ("causal", "s-"), ("recurrent", "^-")):
            xs, ys = _series(rows, "T", "seconds", kind="form", backend=backend, form=form)
            ax.plot(xs, ys, style, label=f"Latte {form}")
        for form, style in (("bidirectional", "o"), ("causal", "s")):
            for documents in sorted({r["packed"] for r in rows if "packed" in r and r.get("backend") == backend}):
                xs, ys = _series(rows, "T", "seconds", kind="form", backend=backend, form=form, packed=documents)
                ax.plot(xs, ys, style, fillstyle="none", label=f"Latte {form}, {documents} documents packed")
        ax.plot(*_series(rows, "T", "seconds", kind="floor", backend=backend), "k--", label="GEMM floor")
        for is_causal, style in ((False, "x:"), (True, "+:")):
            label = "softmax attention" + (" (causal)" if is_causal else "")
            xs, ys = _series(rows, "T", "seconds", kind="softmax", backend=backend, causal=is_causal)
            ax.plot(xs, ys, style, label=label)
        title = f"time against T — {backend}, float32, H=4, L=D=32"
        _loglog(ax, "sequence length T", "seconds (min of repeats)", title)
        written.append(_save(fig, output / f"time_{backend}.png"))

    memory_rows = [r for r in rows if "peak_bytes_excluding_inputs" in r]
    if memory_rows:
        fig, ax = plt.subplots(figsize=(6.4, 4.8))
        for form, style in (("bidirectional", "o-"), ("causal", "s-"), ("recurrent", "^-")):
            xs, ys = _series(memory_rows, "T", "peak_bytes_excluding_inputs", form=form)
            ax.plot(xs, [y / 2**20 for y in ys], style, label=f"Latte {form}")
        xs, ys = _series(memory_rows, "T", "input_bytes", form="causal")
        ax.plot(xs, [y / 2**20 for y in ys], "k--", label="q, k, v inputs")
        _loglog(ax, "sequence length T", "peak MiB beyond the inputs", "peak memory against T — numpy")
        written.append(_save(fig, output / "memory_numpy.png"))

    step_rows = [r for r in rows if r["kind"] == "step"]
    if step_rows:
        fig, ax = plt.subplots(figsize=(6.4, 4.8))
        for backend in backends:
            for method, style in (("latte_step", "o-"), ("kv_cache_softmax", "x:")):
                xs, ys = _series(step_rows, "context", "seconds", backend=backend, method=method)
                if xs:
                    ax.plot(xs, [y * 1e6 for y in ys], style, label=f"{backend} {method}")
        _loglog(ax, "context length", "µs per generated token", "generation: cost of one step against the context")
        written.append(_save(fig, output / "step.png"))

    chunk_rows = sorted((r for r in rows if r.get("sweep") == "chunk_size"), key=lambda r: r["chunk_size"])
    if chunk_rows:
        fig, ax = plt.subplots(figsize=(6.4, 4.8))
        ax.plot([r["chunk_size"] for r in chunk_rows], [r["seconds"] for r in chunk_rows], "s-")
        ax.set_xscale("log", base=2)
        ax.set(xlabel="chunk_size", ylabel="seconds", title=f"causal, numpy, T={chunk_rows[0]['T']}")
        ax.grid(True, which="both", alpha=0.3)
        written.append(_save(fig, output / "chunk_size.png"))
    return written


def _loglog(ax: Any, xlabel: str, ylabel: str, title: str) -> None:
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set(xlabel=xlabel, ylabel=ylabel, title=title)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize="small")


def _save(fig: Any, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
