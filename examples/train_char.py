"""Train a small character-level Latte Transformer on the text that ships with the repository.

The model is ``latte_ref.model``: Array-API code with no framework in it. PyTorch's
autograd differentiates it as it stands (the weights are ``torch`` tensors with
``requires_grad``), and so does ``jax.grad`` (the weights are a dict of ``jax`` arrays).

    python examples/train_char.py                       # PyTorch, about three minutes on a CPU
    python examples/train_char.py --seconds 20          # a shorter run
    python examples/train_char.py --backend jax --steps 5
    python examples/train_char.py --load results/latte_char.npz --prompt "CORIOLANUS:"

It prints the loss as it falls, saves the weights (``--out``, a NumPy ``.npz`` with the
configuration and vocabulary), and generates text from the trained model with
constant-time decoding; ``--load`` generates from saved weights without training.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

import latte_ref.model as lm

TEXT = Path(__file__).with_name("data") / "coriolanus.txt"


# -- data ---------------------------------------------------------------------------------------


def load_text(path: Path = TEXT) -> tuple[np.ndarray, list[str]]:
    """The text as int64 character ids, and the vocabulary (sorted characters)."""
    text = path.read_text(encoding="utf-8")
    vocab = sorted(set(text))
    index = {c: i for i, c in enumerate(vocab)}
    return np.array([index[c] for c in text], dtype=np.int64), vocab


def batches(ids: np.ndarray, batch: int, length: int, rng: np.random.Generator) -> np.ndarray:
    """``batch`` random windows of ``length + 1`` characters (inputs and their next characters)."""
    starts = rng.integers(0, len(ids) - length - 1, size=batch)
    return np.stack([ids[s : s + length + 1] for s in starts])


# -- weights on disk ----------------------------------------------------------------------------


def flatten(tree: Any, prefix: str = "") -> dict[str, Any]:
    """``{"blocks.0.wq": array, ...}`` from the nested weights."""
    items: list[tuple[str, Any]]
    if isinstance(tree, dict):
        items = list(tree.items())
    elif isinstance(tree, (list, tuple)):
        items = [(str(i), v) for i, v in enumerate(tree)]
    else:
        return {prefix: tree}
    out: dict[str, Any] = {}
    for key, value in items:
        out.update(flatten(value, f"{prefix}.{key}" if prefix else str(key)))
    return out


def unflatten(flat: dict[str, np.ndarray], config: lm.ModelConfig) -> dict[str, Any]:
    """The nested weights back from :func:`flatten`'s keys (NumPy arrays)."""
    template = lm.init_model(
        config.vocab_size, config.d_model, config.n_layers, config.n_heads, config.n_latents, d_hidden=config.d_hidden
    ).weights
    return _fill(template, flat, "")


def _fill(tree: Any, flat: dict[str, np.ndarray], prefix: str) -> Any:
    if isinstance(tree, dict):
        return {k: _fill(v, flat, f"{prefix}.{k}" if prefix else k) for k, v in tree.items()}
    if isinstance(tree, list):
        return [_fill(v, flat, f"{prefix}.{i}") for i, v in enumerate(tree)]
    return np.asarray(flat[prefix])


