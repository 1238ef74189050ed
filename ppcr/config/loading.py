"""Load, merge, override and validate recipes.

Order of application (torchtune's grammar): recipe YAML → ablation overlays → ``key=value``
overrides → validation into the typed :class:`~ppcr.config.schema.Recipe`. Every mistake is a
:class:`~ppcr.errors.RecipeError` that names the key, what was expected and the valid choices.
"""

from __future__ import annotations

import copy
import dataclasses
import difflib
import os
import types
import typing
from pathlib import Path
from typing import Any, Iterable, Literal, Union

import yaml

from ppcr.config.schema import Recipe
from ppcr.config.yaml_text import MESSAGE_VALUE_CHARS, load_yaml, short_repr
from ppcr.errors import RecipeError

RECIPE_SUFFIX = ".yaml"

# Short names accepted on the command line for the ablation knobs (docs/design.md, "Variants").
AXIS_KEYS = {
    "spatial_prompt": "model.spatial_prompt",
    "spatial_head": "model.spatial_head",
    "box_source": "eval.box_source",
}


def recipes_dir() -> Path:
    """The folder of shipped recipes, inside the installed package (``$PPCR_RECIPES_DIR`` overrides it)."""
    env = os.environ.get("PPCR_RECIPES_DIR")
    if env:
        return Path(env)
    from ppcr.package_data import recipes_folder

    return recipes_folder()


def _suggest(word: str, choices: Iterable[str]) -> str | None:
    close = difflib.get_close_matches(word, list(choices), n=1, cutoff=0.6)
    return f"did you mean {close[0]!r}?" if close else None


def list_recipes() -> list[tuple[str, Path, str]]:
    """(name, path, description) of every shipped recipe, sorted by name."""
    rows = []
    for path in sorted(recipes_dir().glob(f"*{RECIPE_SUFFIX}")):
        data = _read_yaml(path)
        rows.append((path.stem, path, str(data.get("description", "")).strip()))
    return rows


def resolve_recipe_path(name_or_path: str | Path) -> Path:
    """A shipped recipe name (``paper``) or a path to a YAML file."""
    candidate = Path(name_or_path)
    if candidate.suffix in (".yaml", ".yml") or candidate.exists():
        if not candidate.is_file():
            raise RecipeError(f"recipe file not found: {candidate}")
        return candidate
    path = recipes_dir() / f"{name_or_path}{RECIPE_SUFFIX}"
    if path.is_file():
        return path
    names = [name for name, _, _ in list_recipes()]
    hint = _suggest(str(name_or_path), names) or "run `ppcr recipes list` to see them"
    raise RecipeError(
        f"unknown recipe {str(name_or_path)!r}; shipped recipes: {', '.join(names) or 'none'}",
        hint=hint,
    )


