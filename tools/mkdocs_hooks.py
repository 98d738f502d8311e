"""MkDocs hooks: serve MathJax from the installed ``django-static-mathjax`` package.

The site then renders its equations without any request to another host, and
``mkdocs build`` needs no network: the script is copied out of the Python
package (part of the ``docs`` extra) into the built site.
"""

from __future__ import annotations

import importlib.util
import shutil
from pathlib import Path
from typing import Any

__all__ = ["MATHJAX_TARGET", "mathjax_source", "on_post_build"]

MATHJAX_TARGET = "assets/mathjax/tex-svg.js"
"""Where the script lands in the site; mkdocs.yml lists the same path in ``extra_javascript``."""


def mathjax_source() -> Path:
    """The SVG-output MathJax bundle (self-contained: no web fonts to fetch) shipped by the ``mathjax`` package."""
    spec = importlib.util.find_spec("mathjax")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("the docs need MathJax from the django-static-mathjax package: pip install -e '.[docs]'")
    path = Path(next(iter(spec.submodule_search_locations))) / "static" / "mathjax" / "es5" / "tex-svg.js"
    if not path.is_file():
        raise RuntimeError(f"MathJax bundle not found at {path}")
    return path


def on_post_build(config: Any, **kwargs: Any) -> None:
    target = Path(config["site_dir"]) / MATHJAX_TARGET
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(mathjax_source(), target)
