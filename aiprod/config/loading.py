"""Loading a config: presets and YAML files, `key.path=value` overrides, validation with errors
that name the key path, and the job CLIs' config arguments."""

from __future__ import annotations

import argparse
import difflib
import json
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from aiprod.config.schema import Config
from aiprod.config.section import ConfigError, Section, deep_merge

PRESET_DIR = Path(__file__).resolve().parents[1] / "presets"


def available_presets() -> list[str]:
    return sorted(p.stem for p in PRESET_DIR.glob("*.yaml"))


def _read_yaml(path: Path) -> dict[str, Any]:
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        raise ConfigError(f"config: {path} is not valid YAML: {exc}") from exc
    except OSError as exc:
        raise ConfigError(f"config: cannot read {path}: {exc.strerror}") from exc
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"config: {path} must hold a mapping at the top, got {type(data).__name__}")
    return data


def _source(preset_or_path: str | Path) -> tuple[dict[str, Any], str]:
    text = str(preset_or_path)
    path = Path(text)
    if path.suffix in (".yaml", ".yml") or path.exists():
        if not path.exists():
            raise ConfigError(f"config: file {path} does not exist")
        data = _read_yaml(path)
        base = data.pop("base", None)
        if base is not None:  # a file may extend a preset: `base: tiny`
            parent, _ = _source(base)
            return deep_merge(parent, data), path.stem
        return data, path.stem
    if text in available_presets():
        return _read_yaml(PRESET_DIR / f"{text}.yaml"), text
    close = difflib.get_close_matches(text, available_presets(), n=1)
    hint = f"; did you mean '{close[0]}'?" if close else ""
    raise ConfigError(
        f"config: no preset named '{text}' (presets: {', '.join(available_presets())}){hint}"
    )

def apply_override(tree: dict[str, Any], override: str) -> None:
    """Set `a.b.2.c=value` in a nested dict/list tree; the value is parsed as YAML."""
    if "=" not in override:
        raise ConfigError(f"config: override '{override}' must look like key.path=value")
    path, raw = override.split("=", 1)
    keys = [k for k in path.strip().split(".") if k]
    if not keys:
        raise ConfigError(f"config: override '{override}' has an empty key path")
    try:
        value = yaml.safe_load(raw) if raw.strip() else raw
    except yaml.YAMLError as exc:
        raise ConfigError(f"config: {path}: value '{raw}' is not valid YAML: {exc}") from exc
    node: Any = tree
    for depth, key in enumerate(keys):
        last = depth == len(keys) - 1
        where = ".".join(keys[: depth + 1])
        if isinstance(node, list):
            if not key.lstrip("-").isdigit():
                raise ConfigError(f"config: {where}: '{key}' is not a list index")
            index = int(key)
            if not -len(node) <= index < len(node):
                raise ConfigError(
                    f"config: {where}: index {index} is out of range (list has {len(node)} items)"
                )
            if last:
                node[index] = value
            else:
                node = node[index]
        elif isinstance(node, dict):
            if last:
                node[key] = value
            else:
                node = node.setdefault(key, {})
        else:
            parent = ".".join(keys[:depth])
            raise ConfigError(f"config: {parent} is a value, not a section; cannot set {where}")


def _field_names_at(loc: tuple[Any, ...]) -> list[str]:
    """Valid keys of the model that lives at `loc` (for 'did you mean')."""
    model: Any = Config
    for part in loc[:-1]:
        if isinstance(part, int):
            continue
        field = getattr(model, "model_fields", {}).get(part)
        if field is None:
            return []
        ann = field.annotation
        args = getattr(ann, "__args__", ()) or ()
        candidates = [ann, *args]
        model = next((c for c in candidates if isinstance(c, type) and issubclass(c, BaseModel)), None)
        if model is None:  # list[Model] / dict[str, Model]
            inner = [a for c in args for a in getattr(c, "__args__", ())] + list(args)
            model = next((c for c in inner if isinstance(c, type) and issubclass(c, BaseModel)), None)
        if model is None:
            return []
    return list(getattr(model, "model_fields", {}))


_UNION_TAG_PREFIXES = ("literal[", "function-", "list[", "dict[", "nullable[", "union[")


def _clean_loc(loc: tuple[Any, ...]) -> tuple[Any, ...]:
    """Drop pydantic's union-branch tags (`int`, `literal['auto']`) so paths are config keys."""
    models = {cls.__name__ for cls in Section.__subclasses__()}
    return tuple(
        part
        for part in loc
        if not (
            isinstance(part, str)
            and (part in {"int", "float", "str", "bool", "none"} or part in models
                 or part.startswith(_UNION_TAG_PREFIXES))
        )
    )


def _format_error(err: dict[str, Any]) -> tuple[str, str]:
    loc = _clean_loc(tuple(err["loc"]))
    path = ".".join(str(p) for p in loc) or "(top)"
    kind = err["type"]
    value = err.get("input")
    if kind == "extra_forbidden":
        key = str(err["loc"][-1])
        close = difflib.get_close_matches(key, _field_names_at(loc), n=1)
        hint = f"; did you mean '{'.'.join(str(p) for p in loc[:-1] + (close[0],))}'?" if close else ""
        return path, f"is not a known key{hint}"
    if kind == "missing":
        return path, "is required"
    msg = err["msg"].removeprefix("Value error, ")
    msg = msg[0].lower() + msg[1:]
    if kind == "value_error":  # our own validators already say what was given
        return path, msg
    return path, f"{msg}, got {json.dumps(value, default=str)}"


def validate(tree: dict[str, Any]) -> Config:
    try:
        return Config.model_validate(tree)
    except ValidationError as exc:
        by_path: dict[str, list[str]] = {}
        for err in exc.errors():
            path, msg = _format_error(err)
            by_path.setdefault(path, []).append(msg)
        lines = [f"config: {path}: {' or '.join(msgs)}" for path, msgs in by_path.items()]
        lines = [line.replace(": is ", " is ", 1) for line in lines]
        raise ConfigError("\n".join(lines)) from None


def load_config(
    preset_or_path: str | Path = "tiny", overrides: list[str] | tuple[str, ...] = ()
) -> Config:
    """Load a preset name or YAML path, apply `key.path=value` overrides, validate."""
    tree, name = _source(preset_or_path)
    tree.setdefault("preset", name)
    for override in overrides:
        apply_override(tree, override)
    return validate(tree)


def load_overrides_file(path: str | Path) -> list[str]:
    """An overrides file: a YAML mapping of `key.path: value` (as tune/search.py writes best.yaml)."""
    data = _read_yaml(Path(path))
    return [f"{key}={json.dumps(value)}" for key, value in data.items()]


def add_config_arguments(parser: argparse.ArgumentParser) -> None:
    """--preset, --config, --overrides-file and trailing key.path=value overrides (the job CLIs)."""
    parser.add_argument("--preset", help=f"preset name ({', '.join(available_presets())})")
    parser.add_argument("--config", help="YAML config file (may say `base: PRESET`)")
    parser.add_argument("--overrides-file", help="YAML mapping of key.path: value")
    parser.add_argument("overrides", nargs="*", help="key.path=value")


def overrides_from_args(args: argparse.Namespace) -> list[str]:
    """The overrides file's entries, then the command line's (later wins)."""
    return (load_overrides_file(args.overrides_file) if args.overrides_file else []) + list(args.overrides)


def schema() -> dict[str, Any]:
    return Config.model_json_schema()
