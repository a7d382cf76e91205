"""Griffe extension for the API reference (mkdocs.yml loads it by path; nothing imports it).

- The sources' docstrings use Sphinx roles (:class:`RunConfig`, :func:`~.accountant.epsilon`), which
  Markdown would print as they are: each becomes inline code with the name it shows.
- Doctest lines (``>>>`` and their ``...`` continuations), which Markdown would read as quotes, become a
  Python code block.
- A pydantic field ``x: float = Field(1.0, ge=0, description="…")`` is shown with its default as its value
  and its description as its docstring, instead of the whole ``Field(...)`` call.
"""

from __future__ import annotations

import ast
import re

from griffe import Docstring, Extension

_ROLE = re.compile(r":(?:py:)?(?:class|func|meth|mod|data|attr|obj|exc|const|ref):`(~?)([^`]+)`")


def _role(m: re.Match) -> str:
    name = m.group(2).strip()
    if "<" in name and name.endswith(">"):  # :ref:`text <target>`
        name = name[: name.index("<")].strip()
    if m.group(1):
        name = name.rsplit(".", 1)[-1]
    return f"`{name.lstrip('.')}`"


class SphinxRolesAndFields(Extension):
    """Rewrite Sphinx roles as code, and pydantic ``Field`` calls as default + docstring."""

    def on_attribute_instance(self, *, node, attr, agent, **kwargs) -> None:
        value = getattr(node, "value", None)
        if not (isinstance(value, ast.Call) and getattr(value.func, "id", getattr(value.func, "attr", "")) == "Field"):
            return
        kw = {k.arg: k.value for k in value.keywords if k.arg}
        desc = kw.get("description")
        if attr.docstring is None and isinstance(desc, ast.Constant) and isinstance(desc.value, str):
            attr.docstring = Docstring(desc.value, parent=attr)
        if value.args and not (isinstance(value.args[0], ast.Constant) and value.args[0].value is Ellipsis):
            attr.value = ast.unparse(value.args[0])
        elif "default" in kw:
            attr.value = ast.unparse(kw["default"])
        elif "default_factory" in kw:
            attr.value = f"{ast.unparse(kw['default_factory'])}()"
        else:
            attr.value = None  # required

    def on_instance(self, *, node, obj, agent, **kwargs) -> None:
        if obj.docstring is not None:
            obj.docstring.value = _doctests(_ROLE.sub(_role, obj.docstring.value))


def _doctests(text: str) -> str:
    """Fence each run of doctest lines (``>>> …``, ``... …``) as a Python code block."""
    out: list[str] = []
    in_block = False
    for line in text.split("\n"):
        is_doctest = line.lstrip().startswith((">>>", "... ")) or line.strip() == "..."
        if is_doctest and not in_block:
            out.append("```python")
            in_block = True
        elif not is_doctest and in_block:
            out.append("```")
            in_block = False
        out.append(line)
    if in_block:
        out.append("```")
    return "\n".join(out)
