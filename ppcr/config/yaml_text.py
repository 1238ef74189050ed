"""Reading recipe YAML without aliases, and quoting values in error messages at a bounded length.

Why: a YAML alias (``*a``) repeats a node without copying its text, so a few hundred bytes of
nested aliases describe a value of billions of elements ("billion laughs"). PyYAML shares the
repeated node, so loading is cheap, but anything that walks the value (an error message that
quotes it, ``str()``, a copy) expands it. Recipes never need aliases, so the loader refuses them,
and error messages quote values through :func:`short_repr`, whose work and length are bounded.
"""

from __future__ import annotations

import reprlib
from typing import Any

import yaml

from ppcr.errors import RecipeError

MESSAGE_VALUE_CHARS = 80


class NoAliasSafeLoader(yaml.SafeLoader):
    """PyYAML's safe loader, refusing aliases (``*name``, also in ``<<: *name`` merges)."""

    def compose_node(self, parent, index):
        if self.check_event(yaml.AliasEvent):
            event = self.peek_event()
            raise yaml.composer.ComposerError(
                None, None, f"found the alias *{event.anchor}; recipes may not use YAML anchors and aliases",
                event.start_mark,
            )
        return super().compose_node(parent, index)


def load_yaml(text: str, source: str) -> Any:
    """``text`` parsed as YAML without aliases; a :class:`RecipeError` naming ``source`` and the line if not."""
    try:
        return yaml.load(text, Loader=NoAliasSafeLoader)  # noqa: S506 - a SafeLoader subclass
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or ""
        if "alias" in problem:
            raise RecipeError(
                f"{source}{where}: {problem}", hint="write the value out in full instead of referring to it"
            ) from None
        raise RecipeError(f"{source} is not valid YAML{where}") from None
    except RecursionError:
        raise RecipeError(f"{source} is nested too deeply to be a recipe") from None
    except ValueError as exc:  # e.g. an integer longer than Python converts (sys.int_info)
        raise RecipeError(f"{source} holds a value that cannot be read: {str(exc)[:MESSAGE_VALUE_CHARS]}") from None


_REPR = reprlib.Repr()
_REPR.maxlevel = 3
_REPR.maxlist = _REPR.maxtuple = _REPR.maxdict = _REPR.maxset = 4
_REPR.maxstring = _REPR.maxother = MESSAGE_VALUE_CHARS


def short_repr(value: Any) -> str:
    """``repr(value)`` cut to about :data:`MESSAGE_VALUE_CHARS` characters, without walking all of a
    large or deeply nested value (reprlib stops at a few levels and items)."""
    text = _REPR.repr(value)
    if len(text) > MESSAGE_VALUE_CHARS:
        text = text[: MESSAGE_VALUE_CHARS - 1] + "…"
    return text
