"""Recipes: TOML files <-> the typed `Recipe` of `hpdm_cli.config`.

A recipe is a TOML document whose tables are the sections of `Recipe` (`[data]`,
`[pyramid]`, `[model]`, `[diffusion]`, `[train]`, `[sample]`, `[eval]`). The loader is
generic: it walks the dataclasses with `dataclasses.fields` and `typing.get_type_hints`,
so a field added to `config.py` needs no change here as long as its type is one the config
already uses: bool, int, float, str, `object` (model.load), tuples and lists of those, or a
nested dataclass. It is strict: an unknown section or key, or a value of the wrong type, is a
`ConfigError` with a one-line message that names the source (file), the dotted key and, for
typos, the closest valid key. Keys that are absent take the dataclass defaults; the result is
checked with `Recipe.validate()`.

Command-line overrides are `section.key=value` strings whose value is a TOML value, or
the bare text when it is not valid TOML (so `data.path=/tmp/x` needs no quotes).

`recipe_to_dict` / `dump_recipe` write the fully resolved recipe (every field), atomically,
so that a run directory or checkpoint alone describes the run:
`recipe_from_dict(recipe_to_dict(r)) == r`.
"""

from __future__ import annotations

import copy
import dataclasses
import difflib
import json
import os
import tomllib
import types
import typing
from pathlib import Path
from typing import Any, Iterable

import tomli_w

from hpdm_cli.config import ConfigError, Recipe

__all__ = [
    "ConfigError",
    "Recipe",
    "apply_overrides",
    "available_recipes",
    "default_recipe_path",
    "dump_recipe",
    "load_recipe",
    "recipe_from_dict",
    "recipe_from_toml",
    "recipe_to_dict",
    "recipe_to_toml",
]

_PACKAGED_RECIPES = Path(__file__).resolve().parent / "recipes"


# --------------------------------------------------------------------------- schema helpers

def _fields(cls: type) -> dict[str, Any]:
    """Init fields of dataclass `cls` mapped to their resolved type hints, in declaration order."""
    hints = typing.get_type_hints(cls)
    return {f.name: hints.get(f.name, Any) for f in dataclasses.fields(cls) if f.init}


def _is_dataclass_type(tp: Any) -> bool:
    return isinstance(tp, type) and dataclasses.is_dataclass(tp)


def _join(prefix: str, key: str) -> str:
    return f"{prefix}.{key}" if prefix else key


def _all_keys(cls: type, prefix: str = "") -> list[str]:
    """Every dotted leaf key under dataclass `cls` (tables included as their own names)."""
    out = []
    for name, tp in _fields(cls).items():
        full = _join(prefix, name)
        out.append(full)
        if _is_dataclass_type(tp):
            out.extend(_all_keys(tp, full))
    return out


# Names other tools give a recipe key: a close spelling would suggest a wrong key (epochs -> eps, Adam's epsilon).
_OTHER_NAMES = {"epochs": "steps", "epoch": "steps", "iterations": "steps", "iters": "steps",
                "max_steps": "steps", "learning_rate": "lr", "batch": "batch_size", "bs": "batch_size"}


def _unknown(cls: type, prefix: str, key: str, source: str) -> ConfigError:
    """The error for `key` not being a field of `cls` (at dotted `prefix`), with a suggestion."""
    names = list(_fields(cls))
    full = _join(prefix, key)
    what = "section" if not prefix else "key"
    lower = {n.lower(): n for n in names}
    other = _OTHER_NAMES.get(key.lower())
    close = ([lower[key.lower()]] if key.lower() in lower else [other] if other in names
             else difflib.get_close_matches(key.lower(), names, n=1, cutoff=0.7))
    if close:
        hint = f" (did you mean {_join(prefix, close[0])}?)"
    else:
        # The right name in the wrong section (e.g. model.fps -> data.fps)?
        everywhere = _all_keys(Recipe)
        same_leaf = [k for k in everywhere if k.rsplit(".", 1)[-1] == key and k != full]
        close_full = difflib.get_close_matches(full, [k for k in everywhere if "." in k], n=1, cutoff=0.75)
        if same_leaf:
            hint = f" (did you mean {' or '.join(same_leaf)}?)"
        elif close_full:
            hint = f" (did you mean {close_full[0]}?)"
        else:
            valid = ", ".join(names)
            hint = f" (valid {'sections' if not prefix else 'keys of ' + prefix}: {valid})"
    return ConfigError(f"{source}: unknown {what} {full}{hint}")