def _read_yaml(path: Path) -> dict:
    try:
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise RecipeError(f"recipe file not found: {path}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise RecipeError(f"cannot read the recipe {path}: {exc}") from None
    data = load_yaml(text, str(path))
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise RecipeError(f"{path} must hold a mapping of keys, not {type(data).__name__}")
    return data


def deep_merge(base: dict, overlay: dict) -> dict:
    """A copy of ``base`` with ``overlay`` merged in (mappings merge, everything else replaces)."""
    merged = copy.deepcopy(base)
    for key, value in overlay.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = deep_merge(merged[key], value)
        else:
            merged[key] = copy.deepcopy(value)
    return merged


# ----------------------------------------------------------------------------- type checking


def _is_optional(tp) -> tuple[bool, Any]:
    origin = typing.get_origin(tp)
    if origin in (Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(args) == 1 and len(typing.get_args(tp)) == 2:
            return True, args[0]
    return False, tp


def _type_name(tp) -> str:
    optional, inner = _is_optional(tp)
    if optional:
        return f"{_type_name(inner)} or null"
    if typing.get_origin(tp) is Literal:
        return "one of " + ", ".join(map(str, typing.get_args(tp)))
    if typing.get_origin(tp) is list:
        return f"a list of {_type_name(typing.get_args(tp)[0])}"
    if dataclasses.is_dataclass(tp):
        return "a section"
    return {int: "an integer", float: "a number", str: "a string", bool: "true or false"}.get(
        tp, getattr(tp, "__name__", str(tp))
    )


def _convert(value: Any, tp, key: str, from_text: bool) -> Any:
    """Check (and where unambiguous, convert) ``value`` to the field type ``tp``."""
    optional, inner = _is_optional(tp)
    if optional:
        if value is None or (from_text and str(value).strip().lower() in ("null", "none", "~")):
            return None
        return _convert(value, inner, key, from_text)

    def wrong() -> RecipeError:
        return RecipeError(f"{key} must be {_type_name(tp)}, got {short_repr(value)}")

    if typing.get_origin(tp) is Literal:
        choices = typing.get_args(tp)
        if value in choices:
            return value
        raise RecipeError(
            f"{key} must be one of {', '.join(map(str, choices))}; got {short_repr(value)}",
            hint=_suggest(value, map(str, choices)) if isinstance(value, str) else None,
        )
    if dataclasses.is_dataclass(tp):
        if isinstance(value, dict):
            return _build(tp, value, key + ".")
        sub = ", ".join(f.name for f in dataclasses.fields(tp))
        raise RecipeError(f"{key} is a section, not a value; set one of its keys ({sub})")
    if typing.get_origin(tp) is list:
        (item_tp,) = typing.get_args(tp)
        if from_text and isinstance(value, str):
            parsed = load_yaml(value, f"the value of {key}") if value.strip().startswith("[") else value.split(",")
            value = parsed
        if not isinstance(value, (list, tuple)):
            raise wrong()
        return [_convert(item, item_tp, f"{key}[{i}]", from_text) for i, item in enumerate(value)]
    if tp is bool:
        if isinstance(value, bool):
            return value
        if from_text and str(value).lower() in ("true", "yes", "1", "on", "false", "no", "0", "off"):
            return str(value).lower() in ("true", "yes", "1", "on")
        raise wrong()
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, str):
            try:
                return int(value.replace("_", ""))
            except ValueError:
                pass
        raise wrong()
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):  # PyYAML reads "3e-4" (no dot) as a string
            try:
                return float(value)
            except ValueError:
                pass
        raise wrong()
    if tp is str:
        if isinstance(value, str):
            return value
        if from_text:
            return str(value)
        raise wrong()
    raise RecipeError(f"{key}: unsupported field type {tp!r}")  # a schema bug, not user error


def _build(cls, data: dict, prefix: str = ""):
    if not isinstance(data, dict):
        raise RecipeError(f"{prefix.rstrip('.') or 'recipe'} must be a mapping")
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    kwargs = {}
    for key, value in data.items():
        if key not in names:
            close = difflib.get_close_matches(str(key), names, n=1, cutoff=0.6) if isinstance(key, str) else []
            shown = key if isinstance(key, str) and len(key) <= MESSAGE_VALUE_CHARS else short_repr(key)
            raise RecipeError(
                f"unknown key {prefix}{shown}; valid keys here: {', '.join(prefix + n for n in names)}",
                hint=f"did you mean {prefix}{close[0]}?" if close else None,
            )
        kwargs[key] = _convert(value, hints[key], prefix + key, from_text=False)
    return cls(**kwargs)


def recipe_from_dict(data: dict) -> Recipe:
    """Validate a plain mapping into a :class:`Recipe`: unknown keys, wrong types and values no run
    can use (:func:`~ppcr.config.recipe_checks.check_recipe`) are errors."""
    from ppcr.config.recipe_checks import check_recipe

    return check_recipe(_build(Recipe, data))


def recipe_to_dict(recipe: Recipe) -> dict:
    return dataclasses.asdict(recipe)