def save(path: Path, model: lm.LatteModel, vocab: list[str], to_numpy: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    arrays = {f"w/{k}": to_numpy(v) for k, v in flatten(model.weights).items()}
    meta = {"config": model.config.__dict__, "vocab": vocab}
    np.savez(path, meta=np.array(json.dumps(meta)), **arrays)


def load(path: Path) -> tuple[lm.LatteModel, list[str]]:
    """A trained model (NumPy weights) and its vocabulary."""
    with np.load(path) as f:
        meta = json.loads(str(f["meta"]))
        config = lm.ModelConfig(**meta["config"])
        flat = {k[2:]: f[k] for k in f.files if k.startswith("w/")}
    return lm.LatteModel(config, unflatten(flat, config)), meta["vocab"]


# -- training -----------------------------------------------------------------------------------


def new_model(vocab_size: int, args: argparse.Namespace) -> lm.LatteModel:
    return lm.init_model(
        vocab_size, args.d_model, args.n_layers, args.n_heads, args.n_latents, dtype=np.float32, seed=args.seed
    )


def learning_rate(step: int, args: argparse.Namespace, total: int) -> float:
    """Linear warm-up (20 steps, or a tenth of a short run), then cosine decay to a tenth of the peak."""
    warm = min(1.0, (step + 1) / max(1, min(20, total // 10)))
    progress = min(1.0, step / max(1, total))
    return args.lr * warm * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress)))


def train_torch(ids: np.ndarray, vocab_size: int, args: argparse.Namespace) -> tuple[lm.LatteModel, list[float]]:
    """AdamW with torch autograd through the Array-API model; stops at ``--steps`` or ``--seconds``."""
    import torch

    torch.manual_seed(args.seed)
    start = new_model(vocab_size, args)
    weights = lm.tree_map(lambda w: torch.tensor(w, requires_grad=True), start.weights)
    model = lm.LatteModel(start.config, weights)
    optimiser = torch.optim.AdamW(list(lm.leaves(weights)), lr=args.lr, weight_decay=0.01)
    rng = np.random.default_rng(args.seed)
    losses: list[float] = []
    began = time.perf_counter()
    total = args.steps if args.steps else 10**9
    for step in range(total):
        if args.seconds and time.perf_counter() - began > args.seconds:
            break
        for group in optimiser.param_groups:
            group["lr"] = learning_rate(step, args, args.steps or args.expected_steps)
        tokens = torch.from_numpy(batches(ids, args.batch, args.length, rng))
        loss = lm.next_token_loss(model, tokens)
        optimiser.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(list(lm.leaves(weights)), 1.0)
        optimiser.step()
        losses.append(float(loss.detach()))
        if step % args.log_every == 0:
            print(f"step {step:5d}  {time.perf_counter() - began:6.1f}s  loss {losses[-1]:.3f}", flush=True)
    trained = lm.tree_map(lambda w: w.detach(), weights)
    return lm.LatteModel(model.config, trained), losses


def train_jax(ids: np.ndarray, vocab_size: int, args: argparse.Namespace) -> tuple[lm.LatteModel, list[float]]:
    """Adam on ``jax.grad`` of the same Array-API loss (jit-compiled)."""
    import jax
    import jax.numpy as jnp

    start = new_model(vocab_size, args)
    config = start.config
    weights = jax.tree_util.tree_map(jnp.asarray, start.weights)

    @jax.jit
    def loss_and_grad(w: Any, tokens: Any) -> Any:
        return jax.value_and_grad(lambda w: lm.next_token_loss(lm.LatteModel(config, w), tokens))(w)

    first = jax.tree_util.tree_map(jnp.zeros_like, weights)
    second = jax.tree_util.tree_map(jnp.zeros_like, weights)
    rng = np.random.default_rng(args.seed)
    losses: list[float] = []
    began = time.perf_counter()
    steps = args.steps or 5
    for step in range(steps):
        if args.seconds and time.perf_counter() - began > args.seconds:
            break
        loss, grads = loss_and_grad(weights, jnp.asarray(batches(ids, args.batch, args.length, rng)))
        lr = learning_rate(step, args, steps)
        first = jax.tree_util.tree_map(lambda m, g: 0.9 * m + 0.1 * g, first, grads)
        second = jax.tree_util.tree_map(lambda s, g: 0.999 * s + 0.001 * g * g, second, grads)
        weights = jax.tree_util.tree_map(adam_update(lr, step), weights, first, second)
        losses.append(float(loss))
        if step % args.log_every == 0:
            print(f"step {step:5d}  {time.perf_counter() - began:6.1f}s  loss {losses[-1]:.3f}", flush=True)
    return lm.LatteModel(config, weights), losses


def adam_update(lr: float, step: int) -> Any:
    """Adam's update of one weight from its bias-corrected first and second moments."""
    first_correction, second_correction = 1 - 0.9 ** (step + 1), 1 - 0.999 ** (step + 1)

    def update(w: Any, m: Any, s: Any) -> Any:
        return w - lr * (m / first_correction) / ((s / second_correction) ** 0.5 + 1e-8)

    return update


def sample(model: lm.LatteModel, vocab: list[str], prompt: str, n: int, *, temperature: float, seed: int) -> str:
    """``n`` characters after ``prompt``, decoded with the constant-size state (NumPy)."""
    index = {c: i for i, c in enumerate(vocab)}
    ids = np.array([[index[c] for c in prompt if c in index]], dtype=np.int64)
    out = lm.generate(model, ids, n, temperature=temperature, seed=seed)
    return prompt + "".join(vocab[int(i)] for i in np.asarray(out)[0])


class _HelpFormatter(argparse.RawDescriptionHelpFormatter, argparse.ArgumentDefaultsHelpFormatter):
    """The module docstring as written, and every option's default."""


def parse(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=_HelpFormatter)
    parser.add_argument("--backend", choices=["torch", "jax"], default="torch", help="framework that trains")
    parser.add_argument("--steps", type=int, default=0, help="stop after this many steps (0: use --seconds)")
    parser.add_argument("--seconds", type=float, default=180.0, help="stop after this long (0: use --steps)")
    parser.add_argument("--expected-steps", type=int, default=600, help="length of the schedule when --steps is 0")
    parser.add_argument("--batch", type=int, default=16, help="windows per step")
    parser.add_argument("--length", type=int, default=64, help="characters per training window")
    parser.add_argument("--d-model", type=int, default=64, help="model width")
    parser.add_argument("--n-layers", type=int, default=2, help="Latte blocks")
    parser.add_argument("--n-heads", type=int, default=4, help="heads per block")
    parser.add_argument("--n-latents", type=int, default=32, help="latents over all heads")
    parser.add_argument("--lr", type=float, default=3e-3, help="peak learning rate")
    parser.add_argument("--seed", type=int, default=0, help="seed of the weights and the batches")
    parser.add_argument("--log-every", type=int, default=20, help="print the loss every this many steps")
    parser.add_argument("--out", type=Path, default=Path("results/latte_char.npz"), help="where to save the weights")
    parser.add_argument(
        "--load", type=Path, default=None, metavar="PATH", help="skip training: generate from weights saved by --out"
    )
    parser.add_argument(
        "--prompt", default="MENENIUS:\n", help="text the generation starts from (default: %(default)r)"
    )
    parser.add_argument("--generate", type=int, default=300, help="characters to generate after training")
    parser.add_argument("--temperature", type=float, default=0.8, help="sampling temperature (0: greedy)")
    return parser.parse_args(argv)


def generate_from(path: Path, args: argparse.Namespace) -> dict[str, Any]:
    """``--load``: the saved model generates ``--generate`` characters after ``--prompt``, without training."""
    model, vocab = load(path)
    unknown = sorted(set(args.prompt) - set(vocab))
    if unknown:
        print(f"note: the prompt's characters {unknown} are not in the vocabulary and are left out")
    text = sample(model, vocab, args.prompt, args.generate, temperature=args.temperature, seed=args.seed)
    print("-" * 60 + "\n" + text + "\n" + "-" * 60)
    return {"text": text}


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    args = parse(argv)
    if args.load is not None:
        return generate_from(args.load, args)
    ids, vocab = load_text()
    split = int(0.9 * len(ids))
    print(f"{len(ids)} characters, vocabulary {len(vocab)}, backend {args.backend}")
    train = train_torch if args.backend == "torch" else train_jax
    model, losses = train(ids[:split], len(vocab), args)
    numpy_model = lm.LatteModel(model.config, lm.tree_map(lambda w: np.asarray(w, dtype=np.float32), model.weights))
    held_out = batches(ids[split:], 8, args.length, np.random.default_rng(1))
    untrained = new_model(len(vocab), args)
    result: dict[str, Any] = {
        "steps": len(losses),
        "first_loss": losses[0],
        "last_loss": float(np.mean(losses[-10:])),
        "held_out_untrained": float(lm.next_token_loss(untrained, held_out)),
        "held_out_trained": float(lm.next_token_loss(numpy_model, held_out)),
    }
    print(
        f"train loss {result['first_loss']:.3f} -> {result['last_loss']:.3f} (mean of the last 10)"
        f" in {len(losses)} steps;"
        f" held-out {result['held_out_untrained']:.3f} -> {result['held_out_trained']:.3f}"
    )
    if args.out:
        save(args.out, numpy_model, vocab, np.asarray)
        reloaded, _ = load(args.out)
        assert float(lm.next_token_loss(reloaded, held_out)) == result["held_out_trained"]
        print(f"weights saved to {args.out}")
    if args.generate:
        result["text"] = sample(numpy_model, vocab, args.prompt, args.generate, temperature=args.temperature, seed=0)
        print("-" * 60 + "\n" + result["text"] + "\n" + "-" * 60)
    return result


if __name__ == "__main__":
    main()
