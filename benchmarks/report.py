"""Markdown tables from a ``latte-ref bench`` result: ``python benchmarks/report.py bench-results/results.json``."""

from __future__ import annotations

import json
import sys
from typing import Any

__all__ = ["tables"]


def _ms(seconds: float | None) -> str:
    return "—" if seconds is None else f"{seconds * 1e3:.3g}"


def _pick(rows: list[dict[str, Any]], **match: Any) -> float | None:
    for r in rows:
        if "seconds" in r and all(r.get(k) == v for k, v in match.items()):
            return float(r["seconds"])
    return None


def tables(result: dict[str, Any]) -> str:
    rows = result["rows"]
    lines = []
    for backend in sorted({r["backend"] for r in rows if r["kind"] in ("form", "floor", "softmax")}):
        lines += [
            f"**{backend}** (ms, min of repeats)",
            "",
            "| T | GEMM floor | bidirectional | causal | recurrent | softmax | softmax causal |",
            "|---:|---:|---:|---:|---:|---:|---:|",
        ]
        timed = [r for r in rows if r["kind"] in ("form", "floor", "softmax") and r.get("backend") == backend]
        for n in sorted({r["T"] for r in timed if "sweep" not in r}):
            here = [r for r in timed if r["T"] == n and "sweep" not in r and "packed" not in r]
            cells = [
                _pick(here, kind="floor"),
                _pick(here, kind="form", form="bidirectional"),
                _pick(here, kind="form", form="causal"),
                _pick(here, kind="form", form="recurrent"),
                _pick(here, kind="softmax", causal=False),
                _pick(here, kind="softmax", causal=True),
            ]
            lines.append(f"| {n:,} | " + " | ".join(_ms(c) for c in cells) + " |")
        lines.append("")
    memory = sorted((r for r in rows if "peak_bytes_excluding_inputs" in r), key=lambda r: (r["form"], r["T"]))
    if memory:
        lines += [
            "**numpy peak memory** (MB = 10⁶ bytes)",
            "",
            "| form | T | inputs | peak excluding inputs | peak including inputs |",
            "|---|---:|---:|---:|---:|",
        ]
        lines += [
            f"| {r['form']} | {r['T']:,} | {r['input_bytes'] / 1e6:.0f} | "
            f"{r['peak_bytes_excluding_inputs'] / 1e6:.0f} | {r['peak_bytes_including_inputs'] / 1e6:.0f} |"
            for r in memory
            if r["T"] >= 16_384
        ]
        lines.append("")
    steps = sorted((r for r in rows if r["kind"] == "step"), key=lambda r: (r["backend"], r["context"], r["method"]))
    if steps:
        lines += [
            "**generation, µs per token**",
            "",
            "| backend | context | Latte step | KV-cache softmax step |",
            "|---|---:|---:|---:|",
        ]
        for backend in sorted({r["backend"] for r in steps}):
            for c in sorted({r["context"] for r in steps if r["backend"] == backend}):
                cell = {r["method"]: r["seconds"] * 1e6 for r in steps if r["backend"] == backend and r["context"] == c}
                lines.append(
                    f"| {backend} | {c:,} | {cell.get('latte_step', 0):.0f} | {cell.get('kv_cache_softmax', 0):.0f} |"
                )
        lines.append("")
    chunks = sorted((r for r in rows if r.get("sweep") == "chunk_size"), key=lambda r: r["chunk_size"])
    if chunks:
        lines += [
            f"**causal against chunk_size** (numpy, T={chunks[0]['T']:,})",
            "",
            "| chunk_size | ms |",
            "|---:|---:|",
        ]
        lines += [f"| {r['chunk_size']} | {_ms(r['seconds'])} |" for r in chunks]
        lines.append("")
    scans = sorted((r for r in rows if r["kind"] == "scan"), key=lambda r: (r["backend"], r["method"]))
    if scans:
        lines += [
            "**carrying the state across the chunks of one block** (ms; N = T / C chunks)",
            "",
            "| backend | T | N | loop | doubling scan |",
            "|---|---:|---:|---:|---:|",
        ]
        for backend in sorted({r["backend"] for r in scans}):
            cell = {r["method"]: r for r in scans if r["backend"] == backend}
            first = next(iter(cell.values()))
            lines.append(
                f"| {backend} | {first['T']:,} | {first['chunks']} | {_ms(cell['loop']['seconds'])} | "
                f"{_ms(cell['doubling']['seconds'])} |"
            )
        lines.append("")
    peers = sorted((r for r in rows if r["kind"] == "peer" and "jax_scan_seconds" in r), key=lambda r: r["T"])
    if peers:
        lines += [
            "**the causal layer against the authors' algorithm** (B=2, d_model = L = 128, H=4, float32; ms)",
            "",
            "| T | JAX lax.scan under jit | NumPy `latte_attention(causal=True)` | ratio | relative difference |",
            "|---:|---:|---:|---:|---:|",
        ]
        lines += [
            f"| {r['T']:,} | {_ms(r['jax_scan_seconds'])} | {_ms(r['numpy_causal_layer_seconds'])} | "
            f"{r['jax_scan_seconds'] / r['numpy_causal_layer_seconds']:.2f} | {r['relative_error']:.1e} |"
            for r in peers
        ]
        lines.append("")
    decode = [r for r in rows if r["kind"] == "decode_step"]
    if decode:
        lines += [
            f"**one decode step** (B=1, H=4, L=D=32, float32; SDPA: one query over {decode[0]['n_cached']:,} keys)",
            "",
            "| method | µs | compile (s) |",
            "|---|---:|---:|",
        ]
        lines += [
            f"| {r['method']} | {r['seconds'] * 1e6:.1f} | "
            f"{'' if 'compile_seconds' not in r else format(r['compile_seconds'], '.2f')} |"
            for r in decode
        ]
        lines.append("")
    lines += ["**targets**", "", "| target | where | bound | measured | verdict |", "|---|---|---|---:|---|"]
    for t in result["targets"]:
        value = "—" if t["measured"] is None else f"{t['measured']:.3g}"
        bound = "" if t["bound"] is None else f"{t['sense']} {t['bound']}"
        met = t.get("verdict", {True: "met", False: "NOT met", None: ""}[t["met"]])
        lines.append(f"| {t['target']} | {t['where']} | {bound} | {value} | {met} |")
    return "\n".join(lines)


if __name__ == "__main__":
    with open(sys.argv[1] if len(sys.argv) > 1 else "bench-results/results.json") as f:
        print(tables(json.load(f)))
