"""Generation in Hugging Face transformers: ms per generated token, SDPA + DynamicCache against Latte + LatteCache.

One small Llama (``--hidden``, ``--layers``, ``--heads``, ``--kv-heads``, vocabulary
``--vocab``), float32 on the CPU (or ``--device``), with two attentions:

* ``attn_implementation="sdpa"`` with a ``DynamicCache``: each new token reads every cached
  key and value, O(prompt) per token. A real prefill costs O(prompt²), far too long at 64k on
  a CPU, so the cache is filled with keys and values of random vectors: a decode step's cost
  depends on the cache's length, not on its contents.
* ``attn_implementation="latte"`` with a ``LatteCache``, prefilled for real (the causal form
  is linear in the prompt): each new token updates and reads the per-layer state, O(1).

Both then decode ``--new-tokens`` tokens greedily by calling the model once per token; the
figure is milliseconds per token (best of ``--repeats``). Compare the two within one run:
on a shared machine the absolute figures move from run to run, their ratio much less.

    python benchmarks/hf_generation.py                       # prompts 1k, 4k, 16k, 64k
    python benchmarks/hf_generation.py --quick               # prompts 128 and 512
    python benchmarks/hf_generation.py --prompts 1024 4096 --json results/hf_generation.json
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
import transformers

from latte_ref.integrations.transformers import LatteCache, register


def build(args: argparse.Namespace, attn: str) -> Any:
    """The benchmark's Llama with attention ``attn``; the same weights for every attention (one seed)."""
    torch.manual_seed(0)
    config = transformers.LlamaConfig(
        vocab_size=args.vocab,
        hidden_size=args.hidden,
        intermediate_size=4 * args.hidden,
        num_hidden_layers=args.layers,
        num_attention_heads=args.heads,
        num_key_value_heads=args.kv_heads,
        max_position_embeddings=2 * max(args.prompts) + 1024,
    )
    model = transformers.AutoModelForCausalLM.from_config(config, attn_implementation=attn)
    return model.to(args.device).eval()


def synchronize(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def decode(model: Any, cache: Any, token: torch.Tensor, n_tokens: int, device: str) -> float:
    """Seconds for ``n_tokens`` greedy steps from ``token`` through ``cache``."""
    synchronize(device)
    start = time.perf_counter()
    for _ in range(n_tokens):
        logits = model(input_ids=token, cache=cache, use_cache=True).logits
        token = logits[:, -1:].argmax(-1)
    synchronize(device)
    return time.perf_counter() - start


def sdpa_ms_per_token(args: argparse.Namespace, model: Any, prompt: int) -> float:
    """Decode after a DynamicCache of ``prompt`` random keys and values per layer, cropped back after each repeat."""
    config = model.config
    head_dim = config.hidden_size // config.num_attention_heads
    cache = transformers.DynamicCache()
    generator = torch.Generator(device=args.device).manual_seed(1)
    for layer in range(config.num_hidden_layers):
        shape = (1, config.num_key_value_heads, prompt, head_dim)
        keys, values = (torch.randn(shape, generator=generator, device=args.device) for _ in range(2))
        cache.update(keys, values, layer)
    token = torch.zeros((1, 1), dtype=torch.long, device=args.device)
    best = float("inf")
    with torch.no_grad():
        decode(model, cache, token, 1, args.device)  # warm-up
        cache.crop(-1)
        for _ in range(args.repeats):
            best = min(best, decode(model, cache, token, args.new_tokens, args.device))
            cache.crop(-args.new_tokens)
    return 1e3 * best / args.new_tokens


def latte_ms_per_token(args: argparse.Namespace, model: Any, prompt: int) -> tuple[float, float, int]:
    """Decode after a real prefill of ``prompt`` random tokens into a LatteCache: (ms/token, prefill s, cache bytes)."""
    ids = torch.randint(0, args.vocab, (1, prompt), generator=torch.Generator().manual_seed(2)).to(args.device)
    cache = LatteCache()
    best = float("inf")
    with torch.no_grad():
        synchronize(args.device)
        start = time.perf_counter()
        logits = model(input_ids=ids, cache=cache, use_cache=True).logits
        synchronize(args.device)
        prefill = time.perf_counter() - start
        token = logits[:, -1:].argmax(-1)
        decode(model, cache, token, 1, args.device)  # warm-up
        for _ in range(args.repeats):  # the state does not grow: later repeats cost what the first does
            best = min(best, decode(model, cache, token, args.new_tokens, args.device))
    return 1e3 * best / args.new_tokens, prefill, cache.nbytes


def run(args: argparse.Namespace) -> list[dict[str, float]]:
    register()
    torch.set_num_threads(args.threads)
    sdpa, latte = build(args, "sdpa"), build(args, "latte")
    rows = []
    print(f"{'prompt':>8} {'sdpa ms/tok':>12} {'latte ms/tok':>13} {'sdpa/latte':>11} {'latte prefill s':>16}")
    for prompt in args.prompts:
        sdpa_ms = sdpa_ms_per_token(args, sdpa, prompt)
        latte_ms, prefill, nbytes = latte_ms_per_token(args, latte, prompt)
        row = {
            "prompt": prompt,
            "sdpa_ms_per_token": sdpa_ms,
            "latte_ms_per_token": latte_ms,
            "ratio": sdpa_ms / latte_ms,
            "latte_prefill_s": prefill,
            "latte_cache_bytes": nbytes,
        }
        rows.append(row)
        ratio = sdpa_ms / latte_ms
        print(f"{prompt:>8} {sdpa_ms:>12.2f} {latte_ms:>13.2f} {ratio:>11.2f} {prefill:>16.2f}", flush=True)
    return rows


def parse(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--prompts", type=int, nargs="+", default=[1024, 4096, 16384, 65536])
    parser.add_argument("--quick", action="store_true", help="prompts of 128 and 512 tokens, 8 new tokens")
    parser.add_argument("--new-tokens", type=int, default=32, help="tokens decoded per measurement")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--vocab", type=int, default=256)
    parser.add_argument("--hidden", type=int, default=128)
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--heads", type=int, default=4)
    parser.add_argument("--kv-heads", type=int, default=4)
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--json", type=Path, help="also write the rows here")
    args = parser.parse_args(argv)
    if args.quick:
        args.prompts, args.new_tokens = [128, 512], 8
    if min(args.prompts) < 1 or args.new_tokens < 1 or args.repeats < 1:
        parser.error("--prompts, --new-tokens and --repeats must be positive")
    return args


def main(argv: Sequence[str] | None = None) -> list[dict[str, float]]:
    args = parse(argv)
    rows = run(args)
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"settings": vars(args) | {"json": str(args.json)}, "rows": rows}, indent=2))
    return rows


if __name__ == "__main__":
    main()
