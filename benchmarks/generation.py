"""Generation speed: tokens per second after a context of 1k, 16k and 128k tokens.

Two models of the same size (width, depth, heads, MLP, vocabulary, and the same number of
weights: Latte's ``n_latents`` equals ``d_model``, so ``wq, wk`` have the shapes of a
standard ``W_q, W_k``), both in NumPy float32 on the CPU:

* Latte: :mod:`latte_ref.model`, prefilled in parallel (:func:`latte_ref.model.forward`
  with ``return_state=True``, the real context) and then decoded with
  :func:`latte_ref.model.decode_step`. Its state is a fixed (H, L, D) per layer.
* Standard softmax attention with a KV cache (written here, outside the core): each new
  token reads every cached key and value, O(context) per token. Filling the cache by a
  real prefill costs O(context²), hours at 128k on a CPU, so the cache holds keys and values
  of random vectors: a decode step's cost depends on the cache's length, not its contents.

Both decode ``--new-tokens`` tokens greedily; the rate is tokens / seconds for those steps
(best of ``--repeats``). The ratios are taken in one run, as the figures in docs/model.md.
BLAS runs on one thread (unless ``OPENBLAS_NUM_THREADS`` and the like are set).

    python benchmarks/generation.py                      # contexts 1k, 16k, 128k (a few minutes)
    python benchmarks/generation.py --contexts 1024 4096 --json results/generation.json
"""

from __future__ import annotations

import os

# One BLAS thread for both models, set before NumPy loads its BLAS: a decode step is many
# small products, and on a shared machine threads handing them off cost more than they save.
for _variable in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_variable, "1")

import argparse  # noqa: E402
import json  # noqa: E402
import math  # noqa: E402
import time  # noqa: E402
from collections.abc import Sequence  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

import numpy as np  # noqa: E402

import latte_ref.model as lm  # noqa: E402

# -- the baseline: a standard decoder with a KV cache ------------------------------------------------


def softmax_model_step(
    weights: dict[str, Any], config: lm.ModelConfig, token: np.ndarray, cache: dict[str, Any]
) -> np.ndarray:
    """One token of a standard pre-LayerNorm decoder, appending its keys and values to ``cache``.

    cache: ``k``, ``v`` lists of (H, capacity, D) arrays per layer, ``length`` (filled positions)
    and ``context`` (where each measurement starts again).
    """
    xp = np
    position = cache["length"]
    heads, head_dim = config.n_heads, config.head_dim
    x = weights["embedding"][token] + lm.sinusoidal_position(xp, np.asarray(position), config.d_model, np.float32)
    for layer, block in enumerate(weights["blocks"]):
        h = lm.layer_norm(xp, x, block["mixer_norm"])
        q = (h @ block["wq"]).reshape(heads, 1, head_dim)  # [H, 1, D]
        cache["k"][layer][:, position] = (h @ block["wk"]).reshape(heads, head_dim)
        cache["v"][layer][:, position] = (h @ block["wv"]).reshape(heads, head_dim)
        keys = cache["k"][layer][:, : position + 1]  # [H, N, D]
        values = cache["v"][layer][:, : position + 1]  # [H, N, D]
        scores = (q @ keys.transpose(0, 2, 1)) / math.sqrt(head_dim)  # [H, 1, N]
        scores = np.exp(scores - scores.max(axis=-1, keepdims=True))
        y = (scores / scores.sum(axis=-1, keepdims=True)) @ values  # [H, 1, D]
        x = x + y.reshape(config.d_model) @ block["wo"]
        x = x + lm.gated_mlp(xp, lm.layer_norm(xp, x, block["mlp_norm"]), block)
    cache["length"] = position + 1
    return lm.layer_norm(xp, x, weights["final_norm"]) @ weights["unembedding"]


def softmax_cache(config: lm.ModelConfig, context: int, capacity: int, rng: np.random.Generator) -> dict[str, Any]:
    """A KV cache holding ``context`` positions (random keys and values) with room for ``capacity``."""
    shape = (config.n_heads, capacity, config.head_dim)
    caches: dict[str, Any] = {"k": [], "v": [], "length": context, "context": context}
    for _ in range(config.n_layers):
        for name in ("k", "v"):
            array = np.empty(shape, dtype=np.float32)
            array[:, :context] = rng.standard_normal((config.n_heads, context, config.head_dim), dtype=np.float32)
            caches[name].append(array)
    return caches


