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


def defaults_from_file(path: str, parser: argparse.ArgumentParser, *, nested: Iterable[str] = ()) -> dict[str, Any]:
    """Flag values from a YAML (or JSON) file whose keys are flag names, checked against `parser`'s flags.

    A run's `run.json` works as is (its `settings` are the flags); the keys in `nested` are dicts whose items are
    flags too (a backend's options). Every unknown key and bad value is reported in one `UserError`. The values
    become the parser's defaults, so flags given on the command line win.
    """
    from pathlib import Path

    import yaml

    from common.errors import UserError

    file = Path(path).expanduser()
    try:
        data = yaml.safe_load(file.read_text(encoding="utf-8"))
    except OSError as e:
        raise UserError(f"--config {path}: cannot read it ({e.strerror or e}); pass a YAML file of flag values") from None
    except yaml.YAMLError as e:
        raise UserError(f"--config {path}: not valid YAML ({e})") from None
    if isinstance(data, dict) and isinstance(data.get("settings"), dict):
        data = data["settings"]  # a run's run.json
    if not isinstance(data, dict):
        raise UserError(f"--config {path}: expected a mapping of flag names to values, e.g. `bs: 4`")
    for key in nested:
        data = {**{k: v for k, v in data.items() if k != key}, **(data.get(key) or {})}
    actions = {a.dest: a for a in parser._actions if a.dest not in ("help", "config")}
    values: dict[str, Any] = {}
    problems: list[str] = []
    for key, value in data.items():
        name = str(key).lstrip("-").replace("-", "_")
        if name not in actions:
            problems.append(f"{key!r} is not a flag of this command")
            continue
        values[name] = _file_value(actions[name], name, value, problems)
    if problems:
        raise UserError(f"--config {path}:\n" + "\n".join(f"  - {p}" for p in problems) +
                        "\n(keys are flag names without dashes, as in `--help`)")
    return values


def _file_value(action: argparse.Action, name: str, value: Any, problems: list[str]) -> Any:
    """`value` as the flag would hold it after parsing, or a problem."""
    if value is None:
        return None
    if isinstance(action, (argparse._StoreTrueAction, argparse._StoreFalseAction, argparse.BooleanOptionalAction)):
        if not isinstance(value, bool):
            problems.append(f"{name}: expected true or false, got {value!r}")
        return value
    if isinstance(action, argparse._AppendAction):
        items = value if isinstance(value, (list, tuple)) else [value]
        return [_file_value(argparse.Action([], name, type=action.type), name, v, problems) for v in items]
    kind = action.type
    try:
        if isinstance(value, bool) or (kind in (int, float) and not isinstance(value, (int, float, str))):
            raise ValueError
        out = kind(value) if kind is not None else value
        if kind is int and isinstance(value, float) and value != out:
            raise ValueError
    except (TypeError, ValueError):
        problems.append(f"{name}: expected {getattr(kind, '__name__', 'a value')}, got {value!r}")
        return value
    if action.choices and out not in action.choices:
        problems.append(f"{name}: {out!r} is not one of {', '.join(map(str, action.choices))}")
    return out
