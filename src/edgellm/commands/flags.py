"""CLI flags generated from a config dataclass, so each default is stated once: in the dataclass.

``add_config_flags(parser, Cls)`` adds one flag per field (``block_size`` → ``--block-size``;
a nested dataclass such as ``calib: CalibConfig`` → ``--calib-samples``, ``--calib-seq-len``, ...;
a bool → ``--x`` / ``--no-x``; a tuple → a repeatable flag). Every flag's parser default is
``argparse.SUPPRESS``: a flag the user did not give is absent from the namespace, and
``config_from_args(Cls, args)`` leaves that field to the dataclass (or to a *base* instance).
The help text comes from the field's ``metadata["help"]`` (or *helps*) and shows the dataclass
default. Field metadata may also name ``aliases`` (older flag names), ``metavar`` and ``choices``.
Two configs may share a flag (``--variant`` for ONNX and ExecuTorch): the first adds it.
Deliberately left out: positional arguments and options that are not config fields
(``--out``, ``--force``, ...), which each command adds itself.
"""

from __future__ import annotations

import argparse
import dataclasses
import types
import typing


def parse_int(value: str) -> int:
    """An integer, also written as ``100e6`` (an integral float).

    >>> parse_int("100e6")
    100000000
    """
    try:
        return int(value)
    except ValueError:
        pass
    try:
        f = float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"'{value}' is not an integer") from None
    if f != int(f):
        raise argparse.ArgumentTypeError(f"'{value}' is not an integer")
    return int(f)


def _optional(parse):
    def inner(value: str):
        return None if value.strip().lower() in ("none", "null") else parse(value)

    inner.__name__ = getattr(parse, "__name__", "value")
    return inner


def _kind(hint) -> tuple[type | None, bool]:
    """(base type, optional) of a field's type hint: ``int | None`` -> (int, True)."""
    args = typing.get_args(hint)
    optional = type(None) in args
    if args and typing.get_origin(hint) in (typing.Union, types.UnionType):
        rest = [a for a in args if a is not type(None)]
        hint = rest[0] if len(rest) == 1 else str
    origin = typing.get_origin(hint) or hint
    return origin, optional


def config_fields(cls, *, exclude=(), rename=None, prefix: str = ""):
    """``(path, dest, field, hint)`` for every leaf field of *cls*; *path* is a tuple of field names.

    >>> from edgellm.quantization import QuantConfig
    >>> ("calib", "samples") in [p for p, *_ in config_fields(QuantConfig)]
    True
    """
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        if f.name in exclude:
            continue
        hint = hints[f.name]
        name = (rename or {}).get(f.name, f.name)
        if dataclasses.is_dataclass(hint):
            for path, dest, sub, h in config_fields(hint, prefix=f"{prefix}{name}_"):
                yield (f.name, *path), dest, sub, h
        else:
            yield (f.name,), prefix + name, f, hint


def _default_of(instance, path):
    v = instance
    for p in path:
        v = getattr(v, p)
    return v


def _shown(v) -> str:
    if v is None:
        return "none"
    if isinstance(v, tuple):
        return ", ".join(map(str, v)) or "none"
    return str(v)


def add_config_flags(parser, cls, *, exclude=(), rename=None, base=None, helps=None, types=None, title=None) -> None:
    """Add one flag per field of the dataclass *cls* to *parser* (defaults SUPPRESS; help shows the default).

    *rename* maps a field to another flag name (its dest follows), *base* is an instance whose values
    the help shows (``finetune`` starts from other values than ``distill``), *helps* and *types* give
    help text and a value parser per field name when the dataclass has none.

    >>> import argparse
    >>> from edgellm.quantization import QuantConfig
    >>> p = argparse.ArgumentParser(); add_config_flags(p, QuantConfig)
    >>> config_from_args(QuantConfig, p.parse_args(["--bits", "4", "--calib-samples", "32"])).calib.samples
    32
    """
    shown_from = base if base is not None else _instance_or_none(cls)
    target = parser.add_argument_group(title) if title else parser
    taken = {a.dest for a in parser._actions}
    for path, dest, f, hint in config_fields(cls, exclude=exclude, rename=rename):
        if dest in taken:
            continue
        taken.add(dest)
        meta = f.metadata or {}
        flag = "--" + dest.replace("_", "-")
        names = [flag] + [a for a in meta.get("aliases", ()) if a not in parser._option_string_actions]
        if shown_from is not None:
            default = _default_of(shown_from, path)
        else:
            default = f.default if f.default is not dataclasses.MISSING else None
        text = (helps or {}).get(path[-1]) or meta.get("help") or path[-1].replace("_", " ")
        required = shown_from is None and f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
        text = f"{text} ({'required' if required else 'default: ' + _shown(default)})".replace("%", "%%")
        kw = {"dest": dest, "default": argparse.SUPPRESS, "help": text}
        origin, optional = _kind(hint)
        if origin is bool:
            target.add_argument(*names, action=argparse.BooleanOptionalAction, **kw)
            continue
        parse = (types or {}).get(path[-1]) or {int: parse_int, float: float}.get(origin, str)
        if optional and path[-1] not in (types or {}):
            parse = _optional(parse)
        if origin is tuple and typing.get_args(hint):     # tuple[str, ...]: a repeatable flag
            kw["action"] = "append"
        if meta.get("choices"):
            kw["choices"] = list(meta["choices"])
        if meta.get("metavar"):
            kw["metavar"] = meta["metavar"]
        target.add_argument(*names, type=parse, **kw)


def _instance_or_none(cls):
    try:
        return cls()
    except TypeError:          # a field without a default (ServeConfig.model_id is filled in by serve)
        return None


def config_from_args(cls, args, *, exclude=(), rename=None, base=None, **override):
    """The *cls* instance the parsed *args* describe: given flags over *base* (or the dataclass defaults).

    *override* sets fields directly (after the flags). Nested dataclasses are rebuilt from their own flags.
    """
    given: dict = {}
    for path, dest, _, hint in config_fields(cls, exclude=exclude, rename=rename):
        if hasattr(args, dest):
            v = getattr(args, dest)
            if isinstance(v, list):
                v = tuple(v)
            node = given
            for p in path[:-1]:
                node = node.setdefault(p, {})
            node[path[-1]] = v
    hints = typing.get_type_hints(cls)
    for name, sub in list(given.items()):
        if isinstance(sub, dict):
            start = getattr(base, name) if base is not None else hints[name]()
            given[name] = dataclasses.replace(start, **sub)
    given.update(override)
    return dataclasses.replace(base, **given) if base is not None else cls(**given)
