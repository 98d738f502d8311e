"""The examples in the docstrings of every module of the installed ``latte_ref``, adapters included.

They are collected from the imported package, not by ``--doctest-modules`` over the folders:
that would import ``backends/`` a second time, as a top-level package beside
``latte_ref.backends``, and after ``pip install .`` it would import the checkout's
``latte_ref`` (which has no ``backends`` inside) rather than the installed one. An example
that imports a framework that is not usable here is skipped, with the reason.
"""

from __future__ import annotations

import doctest
import importlib
import pkgutil
import re

import pytest

import latte_ref
from latte_ref import backends
from latte_ref.testing.matrix import missing_framework

FLAGS = doctest.NORMALIZE_WHITESPACE
FLOAT = re.compile(r"-?\d+\.\d+(?:[eE][-+]?\d+)?")


def module_names() -> list[str]:
    """Every module of latte_ref and latte_ref.backends, but ``__main__`` (importing it runs the command line)."""
    names = {"latte_ref", "latte_ref.backends"}
    for package in (latte_ref, backends):
        names.update(m.name for m in pkgutil.walk_packages(package.__path__, f"{package.__name__}."))
    return sorted(name for name in names if not name.endswith(".__main__"))


def doctests() -> list[doctest.DocTest]:
    finder = doctest.DocTestFinder(exclude_empty=True)
    found = []
    for name in module_names():
        try:
            module = importlib.import_module(name)
        except ImportError:
            if name.startswith(("latte_ref.layers.", "latte_ref.integrations.")):  # its framework is not installed
                continue
            raise
        found += [test for test in finder.find(module) if test.examples]
    return sorted(found, key=lambda test: test.name)


class NumberChecker(doctest.OutputChecker):
    """Also accepts output whose floats agree with the expected ones to the digits written (pytest's NUMBER)."""

    def check_output(self, want: str, got: str, optionflags: int) -> bool:
        if super().check_output(want, got, optionflags):
            return True
        wanted, gotten = FLOAT.findall(want), FLOAT.findall(got)
        if len(wanted) != len(gotten) or FLOAT.sub("0", want) != FLOAT.sub("0", got):
            return False
        for w, g in zip(wanted, gotten, strict=True):
            digits = len(w.split(".")[1].split("e")[0].split("E")[0])
            exponent = int(w.lower().split("e")[1]) if "e" in w.lower() else 0
            if abs(float(w) - float(g)) > 0.5 * 10.0 ** (exponent - digits):
                return False
        return True


DOCTESTS = doctests()


@pytest.mark.parametrize("test", DOCTESTS, ids=[test.name for test in DOCTESTS])
def test_docstring_examples(test: doctest.DocTest) -> None:
    reason = missing_framework("\n".join(example.source for example in test.examples))
    if reason is not None:
        pytest.skip(reason)
    runner = doctest.DocTestRunner(checker=NumberChecker(), optionflags=FLAGS)
    result = runner.run(test, out=lambda text: print(text, end=""))
    assert result.failed == 0, f"{result.failed} of {result.attempted} examples of {test.name} failed (output above)"


def test_every_module_is_seen() -> None:
    """The walk reaches the adapters and the subpackages, so no module's examples are silently left out."""
    names = module_names()
    for expected in (
        "latte_ref.backends.dask",
        "latte_ref.parallel.jax",
        "latte_ref.testing.references.native_torch",
        "latte_ref.layers.torch",
        "latte_ref.layers.flax",
    ):
        assert expected in names
