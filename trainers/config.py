"""Typed configs: flat dataclasses, loadable from YAML, every field overridable on the command line.

A config is a plain (flat) dataclass. Allowed values and help text live in field metadata::

    @dataclass
    class MyConfig:
        finetune: str = field(default="lora", metadata={"choices": ("lora", "full"), "help": "..."})
        lr: float = 1e-5

``parse_config(MyConfig, ["--config", "run.yaml", "lr=3e-5", "--finetune", "full"])`` layers
defaults < YAML file < command line, coerces every value to the field's annotated type and raises
``ConfigError`` naming the bad field and what it accepts. ``dump_yaml`` writes the resolved config,
which ``load_yaml`` reads back to an equal object (the run's config is saved this way).

Every number given (file or command line) must be finite, and at least 0 unless its field's
metadata says ``signed=True``: DistillGym's numeric settings are counts, rates, coefficients and
seeds, so ``lr=nan``, ``temperature=inf`` or ``steps=-1`` are refused here, at parse time.
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from collections.abc import Sequence
from pathlib import Path
from typing import Any, TypeVar

import yaml

__all__ = [
    "ConfigError",
    "config_field",
    "config_to_dict",
    "config_help",
    "dump_yaml",
    "from_dict",
    "load_yaml",
    "parse_config",
]

T = TypeVar("T")
_TRUE = {"1", "true", "yes", "on", "y"}
_FALSE = {"0", "false", "no", "off", "n"}


class ConfigError(ValueError):
    """A config value is unknown, of the wrong type or not allowed. The message names the field."""


def config_field(default: Any, help: str, choices: tuple[Any, ...] | None = None) -> Any:
    """A dataclass field carrying ``help`` (and allowed ``choices``) metadata for the CLI and checks.

    Mutable defaults (dict, list) become a ``default_factory`` that copies them.
    """
    meta: dict[str, Any] = {"help": help}
    if choices is not None:
        meta["choices"] = choices
    if isinstance(default, (dict, list)):
        return dataclasses.field(default_factory=lambda: type(default)(default), metadata=meta)
    return dataclasses.field(default=default, metadata=meta)


def _field_types(cls: type) -> dict[str, Any]:
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls) if f.init}


def _fields(cls: type) -> dict[str, dataclasses.Field]:
    return {f.name: f for f in dataclasses.fields(cls) if f.init}


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _coerce(name: str, value: Any, tp: Any) -> Any:
    """Convert ``value`` (a YAML value or a command-line string) to the annotated type ``tp``."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        if value is None or (isinstance(value, str) and value.lower() in ("none", "null")):
            if type(None) in args:
                return None
        errors = []
        for arg in (a for a in args if a is not type(None)):
            try:
                return _coerce(name, value, arg)
            except ConfigError as exc:
                errors.append(str(exc))
        raise ConfigError(errors[0] if errors else f"{name}: bad value {value!r}")
    if tp is Any:
        return value
    if origin is typing.Literal:
        for allowed in args:
            if value == allowed or str(value) == str(allowed):
                return allowed
        raise ConfigError(f"{name}: {value!r} is not one of {list(args)}")
    if origin in (list, tuple, Sequence) or tp in (list, tuple):
        if isinstance(value, str):
            text = value.strip()
            parsed = yaml.safe_load(text) if text.startswith("[") else [v for v in text.split(",") if v]
            value = parsed
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{name}: expected a list, got {value!r}")
        inner = args[0] if args else Any
        items = [_coerce(f"{name}[{i}]", v, inner) for i, v in enumerate(value)]
        return tuple(items) if (origin is tuple or tp is tuple) else items
    if origin is dict or tp is dict:
        if isinstance(value, str):
            value = yaml.safe_load(value) if value.strip() else {}
        if not isinstance(value, dict):
            raise ConfigError(f"{name}: expected a mapping, got {value!r}")
        return dict(value)
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in _TRUE | _FALSE:
            return value.lower() in _TRUE
        if isinstance(value, int) and value in (0, 1):
            return bool(value)
        raise ConfigError(f"{name}: expected true/false, got {value!r}")
    if tp is int:
        if isinstance(value, bool):
            raise ConfigError(f"{name}: expected an integer, got {value!r}")
        if isinstance(value, int):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        try:
            return int(str(value).replace("_", ""))
        except ValueError:
            raise ConfigError(f"{name}: expected an integer, got {value!r}") from None
    if tp is float:
        if isinstance(value, bool):
            raise ConfigError(f"{name}: expected a number, got {value!r}")
        try:
            return float(value)
        except (TypeError, ValueError):
            raise ConfigError(f"{name}: expected a number, got {value!r}") from None
    if tp is str:
        if isinstance(value, (dict, list)):
            raise ConfigError(f"{name}: expected a string, got {value!r}")
        return str(value)
    if tp is Path:
        return Path(str(value))
    raise ConfigError(f"{name}: unsupported config type {_type_name(tp)}")


def _check_number(name: str, value: Any, f: dataclasses.Field) -> None:
    """Finite, and >= 0 unless the field is ``signed`` (also inside lists: ``[1, nan]``)."""
    if isinstance(value, (list, tuple)):
        for i, v in enumerate(value):
            _check_number(f"{name}[{i}]", v, f)
        return
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return
    if isinstance(value, float) and not math.isfinite(value):
        raise ConfigError(f"{name}: must be a finite number, got {value!r}")
    if value < 0 and not f.metadata.get("signed", False):
        raise ConfigError(f"{name}: must be >= 0, got {value!r}")