# ----------------------------------------------------------------------------- overrides


def _field_type(path: list[str]):
    """The declared type of a dotted key path, with did-you-mean errors."""
    cls: Any = Recipe
    for depth, part in enumerate(path):
        if not dataclasses.is_dataclass(cls):
            parent = ".".join(path[:depth])
            raise RecipeError(f"{parent} is a value, not a section; cannot set {'.'.join(path)}")
        names = [f.name for f in dataclasses.fields(cls)]
        if part not in names:
            prefix = ".".join(path[:depth])
            prefix = prefix + "." if prefix else ""
            candidates = names + (list(AXIS_KEYS) if depth == 0 else [])
            close = difflib.get_close_matches(part, candidates, n=1, cutoff=0.6)
            if close and close[0] in AXIS_KEYS:
                hint = f"did you mean {close[0].replace('_', '-')}?"
            elif close:
                hint = f"did you mean {prefix}{close[0]}?"
            elif depth == 0:
                hint = "shorthands: " + ", ".join(k.replace("_", "-") for k in AXIS_KEYS)
            else:
                hint = None
            raise RecipeError(
                f"unknown key {'.'.join(path)!r}; valid keys here: {', '.join(prefix + n for n in names)}",
                hint=hint,
            )
        cls = typing.get_type_hints(cls)[part]
    return cls


def parse_override(text: str) -> tuple[list[str], str]:
    """Split ``key=value`` into a normalised key path (dashes → underscores) and the raw value."""
    if "=" not in text:
        raise RecipeError(f"override {text!r} is not of the form key=value", hint="e.g. train.lr=1e-4")
    key, value = text.split("=", 1)
    key = key.strip().replace("-", "_")
    if not key:
        raise RecipeError(f"override {text!r} has an empty key")
    key = AXIS_KEYS.get(key, key)
    return key.split("."), value


def apply_overrides(data: dict, overrides: Iterable[str]) -> dict:
    """Apply ``key=value`` strings to a recipe mapping, typing each value by the schema."""
    data = copy.deepcopy(data)
    for text in overrides:
        path, raw = parse_override(text)
        tp = _field_type(path)
        value = _convert(raw, tp, ".".join(path), from_text=True)
        node = data
        for part in path[:-1]:
            child = node.get(part)
            if not isinstance(child, dict):
                child = {}
                node[part] = child
            node = child
        if dataclasses.is_dataclass(value):
            value = dataclasses.asdict(value)
        node[path[-1]] = value
    return data


# ----------------------------------------------------------------------------- public entry points


def load_recipe_dict(
    name_or_path: str | Path,
    overrides: Iterable[str] = (),
    overlays: Iterable[str | Path] = (),
) -> dict:
    """The merged (not yet validated) mapping of a recipe, its overlays and overrides."""
    path = resolve_recipe_path(name_or_path)
    data = _read_yaml(path)
    data.setdefault("name", path.stem)
    for overlay in overlays:
        data = deep_merge(data, _read_yaml(Path(overlay)))
    return apply_overrides(data, overrides)


def load_recipe(
    name_or_path: str | Path,
    overrides: Iterable[str] = (),
    overlays: Iterable[str | Path] = (),
) -> Recipe:
    """Load a shipped recipe by name (or a YAML path), apply overlays and overrides, validate."""
    return recipe_from_dict(load_recipe_dict(name_or_path, overrides, overlays))


def dump_recipe(recipe: Recipe) -> str:
    """The resolved recipe as YAML text (what is saved beside a run)."""
    return yaml.safe_dump(recipe_to_dict(recipe), sort_keys=False, default_flow_style=None)


def save_recipe(recipe: Recipe, path: str | Path) -> Path:
    """Write the resolved recipe atomically (temp file in the same folder, then rename)."""
    from ppcr.io import atomic_write_text

    path = Path(path)
    atomic_write_text(path, dump_recipe(recipe))
    return path
