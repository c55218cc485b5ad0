"""Command-line flags declared by the pydantic fields they set: one declaration of each option.

A flag's type, choices, default and help come from its field; an absent flag leaves the field
to its pydantic default (argparse never holds a copy of it). `to_argv` writes a config back as
flags (the RayJob entrypoint), and `from_args` builds the config from parsed flags.
"""

from __future__ import annotations

import argparse
import types
import typing
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import BaseModel
from pydantic.fields import FieldInfo
from pydantic_core import PydanticUndefined


@dataclass(frozen=True)
class Flag:
    """`--name` setting the (dotted) field `path` of a config; `invert` for --no-x flags."""

    path: str
    name: str | None = None
    invert: bool = False
    metavar: str | None = None
    positional: bool = False
    # The field describes its value; an inverted switch needs words for what the flag does.
    help: str | None = None

    @property
    def option(self) -> str:
        name = self.name or self.path.rsplit(".", 1)[-1].replace("_", "-")
        return name.upper() if self.positional else f"--{name}"

    @property
    def dest(self) -> str:
        return "cfg:" + self.path


def field_of(model: type[BaseModel], path: str) -> FieldInfo:
    """The pydantic field at a dotted path (through nested models)."""
    head, _, rest = path.partition(".")
    info = model.model_fields[head]
    if not rest:
        return info
    return field_of(_model_type(info.annotation), rest)


def _model_type(annotation: Any) -> type[BaseModel]:
    for arg in (annotation, *typing.get_args(annotation)):
        if isinstance(arg, type) and issubclass(arg, BaseModel):
            return arg
    raise TypeError(f"{annotation} is not a nested config")


def _scalar(annotation: Any) -> Any:
    """The non-None type of an annotation (X | None -> X)."""
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        return _scalar(args[0]) if len(args) == 1 else str
    return annotation


def default_of(info: FieldInfo) -> Any:
    if info.default is not PydanticUndefined:
        return info.default
    if info.default_factory is not None:
        return info.default_factory()  # type: ignore[call-arg]
    return PydanticUndefined


def _shown(value: Any) -> str:
    if isinstance(value, list | tuple):
        return ",".join(map(str, value))
    return str(value)


def add_flags(parser: argparse.ArgumentParser, model: type[BaseModel], flags: Sequence[Flag]):
    """Add one argument per flag, typed, described and defaulted by its field."""
    for flag in flags:
        info = field_of(model, flag.path)
        kind = _scalar(info.annotation)
        default = default_of(info)
        help_text = (flag.help or info.description or "").replace("%", "%%")
        kwargs: dict[str, Any] = {"dest": flag.dest, "help": help_text}
        if not flag.positional:
            kwargs["default"] = argparse.SUPPRESS
            kwargs["required"] = default is PydanticUndefined
        if kind is bool:
            kwargs["action"] = "store_false" if flag.invert else "store_true"
        else:
            if typing.get_origin(kind) is Literal:
                kwargs["choices"] = list(typing.get_args(kind))
            elif kind in (int, float):
                kwargs["type"] = kind
            if "choices" not in kwargs:
                shown = flag.option.lstrip("-").upper().replace("-", "_")
                kwargs["metavar"] = flag.metavar or shown
            if default is not PydanticUndefined and default is not None and not flag.positional:
                kwargs["help"] += f" (default: {_shown(default)})"
        if flag.positional:
            kwargs.pop("dest")
            parser.add_argument(flag.dest, **kwargs)
        else:
            parser.add_argument(flag.option, **kwargs)


def values(args: argparse.Namespace) -> dict[str, Any]:
    """The fields set on the command line, nested by their dotted paths."""
    out: dict[str, Any] = {}
    for key, value in vars(args).items():
        if not key.startswith("cfg:"):
            continue
        node = out
        *parents, leaf = key[4:].split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
    return out


def to_argv(config: BaseModel, flags: Sequence[Flag]) -> list[str]:
    """`config` as command-line words: positionals, then every flag whose field differs from
    its default (the inverse of parsing with `add_flags`)."""
    model = type(config)
    words: list[str] = []
    for flag in flags:
        info = field_of(model, flag.path)
        value: Any = config
        for part in flag.path.split("."):
            value = getattr(value, part)
        if flag.positional:
            words.append(_shown(value))
            continue
        if value == default_of(info) or value is None:
            continue
        if _scalar(info.annotation) is bool:
            if bool(value) != flag.invert:
                words.append(flag.option)
            continue
        words += [flag.option, _shown(value)]
    return words


# The engine's options, on every subcommand that loads a model (fields of `ModelConfig`).
MODEL_FLAGS = (
    Flag("model"),
    Flag("revision"),
    Flag("device"),
    Flag("dtype"),
    Flag("backend"),
    Flag("null_pairs_per_s"),
)