def _check_choices(name: str, value: Any, f: dataclasses.Field) -> None:
    choices = f.metadata.get("choices")
    if choices is not None and value is not None and value not in choices:
        raise ConfigError(f"{name}: {value!r} is not allowed; choose one of {list(choices)}")


def _unknown(cls: type, key: str) -> ConfigError:
    import difflib

    names = list(_fields(cls))
    close = difflib.get_close_matches(key, names, n=3)
    hint = f" (did you mean {', '.join(close)}?)" if close else ""
    return ConfigError(f"unknown config key {key!r} for {cls.__name__}{hint}")


def from_dict(cls: type[T], values: dict[str, Any], base: T | None = None) -> T:
    """Build ``cls`` from ``values`` on top of ``base`` (or the defaults), coercing and validating."""
    fields, types_ = _fields(cls), _field_types(cls)
    current = config_to_dict(base) if base is not None else {}
    for key, raw in values.items():
        key = key.replace("-", "_")
        if key not in fields:
            raise _unknown(cls, key)
        value = _coerce(key, raw, types_[key])
        _check_number(key, value, fields[key])
        _check_choices(key, value, fields[key])
        current[key] = value
    try:
        return cls(**current)
    except ConfigError:
        raise
    except TypeError as exc:
        raise ConfigError(f"{cls.__name__}: {exc}") from None


def config_to_dict(cfg: Any) -> dict[str, Any]:
    """Plain dict of a config (tuples become lists, paths strings) for YAML/JSON."""

    def plain(v: Any) -> Any:
        if isinstance(v, (list, tuple)):
            return [plain(x) for x in v]
        if isinstance(v, dict):
            return {k: plain(x) for k, x in v.items()}
        if isinstance(v, Path):
            return str(v)
        return v

    return {f.name: plain(getattr(cfg, f.name)) for f in dataclasses.fields(cfg) if f.init}


def load_yaml(cls: type[T], path: str | Path, overrides: Sequence[str] = ()) -> T:
    """Read a YAML file into ``cls``; then apply ``key=value`` overrides."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    try:
        values = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(_yaml_error(path, exc)) from None
    if not isinstance(values, dict):
        raise ConfigError(f"config file {path} must hold a mapping of keys to values")
    cfg = from_dict(cls, values)
    return parse_config(cls, list(overrides), base=cfg) if overrides else cfg


def _yaml_error(path: Path, exc: yaml.YAMLError) -> str:
    """One line: ``config file F, line L, column C: not valid YAML: <problem>`` (1-based)."""
    mark = getattr(exc, "problem_mark", None) or getattr(exc, "context_mark", None)
    where = f", line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
    problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
    context = getattr(exc, "context", None)
    text = f"{context}: {problem}" if context and context != problem else str(problem)
    return f"config file {path}{where}: not valid YAML: {' '.join(text.split())}"


def dump_yaml(cfg: Any, path: str | Path | None = None) -> str:
    """YAML text of ``cfg`` (written to ``path`` when given)."""
    text = yaml.safe_dump(config_to_dict(cfg), sort_keys=False)
    if path is not None:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        Path(path).write_text(text)
    return text


def _split_args(cls: type, argv: Sequence[str]) -> tuple[str | None, list[tuple[str, str]]]:
    """Pairs (key, raw value) from ``key=value``, ``--key value`` and ``--key=value``; a bare
    ``--flag`` for a bool field means true."""
    types_ = _field_types(cls)
    config_file, pairs, i = None, [], 0
    args = list(argv)
    while i < len(args):
        arg = args[i]
        if arg.startswith("--"):
            body = arg[2:]
            if "=" in body:
                key, value = body.split("=", 1)
            else:
                key = body
                nxt = args[i + 1] if i + 1 < len(args) else None
                is_bool = types_.get(key.replace("-", "_")) is bool
                if is_bool and (nxt is None or nxt.startswith("--") or "=" in nxt):
                    value = "true"
                elif nxt is None or nxt.startswith("--") or nxt.split("=", 1)[0] in types_:
                    # `--steps --lr 1e-3`, `--steps lr=1e-3`: the next word is an option, not a value
                    raise ConfigError(f"option --{key} needs a value")
                else:
                    value, i = nxt, i + 1
        elif "=" in arg:
            key, value = arg.split("=", 1)
        else:
            raise ConfigError(f"cannot read argument {arg!r}: use key=value or --key value")
        if key in ("config", "c"):
            config_file = value
        else:
            pairs.append((key, value))
        i += 1
    return config_file, pairs


def parse_config(cls: type[T], argv: Sequence[str], base: T | None = None) -> T:
    """Defaults < ``--config file.yaml`` < ``key=value`` / ``--key value`` arguments."""
    config_file, pairs = _split_args(cls, argv)
    cfg = load_yaml(cls, config_file) if config_file else base
    return from_dict(cls, dict(pairs), base=cfg) if pairs or cfg is None else cfg


def config_help(cls: type) -> str:
    """One line per field: name, type, default, allowed values and help."""
    lines = []
    for f in dataclasses.fields(cls):
        if not f.init:
            continue
        default = f.default if f.default is not dataclasses.MISSING else (
            f.default_factory() if f.default_factory is not dataclasses.MISSING else "(required)"
        )
        tp = _type_name(_field_types(cls)[f.name])
        extra = f"  one of {list(f.metadata['choices'])}" if "choices" in f.metadata else ""
        text = f.metadata.get("help", "")
        lines.append(f"  {f.name:<24} {tp:<14} default={default!r}{extra}{'  ' + text if text else ''}")
    return "\n".join(lines)