# --------------------------------------------------------------------------- type checking

class _TypeMismatch(Exception):
    """Internal: a value does not fit a type (turned into a ConfigError naming the key)."""


def _describe_type(tp: Any) -> str:
    """Human description of what a field of type `tp` accepts."""
    if tp is bool:
        return "a boolean (true or false)"
    if tp is int:
        return "an integer"
    if tp is float:
        return "a number"
    if tp is str:
        return "a string"
    if tp is object:
        return "a string or a list of integers"
    if tp is list:
        return "a list"
    if _is_dataclass_type(tp):
        return "a table"
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin is tuple:
        if len(args) == 2 and args[1] is Ellipsis:
            return f"a list of {_plural(args[0])}"
        if args and all(a == args[0] for a in args):
            return f"a list of {len(args)} {_plural(args[0])}"
        return f"a list of {len(args)} values ({', '.join(_describe_type(a) for a in args)})"
    if origin is list:
        return f"a list of {_plural(args[0])}" if args else "a list"
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_describe_type(a) for a in args)
    return getattr(tp, "__name__", str(tp))


def _plural(tp: Any) -> str:
    return {bool: "booleans", int: "integers", float: "numbers", str: "strings"}.get(tp, "values")


def _kind(value: Any) -> str:
    """TOML-flavoured name of the type of `value`."""
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "integer"
    if isinstance(value, float):
        return "float"
    if isinstance(value, str):
        return "string"
    if isinstance(value, (list, tuple)):
        return f"list of {len(value)}"
    if isinstance(value, dict):
        return "table"
    return type(value).__name__


def _show(value: Any, limit: int = 80) -> str:
    """One-line TOML-like rendering of `value`, truncated to `limit` characters."""
    if isinstance(value, bool):
        text = "true" if value else "false"
    elif isinstance(value, str):
        text = json.dumps(value, ensure_ascii=False)
    elif isinstance(value, (list, tuple)):
        text = "[" + ", ".join(_show(v, limit) for v in value) + "]"
    elif isinstance(value, dict):
        text = "{" + ", ".join(f"{k} = {_show(v, limit)}" for k, v in value.items()) + "}"
    else:
        text = repr(value)
    text = " ".join(text.split("\n"))
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _coerce(value: Any, tp: Any, key: str, source: str) -> Any:
    """Check `value` against type `tp` and convert it (int->float, list->tuple); raise on mismatch."""
    try:
        return _convert(value, tp, key, source)
    except _TypeMismatch:
        expected = _describe_type(tp)
        hint = (f"; a list goes in brackets: '{key}=[{value}]'" if isinstance(value, str) and "list" in expected
                and "," in value and not value.lstrip().startswith("[") else "")
        raise ConfigError(f"{source}: {key}: expected {expected}, got {_show(value)} ({_kind(value)}){hint}") from None


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _convert(value: Any, tp: Any, key: str, source: str) -> Any:
    if tp is Any:
        return copy.deepcopy(value)
    if _is_dataclass_type(tp):
        if not isinstance(value, dict):
            raise _TypeMismatch
        return _build(tp, value, key, source)
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise _TypeMismatch
    if tp is int:
        if _is_int(value):
            return value
        raise _TypeMismatch
    if tp is float:
        if _is_int(value) or isinstance(value, float):
            return float(value)
        raise _TypeMismatch
    if tp is str:
        if isinstance(value, str):
            return value
        raise _TypeMismatch
    if tp is object:
        # Free-form fields (model.load): a keyword string or a list of integers.
        if isinstance(value, str):
            return value
        if isinstance(value, (list, tuple)) and all(_is_int(v) for v in value):
            return list(value)
        raise _TypeMismatch
    if tp is list:
        if isinstance(value, (list, tuple)):
            return copy.deepcopy(list(value))
        raise _TypeMismatch
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise _TypeMismatch
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_convert(v, args[0], key, source) for v in value)
        if args and len(value) != len(args):
            raise _TypeMismatch
        if not args:
            return tuple(copy.deepcopy(list(value)))
        return tuple(_convert(v, a, key, source) for v, a in zip(value, args))
    if origin is list:
        if not isinstance(value, (list, tuple)):
            raise _TypeMismatch
        return [_convert(v, args[0], key, source) for v in value] if args else copy.deepcopy(list(value))
    if origin in (typing.Union, types.UnionType):             # the first alternative that fits
        for alternative in args:
            try:
                return _convert(value, alternative, key, source)
            except _TypeMismatch:
                pass
        raise _TypeMismatch
    if isinstance(tp, type):
        if isinstance(value, tp):
            return copy.deepcopy(value)
        raise _TypeMismatch
    # A field type this loader does not read (e.g. Optional, Literal, dict): a programming error, not a user's.
    raise TypeError(f"{key}: hpdm_cli/recipe.py cannot read a config field annotated {tp!r}")


