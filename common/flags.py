"""Command-line flags declared once, as dataclass fields.

A field made with `flag(default, help, ...)` carries its help text, choices and group in its metadata; `add_flags`
turns the fields of such a dataclass into argparse arguments, so a parser is generated, never written by hand.
Other commands (the bench, tune-batch, sweep, the Linux launcher) take the flags they share with training from
the same fields, with their own defaults where they differ. The argparse type follows the default's type:

- `bool` defaulting to False is a switch (`--compile`); defaulting to True it gets `--name/--no-name`, or the
  single `negate` flag given (`--no_eval_before`);
- `tuple` defaulting to () is repeatable (`--mix a.jsonl:0.3 --mix b.jsonl:0.1`);
- `None` defaults take `type` from the metadata (`float` unless told).
"""
from __future__ import annotations

import argparse
import dataclasses
from typing import Any, Iterable, Mapping


def flag(default: Any, help: str, *, group: str = "", choices: Iterable[str] | None = None, type: type | None = None,
         negate: str | None = None, metavar: str | None = None) -> Any:
    """A dataclass field that is also a command-line flag `--<field name>`."""
    meta = {"help": help, "group": group, "choices": tuple(choices) if choices is not None else None, "type": type,
            "negate": negate, "metavar": metavar}
    return dataclasses.field(default=default, metadata=meta)


def flag_fields(cls) -> list[dataclasses.Field]:
    """The fields of `cls` that are flags (fields without help are internal)."""
    return [f for f in dataclasses.fields(cls) if "help" in f.metadata]


def _argparse_kwargs(f: dataclasses.Field, default: Any) -> tuple[list[str], dict[str, Any]]:
    meta = f.metadata
    names = [f"--{f.name}"]
    kwargs: dict[str, Any] = {"dest": f.name, "default": default, "help": meta["help"]}
    if meta.get("metavar"):
        kwargs["metavar"] = meta["metavar"]
    if isinstance(f.default, bool):
        if meta.get("negate"):
            names = [meta["negate"]]
            kwargs["action"] = "store_false"
        elif f.default:
            kwargs["action"] = argparse.BooleanOptionalAction
        else:
            kwargs["action"] = "store_true"
        return names, kwargs
    if isinstance(f.default, tuple):
        kwargs["action"] = "append"
        kwargs["default"] = None  # argparse appends to a given default list; the caller turns None into ()
        kwargs["type"] = meta.get("type") or str
        return names, kwargs
    kwargs["type"] = meta.get("type") or (type(f.default) if f.default is not None else float)
    if meta.get("choices"):
        kwargs["choices"] = meta["choices"]
    return names, kwargs


def add_flags(parser: argparse.ArgumentParser, cls, *, only: Iterable[str] | None = None,
              defaults: Mapping[str, Any] | None = None, nargs: Mapping[str, str] | None = None,
              aliases: Mapping[str, Iterable[str]] | None = None, group: str | None = None) -> list[str]:
    """Add the flag fields of dataclass `cls` to `parser` (all, or those named in `only`, in that order).

    `defaults` replaces a field's default for this command (and says so in the help); `nargs` makes a flag take
    several values (a sweep over ranks); `aliases` gives extra option strings; `group` puts every flag under one
    heading instead of each field's own group. Returns the names added.
    """
    fields = {f.name: f for f in flag_fields(cls)}
    names = list(only) if only is not None else list(fields)
    unknown = [n for n in names if n not in fields]
    if unknown:
        raise KeyError(f"{cls.__name__} has no flag(s) {unknown}")
    groups: dict[str, Any] = {}
    for name in names:
        f = fields[name]
        default = (defaults or {}).get(name, f.default)
        options, kwargs = _argparse_kwargs(f, default)
        if defaults and name in defaults and kwargs.get("action") not in ("append",):
            kwargs["help"] = f"{kwargs['help']} [this command's default: {default}]"
        if nargs and name in nargs:
            kwargs["nargs"] = nargs[name]
            kwargs["default"] = default if isinstance(default, list) else [default]
        options += list((aliases or {}).get(name, ()))
        title = group if group is not None else f.metadata.get("group") or ""
        target = parser
        if title:
            target = groups.get(title) or groups.setdefault(title, parser.add_argument_group(title))
        target.add_argument(*options, **kwargs)
    return names


def values_for(cls, namespace: argparse.Namespace | Mapping[str, Any]) -> dict[str, Any]:
    """The values of `cls`'s flag fields found in `namespace` (repeatable flags given no value become ())."""
    ns = vars(namespace) if isinstance(namespace, argparse.Namespace) else dict(namespace)
    out = {}
    for f in flag_fields(cls):
        if f.name in ns:
            value = ns[f.name]
            out[f.name] = tuple(value or ()) if isinstance(f.default, tuple) else value
    return out


def to_argv(obj, *, skip: Iterable[str] = ()) -> list[str]:
    """The command line that gives each flag field of `obj` its value where it differs from the default."""
    argv: list[str] = []
    for f in flag_fields(type(obj)):
        value = getattr(obj, f.name)
        if f.name in skip or value == f.default:
            continue
        if isinstance(f.default, bool):
            argv.append(f.metadata.get("negate") if f.metadata.get("negate") else
                        f"--{f.name}" if value else f"--no-{f.name}")
        elif isinstance(f.default, tuple):
            for item in value:
                argv += [f"--{f.name}", str(item)]
        elif value is not None:
            argv += [f"--{f.name}", str(value)]
    return argv
