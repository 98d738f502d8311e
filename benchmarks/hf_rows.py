"""The Hugging Face generation rows of the benchmark suite (``latte-ref bench --generation``).

A small Llama decoding greedily, ms per generated token: SDPA with a ``DynamicCache``
against Latte with a ``LatteCache`` (see ``hf_generation.py``, which this calls, and
which imports torch and transformers: here they are imported only when the rows are made).
"""

from __future__ import annotations

from typing import Any

__all__ = ["generation_rows", "generation_targets"]


def generation_rows(prompts: tuple[int, ...], repeats: int) -> list[dict[str, Any]]:
    """One row per prompt length: ``sdpa_ms_per_token``, ``latte_ms_per_token`` and the Latte cache's bytes."""
    import hf_generation

    args = hf_generation.parse(["--prompts", *map(str, prompts), "--repeats", str(max(repeats, 1))])
    return [
        {"kind": "hf_generation", "backend": "torch", "T": row["prompt"], **row, "seconds": row["latte_ms_per_token"]}
        for row in hf_generation.run(args)
    ]


def generation_targets(rows: list[dict[str, Any]]) -> list[tuple[str, str, float, str, float | None]]:
    """Latte's ms per token flat in the prompt (within 1.2x), and faster than SDPA + KV cache from 4k tokens."""
    found = sorted((r for r in rows if r.get("kind") == "hf_generation"), key=lambda r: r["prompt"])
    if not found:
        return []
    latte = [r["latte_ms_per_token"] for r in found]
    where = f"prompts {found[0]['prompt']} to {found[-1]['prompt']}"
    targets: list[tuple[str, str, float, str, float | None]] = [
        ("HF Llama: Latte ms/token, slowest / fastest prompt", where, 1.2, "<=", max(latte) / min(latte))
    ]
    for row in found:
        if row["prompt"] >= 4096:
            where = f"prompt={row['prompt']}"
            targets.append(("HF Llama: SDPA + KV cache / Latte + LatteCache ms/token", where, 1.0, ">", row["ratio"]))
    return targets