def _build(cls: type, table: dict, prefix: str, source: str) -> Any:
    """Instantiate dataclass `cls` from `table`, strictly (unknown keys and wrong types raise)."""
    schema = _fields(cls)
    kwargs = {}
    for key, value in table.items():
        if key not in schema:
            raise _unknown(cls, prefix, str(key), source)
        kwargs[key] = _coerce(value, schema[key], _join(prefix, key), source)
    try:
        return cls(**kwargs)
    except TypeError as e:  # A field without a default that the table does not give.
        raise ConfigError(f"{source}: {prefix or 'recipe'}: {e}") from None


# --------------------------------------------------------------------------- public API

def recipe_from_dict(d: dict, *, source: str = "<dict>") -> Recipe:
    """Build and validate a Recipe from a nested dict (e.g. parsed TOML), strictly."""
    if not isinstance(d, dict):
        raise ConfigError(f"{source}: expected a table of sections, got {_kind(d)}")
    for section, value in d.items():
        tp = _fields(Recipe).get(section)
        if tp is None:
            raise _unknown(Recipe, "", str(section), source)
        if _is_dataclass_type(tp) and not isinstance(value, dict):
            raise ConfigError(f"{source}: {section}: expected a table [{section}], got {_show(value)} "
                              f"({_kind(value)})")
    recipe = _build(Recipe, d, "", source)
    try:
        recipe.validate()
    except ConfigError as e:
        raise ConfigError(f"{source}: {e}") from None
    except (ArithmeticError, LookupError, ValueError, TypeError) as e:
        # validate() should only raise ConfigError; anything else is still the recipe's fault.
        raise ConfigError(f"{source}: inconsistent recipe ({type(e).__name__}: {e})") from None
    return recipe


def _parse_toml(text: str, source: str) -> dict:
    """Parse TOML text, turning syntax errors into a one-line ConfigError naming `source`."""
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        msg = " ".join(str(getattr(e, "msg", e)).split())
        line = getattr(e, "lineno", None)
        where = f"{source}:{line}" if line is not None and f"line {line}" not in msg else source
        raise ConfigError(f"{where}: invalid TOML: {msg}") from None


def recipe_from_toml(text: str, overrides: Iterable[str] = (), *, source: str = "<string>") -> Recipe:
    """Build and validate a Recipe from TOML text (e.g. the copy stored in a checkpoint)."""
    d = _parse_toml(text, source)
    d = apply_overrides(d, list(overrides), source=source)
    return recipe_from_dict(d, source=source)


def load_recipe(path: str | os.PathLike, overrides: Iterable[str] = ()) -> Recipe:
    """Read a TOML recipe file, apply `section.key=value` overrides, build and validate it."""
    source = str(path)
    try:
        raw = Path(path).read_bytes()
    except FileNotFoundError:
        raise ConfigError(f"{source}: recipe file not found") from None
    except IsADirectoryError:
        raise ConfigError(f"{source}: is a directory, not a recipe file") from None
    except OSError as e:
        raise ConfigError(f"{source}: cannot read recipe ({e.strerror or e})") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        line = raw[:e.start].count(b"\n") + 1
        raise ConfigError(f"{source}:{line}: invalid TOML: not UTF-8 text (byte {e.start}); "
                          "save the file as UTF-8") from None
    text = text.removeprefix("\ufeff")                 # a byte-order mark some editors write: TOML has none
    if not _parse_toml(text, source):
        raise ConfigError(f"{source}: the recipe is empty (no section or key): start from a packaged recipe, e.g. "
                          "recipes/tiny.toml")
    return recipe_from_toml(text, overrides, source=source)


def _parse_override_value(text: str) -> Any:
    """A TOML value if `text` is one, else the raw text as a string."""
    try:
        parsed = tomllib.loads(f"v = {text}")
    except tomllib.TOMLDecodeError:
        return text
    if set(parsed) != {"v"}:  # e.g. "1\nw = 2": not a single value.
        return text
    return parsed["v"]


