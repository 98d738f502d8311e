"""Facts that the pages state in prose and that no code block checks: they must agree with each other and the code."""

from __future__ import annotations

import inspect
import re
from pathlib import Path

import latte_ref.model as lm

ROOT = Path(__file__).resolve().parents[1]


def _extras(text: str) -> set[str]:
    """The extras of every ``pip install -e '.[extra]'`` on a page."""
    return set(re.findall(r"pip install -e ['\"]\.\[(\w+)\]['\"]", text))


def test_readme_and_index_give_the_same_install_command() -> None:
    readme = _extras((ROOT / "README.md").read_text(encoding="utf-8"))
    index = _extras((ROOT / "docs" / "index.md").read_text(encoding="utf-8"))
    assert "dev" in readme and "dev" in index, (readme, index)


def test_the_model_table_calls_the_functions_as_they_are_called() -> None:
    text = (ROOT / "docs" / "model.md").read_text(encoding="utf-8")
    for name in ("forward", "init_decode_state", "decode_step", "generate", "next_token_loss"):
        assert f"| `{name}(model, " in text, name
        first = next(iter(inspect.signature(getattr(lm, name)).parameters.values()))
        assert first.annotation in (lm.LatteModel, "LatteModel"), (name, first.annotation)


def test_the_jax_page_does_not_claim_that_a_traced_and_concrete_mix_is_refused() -> None:
    text = (ROOT / "docs" / "tutorials" / "jax.md").read_text(encoding="utf-8")
    assert "refuses a\nmix of traced and concrete" not in text and "jax.grad(loss, argnums=0)" in text
