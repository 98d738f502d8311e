"""Every ```python block of README.md and docs/**/*.md runs, page by page, in order.

The blocks of one page share a namespace, so a later block may use the names of an
earlier one. A block is skipped, with the reason shown, when the line before its
fence is ``<!-- skip: reason -->`` or when it imports a framework that is not
installed (or, for CuPy, has no GPU here).
"""

from __future__ import annotations

import contextlib
import os
import re
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from latte_ref import backends
from latte_ref.testing.matrix import missing_framework

ROOT = Path(__file__).resolve().parents[1]
SKIP = re.compile(r"^<!--\s*skip:\s*(?P<reason>.+?)\s*-->$")
FENCE = re.compile(r"^(?P<indent>[ \t]*)(?P<fence>`{3,}|~{3,})\s*(?P<info>[^`\s]*)")


@dataclass(frozen=True)
class Block:
    page: str
    line: int
    code: str
    skip: str | None


def pages() -> list[Path]:
    found = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
    return [p for p in found if p.is_file()]


def python_blocks(text: str, page: str) -> list[Block]:
    """The ```python blocks of a Markdown text, with the skip reason a comment line before them gives."""
    blocks = []
    lines = text.splitlines()
    i = 0
    while i < len(lines):
        match = FENCE.match(lines[i])
        if not match:
            i += 1
            continue
        indent, fence, info = match["indent"], match["fence"], match["info"]
        end = i + 1
        while end < len(lines) and not lines[end].strip().startswith(fence):
            end += 1
        if info in ("python", "py"):
            previous = next((lines[j].strip() for j in range(i - 1, -1, -1) if lines[j].strip()), "")
            skip = SKIP.match(previous)
            body = [line[len(indent) :] if line.startswith(indent) else line for line in lines[i + 1 : end]]
            blocks.append(Block(page, i + 1, "\n".join(body) + "\n", skip["reason"] if skip else None))
        i = end + 1
    return blocks


PAGES = [p for p in pages() if python_blocks(p.read_text(encoding="utf-8"), p.name)]


@contextlib.contextmanager
def process_settings_restored() -> Iterator[None]:
    """Undo what a page changes for the whole process as a user would: torch's weights-only allowlist.

    The PyTorch tutorial allowlists LatteState; later tests in the same worker must see torch's default.
    """
    torch = sys.modules.get("torch")
    allowed_before = torch.serialization.get_safe_globals() if torch is not None else []
    try:
        yield
    finally:
        torch = sys.modules.get("torch")
        if torch is not None:
            torch.serialization.clear_safe_globals()
            torch.serialization.add_safe_globals(allowed_before)


@pytest.mark.parametrize("page", PAGES, ids=[str(p.relative_to(ROOT)) for p in PAGES])
def test_page_code_runs(page: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    name = str(page.relative_to(ROOT))
    blocks = python_blocks(page.read_text(encoding="utf-8"), name)
    monkeypatch.chdir(tmp_path)  # files a block writes land in a scratch folder
    namespace: dict[str, object] = {"__name__": f"docs:{name}"}
    skipped = []
    missing = None  # a framework an earlier block needed: the blocks after it build on that block
    with process_settings_restored():  # the page's blocks build on each other; later tests must not
        for block in blocks:
            missing = missing or missing_framework(block.code)
            reason = block.skip or missing
            if reason is not None:
                skipped.append(f"line {block.line}: {reason}")
                continue
            exec(compile(block.code, f"{name}:{block.line}", "exec"), namespace)
    if skipped and len(skipped) == len(blocks):
        pytest.skip(f"{name}: every block skipped ({'; '.join(skipped)})")
    for reason in skipped:
        # A partly skipped page still passes; say what was not run.
        print(f"{name} {reason}", file=sys.stderr)


def test_parser_reads_skips_and_indented_blocks() -> None:
    text = "\n".join(
        [
            "# t",
            "```python",
            "a = 1",
            "```",
            "<!-- skip: needs an NVIDIA GPU -->",
            "```python",
            "import cupy",
            "```",
            "```bash",
            "echo no",
            "```",
            '=== "tab"',
            "",
            "    ```python",
            "    b = a + 1",
            "    ```",
        ]
    )
    blocks = python_blocks(text, "t.md")
    assert [(b.code, b.skip) for b in blocks] == [
        ("a = 1\n", None),
        ("import cupy\n", "needs an NVIDIA GPU"),
        ("b = a + 1\n", None),
    ]


def test_missing_framework_names_it() -> None:
    assert missing_framework("import numpy as np\nimport latte_ref\n") is None
    reason = missing_framework("import cupy as cp\n")
    usable = backends.get_backend("cupy").unavailable_reason() is None
    assert (reason is None) == usable


def test_explain_page_shows_the_commands_current_output() -> None:
    """The text blocks of docs/explain.md are excerpts of what ``latte-ref explain`` prints now."""
    from latte_ref.explain import format_example, worked_example

    printed = format_example(worked_example()).splitlines()
    page = (ROOT / "docs" / "explain.md").read_text(encoding="utf-8")
    excerpts = re.findall(r"```text\n(.*?)```", page, flags=re.DOTALL)
    assert excerpts
    for excerpt in excerpts:
        lines = excerpt.rstrip("\n").splitlines()
        starts = [i for i, line in enumerate(printed) if line == lines[0]]
        assert any(printed[i : i + len(lines)] == lines for i in starts), f"stale excerpt:\n{excerpt}"


def test_site_builds_strictly(tmp_path: Path) -> None:
    """``mkdocs build --strict``: broken links, references or config fail here, not only on the site."""
    import importlib.util
    import subprocess

    for module in ("mkdocs", "material", "mkdocstrings_handlers.python", "pymdownx", "mathjax"):
        try:
            found = importlib.util.find_spec(module) is not None
        except ModuleNotFoundError:
            found = False
        if not found:
            pytest.skip(f"{module} is not installed (pip install -e '.[docs]')")
    site = tmp_path / "site"
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}
    result = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(site)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert (site / "assets" / "mathjax" / "tex-svg.js").is_file()
    assert (site / "images" / "explain.png").is_file()


def test_sphinx_math_and_roles_become_markdown() -> None:
    pytest.importorskip("griffe")
    import importlib.util

    spec = importlib.util.spec_from_file_location("griffe_sphinx_roles", ROOT / "tools" / "griffe_sphinx_roles.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    text = "Sum.\n\n.. math::\n\n    a = b\n    c = d\n\nSee :class:`~x.Y` and :math:`t`.\n"
    assert module.to_markdown(text) == "Sum.\n\n$$\na = b\nc = d\n$$\n\nSee `x.Y` and $t$.\n"