def apply_overrides(d: dict, overrides: Iterable[str], *, source: str = "<dict>") -> dict:
    """Return a copy of recipe dict `d` with `section.key=value` overrides applied and type-checked."""
    out = copy.deepcopy(d)
    for ov in overrides:
        label = f"{source}: override {ov!r}"
        if not isinstance(ov, str) or "=" not in ov:
            raise ConfigError(f"{label}: expected section.key=value")
        key, text = ov.split("=", 1)
        key, text = key.strip(), text.strip()
        parts = key.split(".")
        if len(parts) < 2 or not all(parts):
            raise ConfigError(f"{label}: expected section.key=value with a dotted key such as model.latent_dim")
        # Walk the schema so that the key is checked by the same rules as the builder.
        cls, prefix, table = Recipe, "", out
        for i, part in enumerate(parts):
            schema = _fields(cls)
            if part not in schema:
                raise _unknown(cls, prefix, part, label)
            tp = schema[part]
            full = _join(prefix, part)
            last = i == len(parts) - 1
            if last:
                value = _parse_override_value(text)
                if tp is str and not isinstance(value, str):
                    value = text  # data.path=2024 or train.init_from=1: keep the text.
                _coerce(value, tp, full, label)
                if not isinstance(table, dict):
                    raise ConfigError(f"{label}: {prefix} is not a table in the recipe")
                table[part] = value
            else:
                if not _is_dataclass_type(tp):
                    raise ConfigError(f"{label}: {full} is a value, not a section; "
                                      f"no key {_join(full, parts[i + 1])}")
                if not isinstance(table, dict):
                    raise ConfigError(f"{label}: {prefix} is not a table in the recipe")
                table = table.setdefault(part, {})
                cls, prefix = tp, full
    return out


def _to_plain(value: Any) -> Any:
    """Dataclasses -> dicts (every field, None dropped), tuples -> lists, recursively."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        out = {}
        for f in dataclasses.fields(value):
            if not f.init:
                continue
            v = _to_plain(getattr(value, f.name))
            if v is not None:  # TOML has no null; an absent key takes the (None) default.
                out[f.name] = v
        return out
    if isinstance(value, (list, tuple)):
        return [_to_plain(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _to_plain(v) for k, v in value.items()}
    return value


def recipe_to_dict(recipe: Recipe) -> dict:
    """The fully resolved recipe as a TOML-ready nested dict (every field; tuples as lists)."""
    return _to_plain(recipe)


def recipe_to_toml(recipe: Recipe) -> str:
    """The fully resolved recipe as TOML text."""
    return tomli_w.dumps(recipe_to_dict(recipe))


def dump_recipe(recipe: Recipe, path: str | os.PathLike) -> Path:
    """Write the resolved recipe as TOML to `path` atomically (temp file, fsync, os.replace)."""
    path = Path(path)
    d = recipe_to_dict(recipe)
    parent = path.parent
    parent.mkdir(parents=True, exist_ok=True)
    try:
        mode = path.stat().st_mode & 0o777
    except OSError:
        mode = 0o644
    from .io import atomic_open
    with atomic_open(path, "wb") as f:              # temp file, fsync, os.replace, directory fsync
        tomli_w.dump(d, f)
    os.chmod(path, mode)
    return path


def available_recipes() -> list[str]:
    """Names of the recipes packaged in `hpdm_cli/recipes/` (without `.toml`)."""
    if not _PACKAGED_RECIPES.is_dir():
        return []
    return sorted(p.stem for p in _PACKAGED_RECIPES.glob("*.toml") if p.is_file())


def default_recipe_path(name: str | os.PathLike) -> Path:
    """Resolve a recipe given as a path or as a packaged name (`"tiny"` -> hpdm_cli/recipes/tiny.toml)."""
    p = Path(name)
    if p.is_file():
        return p
    if p.is_dir():
        raise ConfigError(f"{name}: is a folder, not a recipe: give a .toml recipe file or a packaged recipe's name")
    stem = p.name[:-5] if p.name.endswith(".toml") else p.name
    if p.parent == Path(".") and stem:
        packaged = _PACKAGED_RECIPES / f"{stem}.toml"
        if packaged.is_file():
            return packaged
    names = available_recipes()
    listing = ", ".join(names) if names else "none packaged"
    raise ConfigError(f"{name}: no such recipe file or packaged recipe (available: {listing})")
