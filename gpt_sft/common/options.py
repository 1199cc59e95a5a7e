"""Typed config dataclasses as command lines and YAML files.

Each field of a config dataclass carries its help text in ``metadata["help"]``. The same fields
drive ``--kebab-case`` flags and ``snake_case`` YAML keys; flags given on the command line
override the YAML file given with ``--config``, which overrides the defaults.
"""

from __future__ import annotations

import argparse
import dataclasses
import types
import typing
from collections.abc import Sequence
from pathlib import Path
from typing import Any, TypeVar

import yaml

T = TypeVar("T")


def option(default: Any, help: str, **extra: Any) -> Any:
    """A config field with its help text (and ``choices=...``): the one place its default is written,
    read by the flags, the YAML recipe and ``--help`` alike."""
    if isinstance(default, list):
        return dataclasses.field(default_factory=lambda: list(default), metadata={"help": help, **extra})
    return dataclasses.field(default=default, metadata={"help": help, **extra})


def _base_type(annotation: Any) -> tuple[Any, bool]:
    """(inner type, optional?) for ``X``, ``X | None``, ``Optional[X]``."""
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        return (args[0] if len(args) == 1 else str), True
    return annotation, False


def _field_types(cls) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _coerce(value: Any, annotation: Any, name: str, where: str) -> Any:
    base, optional = _base_type(annotation)
    if value is None:
        if optional:
            return None
        raise ValueError(f"{where}: '{name}' may not be null")
    if typing.get_origin(base) is list:
        (item,) = typing.get_args(base) or (str,)
        if isinstance(value, str):
            value = [v.strip() for v in value.split(",") if v.strip()]
        if not isinstance(value, list):
            raise ValueError(f"{where}: '{name}' must be a list, got {value!r}")
        return [_coerce(v, item, name, where) for v in value]
    if base is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "yes", "1", "false", "no", "0"):
            return value.lower() in ("true", "yes", "1")
        raise ValueError(f"{where}: '{name}' must be true or false, got {value!r}")
    if base in (int, float):
        if isinstance(value, bool):
            raise ValueError(f"{where}: '{name}' must be a number, got {value!r}")
        try:
            number = base(value)
        except (TypeError, ValueError):
            raise ValueError(f"{where}: '{name}' must be {base.__name__}, got {value!r}") from None
        if base is int and isinstance(value, float) and value != number:
            raise ValueError(f"{where}: '{name}' must be an integer, got {value!r}")
        return number
    if base is str:
        return str(value)
    return value


def load_yaml_config(cls: type[T], path: str | Path) -> dict[str, Any]:
    """Read a YAML recipe into ``{field: value}``; unknown keys and wrong types are clear errors."""
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except FileNotFoundError:
        raise ValueError(f"{path}: config file not found") from None
    except yaml.YAMLError as err:
        raise ValueError(f"{path}: not valid YAML: {err}") from None
    if not isinstance(raw, dict):
        raise ValueError(f"{path}: a recipe must be a mapping of option names to values")
    types_ = _field_types(cls)
    known = {f.name for f in dataclasses.fields(cls)}
    values = {}
    for key, value in raw.items():
        name = str(key).replace("-", "_")
        if name not in known:
            raise ValueError(f"{path}: unknown option '{key}'; known options: {', '.join(sorted(known))}")
        values[name] = _coerce(value, types_[name], name, str(path))
    return values


class CommandParser(argparse.ArgumentParser):
    """An ``ArgumentParser`` whose errors are one line (``error: ... (see PROG --help)``), not the
    whole usage text: a command with sixty options would otherwise bury the one that is wrong."""

    def error(self, message: str):
        self.exit(2, f"error: {message} (see {self.prog} --help)\n")


def build_parser(cls, description: str = "", prog: str | None = None) -> argparse.ArgumentParser:
    """An ``argparse`` parser with one ``--kebab-case`` flag per field of ``cls`` plus ``--config``.

    Field metadata besides ``help``: ``choices``; ``switch=True`` for a bool that is only ever turned
    on (``--interactive``; no ``--no-...`` twin); ``repeat=True`` for a list given one item per flag
    (``--option a=1 --option b=2``); ``positional="DIR"`` for the one field given without a flag
    (``gpt-sft verify DIR``; required unless the YAML recipe sets it)."""
    parser = CommandParser(
        prog=prog,
        description=description or (cls.__doc__ or "").split("\n\n")[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--config", metavar="YAML", help="YAML recipe; its keys are the options below in snake_case")
    parser.add_argument("--debug", action="store_true", default=argparse.SUPPRESS,
                        help="show the full traceback of an error")
    types_ = _field_types(cls)
    for f in dataclasses.fields(cls):
        flag = "--" + f.name.replace("_", "-")
        base, optional = _base_type(types_[f.name])
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()  # type: ignore[misc]
        kwargs: dict[str, Any] = {"dest": f.name, "default": argparse.SUPPRESS, "help": f.metadata.get("help", "")}
        if not f.metadata.get("positional"):  # a positional argument is named, not defaulted
            kwargs["help"] += f" (default: {default!r})"
        if f.metadata.get("positional"):
            del kwargs["dest"]  # a positional argument's name is its dest
            parser.add_argument(f.name, metavar=f.metadata["positional"], nargs="?", type=str, **kwargs)
        elif base is bool and f.metadata.get("switch"):
            parser.add_argument(flag, action="store_true", **kwargs)
        elif base is bool:
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, **kwargs)
        elif typing.get_origin(base) is list and f.metadata.get("repeat"):
            parser.add_argument(flag, action="append", type=str, metavar=f.metadata.get("metavar", "VALUE"), **kwargs)
        elif typing.get_origin(base) is list:
            parser.add_argument(flag, type=str, metavar="A,B,...", **kwargs)
        else:
            choices = f.metadata.get("choices")
            parser.add_argument(flag, type=str, choices=choices, metavar=None if choices else base.__name__.upper(), **kwargs)
    return parser


def parse_config(cls: type[T], argv: Sequence[str] | None = None, description: str = "",
                 prog: str | None = None) -> T:
    """Defaults < ``--config`` YAML < command-line flags. An error is one line and exit status 2."""
    parser = build_parser(cls, description, prog)
    args = vars(parser.parse_args(argv))
    yaml_path = args.pop("config", None)
    args.pop("debug", None)  # read by gpt_sft.command_errors.report_errors
    values: dict[str, Any] = {}
    try:
        if yaml_path:
            values.update(load_yaml_config(cls, yaml_path))
        types_ = _field_types(cls)
        for name, value in args.items():
            values[name] = _coerce(value, types_[name], name, "command line")
        return cls(**values)
    except ValueError as err:
        parser.error(str(err))
        raise  # unreachable


def config_to_dict(config) -> dict[str, Any]:
    """A JSON/YAML-ready dict of a config dataclass."""
    return dataclasses.asdict(config)
