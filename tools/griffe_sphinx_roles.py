"""Griffe extension: read the Sphinx-flavoured bits of the numpydoc docstrings as Markdown.

The docstrings write ``.. math::`` blocks, ``:math:`...``` and roles such as
``:func:`latte_ref.step```, which read well in ``help()`` and in Sphinx. For the
MkDocs site the math becomes ``$$...$$`` / ``$...$`` (typeset by arithmatex and
MathJax) and the roles become inline code.
"""

from __future__ import annotations

import re
import textwrap
from typing import Any

from griffe import Extension

__all__ = ["SphinxRolesToMarkdown", "to_markdown"]

# ".. math::", then blank lines and lines indented deeper than the directive.
MATH_BLOCK = re.compile(
    r"^(?P<indent>[ \t]*)\.\. math::[ \t]*\n(?P<body>(?:(?:(?P=indent)[ \t]+.*)?\n)+)", re.MULTILINE
)
MATH_ROLE = re.compile(r":math:`(?P<tex>[^`]+)`")
CODE_ROLE = re.compile(r":(?:func|class|data|mod|meth|attr|obj):`~?(?P<name>[^`]+)`")


def _math_block(match: re.Match[str]) -> str:
    indent = match["indent"]
    body = textwrap.dedent(match["body"]).strip("\n")
    return f"{indent}$$\n{textwrap.indent(body, indent)}\n{indent}$$\n\n"


def to_markdown(docstring: str) -> str:
    r"""Sphinx math and cross-reference roles as Markdown.

    >>> to_markdown("See :func:`latte_ref.step`, where :math:`a_t > 0`.")
    'See `latte_ref.step`, where $a_t > 0$.'
    """
    docstring = MATH_BLOCK.sub(_math_block, docstring)
    docstring = MATH_ROLE.sub(lambda m: f"${m['tex']}$", docstring)
    return CODE_ROLE.sub(lambda m: f"`{m['name']}`", docstring)


class SphinxRolesToMarkdown(Extension):
    """Rewrites every docstring griffe loads with :func:`to_markdown`."""

    def on_instance(self, *, obj: Any, **kwargs: Any) -> None:
        if obj.docstring is not None:
            obj.docstring.value = to_markdown(obj.docstring.value)
