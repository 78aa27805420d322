"""Sphinx configuration: the API reference from the docstrings, with the design notes and
the migration guide beside it. Built by scripts/test.sh with warnings as errors
(`python -m sphinx -W -n -b html docs docs/_build/html`), so a docstring that does not
parse, or a reference that goes nowhere, fails the run.

Sphinx rather than mkdocstrings: the docstrings are written in reStructuredText (``literal``,
:class: roles, tables), which autodoc reads as they are and docutils checks strictly."""

from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.abspath(".."))

import amqscale  # noqa: E402

project = "amqscale"
author = "the amqscale authors"
copyright = "the amqscale authors"
release = version = amqscale.__version__

extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.viewcode",
    "myst_parser",
]
source_suffix = {".rst": "restructuredtext", ".md": "markdown"}
root_doc = "index"
exclude_patterns = ["_build"]

# Markdown pages (design.md, migrating-from-proton.md): headings get anchors for links.
myst_heading_anchors = 3
# Their links to files outside docs/ (the README, sources) are plain links, not documents.
suppress_warnings = ["myst.xref_missing"]

autodoc_member_order = "bysource"
autodoc_typehints = "signature"
autodoc_default_options = {"members": True, "show-inheritance": True}
autodoc_typehints_format = "short"

# Nitpicky: every cross-reference must resolve, except to what has no documentation here:
# proton's classes, the standard library (no intersphinx: CI has no network), and
# amqscale's internals and private bases that appear in signatures.
nitpicky = True
nitpick_ignore_regex = [
    (r"py:.*", r"(proton|cproton|msgspec|asyncio|uvloop|collections|typing|types|enum|"
               r"pathlib|os|random|datetime|decimal)\..*"),
    (r"py:.*", r"amqscale\.(core|_driver|_ops|_loop|_supervisor|workers|ipc|codec)\..*"),
    (r"py:.*", r"(p|_links|_c)\..*"),
    (r"py:.*", r"amqscale\.(\w+\.)*_\w+(\.\w+)*"),  # private modules and classes
    (r"py:class", r"[A-Z]\w*"),  # bare names from `from __future__ import annotations`
    (r"py:.*", r"(bytes|bytearray|memoryview|int|str|float|bool|object|dict|list|tuple|set|"
               r"frozenset|type|Exception|BaseException|TimeoutError|ValueError|TypeError|"
               r"RuntimeError|NotImplementedError|None|Ellipsis|Any|Callable|Iterator|"
               r"Iterable|Sequence|Mapping|AsyncIterator|Awaitable|Coroutine|UUID|"
               r"Generator|Literal|Optional|Union|T|_Item)"),
]



def _skip_proton(app: object, what: str, name: str, obj: object, skip: bool,
                 options: object) -> bool | None:
    """proton's classes that amqscale re-exports (amqscale.types) are proton's to document."""
    if (getattr(obj, "__module__", None) or "").startswith("proton"):
        return True
    return None


def setup(app: object) -> None:
    app.connect("autodoc-skip-member", _skip_proton)  # type: ignore[attr-defined]


html_theme = "alabaster"
html_title = f"amqscale {release}"