# -- timing ------------------------------------------------------------------------------------


def latte_rate(
    model: lm.LatteModel, prefilled: lm.DecodeState, logits: np.ndarray, n_tokens: int, repeats: int
) -> float:
    """Tokens per second of greedy Latte decoding from the prefilled state, best of ``repeats``."""
    best = math.inf
    for _ in range(repeats):
        state, last = prefilled, logits  # each repeat decodes the same positions
        began = time.perf_counter()
        for _ in range(n_tokens):
            out, state = lm.decode_step(model, np.argmax(last, axis=-1)[None], state)
            last = out[0]
        best = min(best, time.perf_counter() - began)
    return n_tokens / best


def softmax_rate(model: lm.LatteModel, cache: dict[str, Any], logits: np.ndarray, n_tokens: int, repeats: int) -> float:
    """Tokens per second of greedy standard-attention decoding with the KV cache, best of ``repeats``."""
    context, best = cache["context"], math.inf
    for _ in range(repeats):
        cache["length"], last = context, logits
        began = time.perf_counter()
        for _ in range(n_tokens):
            last = softmax_model_step(model.weights, model.config, np.argmax(last, axis=-1), cache)
        best = min(best, time.perf_counter() - began)
    return n_tokens / best


def run(args: argparse.Namespace) -> list[dict[str, float]]:
    """Prefill every context, then measure in rounds that visit every context and both models.

    Interleaving spreads the load of a shared machine over all the figures alike; each
    figure is the best of its ``--repeats`` rounds.
    """
    model = lm.init_model(args.vocab, args.d_model, args.n_layers, args.n_heads, args.d_model, dtype=np.float32, seed=0)
    rng = np.random.default_rng(0)
    setups = []
    for context in args.contexts:
        prompt = rng.integers(0, args.vocab, size=(1, context))
        began = time.perf_counter()
        logits, prefilled = lm.forward(model, prompt, return_state=True)  # type: ignore[misc]
        prefill_s = time.perf_counter() - began
        cache = softmax_cache(model.config, context, context + args.new_tokens, rng)
        setups.append((context, prefilled, np.array(logits[0, -1]), cache, prefill_s))
        del logits
    latte = {context: 0.0 for context in args.contexts}
    standard = {context: 0.0 for context in args.contexts}
    for _ in range(args.repeats):
        for context, prefilled, last, cache, _ in setups:
            latte[context] = max(latte[context], latte_rate(model, prefilled, last, args.new_tokens, 1))
            standard[context] = max(standard[context], softmax_rate(model, cache, last, args.new_tokens, 1))
    rows = []
    for context, _, _, _, prefill_s in setups:
        rows.append(
            {
                "context": context,
                "latte_tok_s": latte[context],
                "softmax_tok_s": standard[context],
                "latte_prefill_s": prefill_s,
                "latte_rate_vs_first": latte[context] / latte[args.contexts[0]],
                "softmax_rate_vs_first": standard[context] / standard[args.contexts[0]],
            }
        )
        print(
            f"context {context:7d}: Latte {latte[context]:8.1f} tok/s   softmax+KV cache {standard[context]:8.1f} tok/s"
            f"   Latte/softmax {latte[context] / standard[context]:6.2f}   (Latte prefill {prefill_s:.1f} s)",
            flush=True,
        )
    last_row = rows[-1]
    print(
        f"rate at {last_row['context']} / rate at {rows[0]['context']}:"
        f" Latte {last_row['latte_rate_vs_first']:.2f}, softmax {last_row['softmax_rate_vs_first']:.2f}"
    )
    return rows


def parse(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--contexts", type=int, nargs="+", default=[1024, 16384, 131072])
    parser.add_argument("--new-tokens", type=int, default=32, help="tokens decoded per measurement")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--vocab", type=int, default=256)
    parser.add_argument("--d-model", type=int, default=128)
    parser.add_argument("--n-layers", type=int, default=2)
    parser.add_argument("--n-heads", type=int, default=4)
    parser.add_argument("--json", type=Path, help="also write the rows here")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> list[dict[str, float]]:
    args = parse(argv)
    rows = run(args)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"args": {k: str(v) for k, v in vars(args).items()}, "rows": rows}, indent=2))
    return rows


if __name__ == "__main__":
    main()
