"""Pipeline strings: parsing, checking the order of facts, canonical printing.

Grammar::

    pipeline := item ("," item)*
    item     := NAME ["{" (KEY "=" VALUE)* "}"]

Options are separated by spaces; a value may hold commas (``bits=4,8``).
Keys are kebab-case and map to snake-case fields. A NAME that is a named
pipeline expands in place. ``str(pipeline)`` gives the canonical string, and
parsing it again gives an equal pipeline.

The order is checked here, before any data is touched: a pass whose required
fact no earlier pass provides gets that fact's default provider inserted in
front of it (the expansion is reported), or the parse fails with the position
of the pass.
"""

from __future__ import annotations

import dataclasses
import difflib
import re
import types
import typing
from dataclasses import dataclass
from typing import Any

from qcompile.errors import PipelineError
from qcompile.pipeline.pass_base import Pass, first_providing
from qcompile.pipeline.registry import (
    default_provider,
    named_pipelines,
    pass_class,
    providers_of,
    registered_passes,
)

_NAME = re.compile(r"[a-z][a-z0-9-]*")


@dataclass(frozen=True)
class Pipeline:
    """An ordered list of configured passes.

    Attributes:
        passes: The passes, in run order.
        inserted: Indices of passes that were inserted as default providers.
    """

    passes: tuple[Pass, ...]
    inserted: tuple[int, ...] = dataclasses.field(default=(), compare=False)

    def __str__(self) -> str:
        return ",".join(format_pass(p) for p in self.passes)

    def __iter__(self):
        return iter(self.passes)

    def __len__(self) -> int:
        return len(self.passes)

    def provides(self, fact: str) -> bool:
        """Whether a pass of the pipeline provides ``fact`` (e.g. ``STATICALLY_CONVERTED``)."""
        return first_providing(self.passes, fact) is not None

    def provider(self, *facts: str) -> Pass | None:
        """The first pass that provides any of ``facts``."""
        return first_providing(self.passes, *facts)


def _caret_error(text: str, start: int, end: int, message: str, hint: str | None = None) -> PipelineError:
    marker = " " * start + "^" * max(1, end - start)
    return PipelineError(f"{message}\n    {text}\n    {marker}", hint=hint)


def _kebab(name: str) -> str:
    return name.replace("_", "-")


def format_value(value: Any) -> str:
    """Canonical text of an option value."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return "none"
    if isinstance(value, (tuple, list)):
        return ",".join(format_value(v) for v in value)
    return str(value)


def format_pass(p: Pass) -> str:
    """``name{key=value ...}`` with only the options that differ from their defaults."""
    parts = []
    for f in p.options():
        value = getattr(p, f.name)
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
        if value != default:
            parts.append(f"{_kebab(f.name)}={format_value(value)}")
    return p.name + ("{" + " ".join(parts) + "}" if parts else "")


def _convert(raw: str, annotation: Any) -> Any:
    """Parse option text ``raw`` as ``annotation``; raise ValueError with the expected form."""
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin in (typing.Union, types.UnionType):
        if raw == "none" and type(None) in args:
            return None
        errors = []
        for option in (a for a in args if a is not type(None)):
            try:
                return _convert(raw, option)
            except ValueError as exc:
                errors.append(str(exc))
        raise ValueError(" or ".join(errors))
    if origin is typing.Literal:
        if raw not in [str(a) for a in args]:
            raise ValueError("one of " + ", ".join(str(a) for a in args))
        return next(a for a in args if str(a) == raw)
    if origin is tuple:
        item = args[0] if args else str
        return tuple(_convert(part, item) for part in raw.split(",") if part != "")
    if annotation is bool:
        if raw.lower() in ("true", "1", "yes", "on"):
            return True
        if raw.lower() in ("false", "0", "no", "off"):
            return False
        raise ValueError("true or false")
    if annotation is int:
        try:
            return int(raw)
        except ValueError:
            raise ValueError("an integer") from None
    if annotation is float:
        try:
            return float(raw)
        except ValueError:
            raise ValueError("a number") from None
    return raw


@dataclass
class _Item:
    name: str
    start: int
    end: int
    options: list[tuple[str, str, int, int]]  # key, raw value, start, end


def _tokenize(text: str) -> list[_Item]:
    items: list[_Item] = []
    i, n = 0, len(text)
    while True:
        while i < n and text[i] == " ":
            i += 1
        match = _NAME.match(text, i)
        if not match:
            raise _caret_error(text, i, i + 1, "expected a pass name",
                               hint="pass names are kebab-case: fuse, bias-correct")
        item = _Item(match.group(), match.start(), match.end(), [])
        i = match.end()
        if i < n and text[i] == "{":
            close = text.find("}", i)
            if close < 0:
                raise _caret_error(text, i, n, "unclosed '{'", hint="close the options with '}'")
            for opt in re.finditer(r"\S+", text[i + 1 : close]):
                start = i + 1 + opt.start()
                key, eq, value = opt.group().partition("=")
                if not eq or not key:
                    raise _caret_error(text, start, start + len(opt.group()),
                                       f"option {opt.group()!r} is not key=value")
                item.options.append((key, value, start, start + len(opt.group())))
            i = close + 1
        items.append(item)
        while i < n and text[i] == " ":
            i += 1
        if i >= n:
            return items
        if text[i] != ",":
            raise _caret_error(text, i, i + 1, f"unexpected {text[i]!r}",
                               hint="separate passes with ',' and put options in {...}")
        i += 1


def _instantiate(text: str, item: _Item) -> Pass:
    cls = pass_class(item.name)
    if cls is None:
        known = list(registered_passes()) + list(named_pipelines())
        close = difflib.get_close_matches(item.name, known, n=1)
        hint = f"did you mean '{close[0]}'?" if close else "run 'qcompile passes' to list them"
        raise _caret_error(text, item.start, item.end, f"unknown pass '{item.name}'", hint=hint)
    fields = {f.name: f for f in cls.options()}
    hints = typing.get_type_hints(cls)
    values: dict[str, Any] = {}
    for key, raw, start, end in item.options:
        field_name = key.replace("-", "_")
        if field_name not in fields:
            close = difflib.get_close_matches(field_name, list(fields), n=1)
            valid = ", ".join(_kebab(f) for f in fields) or "none"
            hint = (f"did you mean '{_kebab(close[0])}'? " if close else "") + f"options of '{cls.name}': {valid}"
            raise _caret_error(text, start, start + len(key), f"unknown option '{key}' for pass '{cls.name}'", hint=hint)
        if field_name in values:
            raise _caret_error(text, start, end, f"option '{key}' of '{cls.name}' is given twice",
                               hint="give each option once")
        try:
            values[field_name] = _convert(raw, hints[field_name])
        except ValueError as exc:
            raise _caret_error(text, start, end, f"bad value {raw!r} for option '{key}' of '{cls.name}'",
                               hint=f"expected {exc}") from None
    try:
        return cls(**values)
    except (ValueError, TypeError) as exc:
        raise _caret_error(text, item.start, item.end, f"invalid options for '{cls.name}': {exc}") from None


def parse_pipeline(text: str, facts: set[str] | frozenset[str] = frozenset({"lowered"})) -> Pipeline:
    """Parse and order-check ``text``.

    Args:
        text: A pipeline string or the name of a named pipeline.
        facts: Facts true of the graph before the first pass.

    Raises:
        PipelineError: with a caret under the offending token.
    """
    named = named_pipelines()
    parsed: list[tuple[Pass, _Item, str]] = []
    for item in _tokenize(text.strip()):
        if item.name in named and pass_class(item.name) is None:
            if item.options:
                raise _caret_error(text, item.start, item.end,
                                   f"'{item.name}' is a named pipeline and takes no options",
                                   hint=f"write it out instead: {named[item.name][0]}")
            inner = named[item.name][0]
            parsed += [(_instantiate(inner, sub), item, text) for sub in _tokenize(inner)]
        else:
            parsed.append((_instantiate(text, item), item, text))
    return _order(parsed, set(facts))


def _order(parsed: list[tuple[Pass, _Item, str]], facts: set[str]) -> Pipeline:
    passes: list[Pass] = []
    inserted: list[int] = []
    provided_by = {fact: "the input" for fact in facts}

    def place(p: Pass, item: _Item, text: str, chain: tuple[str, ...]) -> None:
        for fact in p.forbids:
            if fact in facts:
                raise _caret_error(text, item.start, item.end,
                                   f"'{p.name}' cannot run after '{provided_by[fact]}': the graph is {fact} by then",
                                   hint="a pipeline quantizes once, at its end (e.g. fuse,calibrate,convert); "
                                   "calibration and the other float passes go before it")
        for fact in p.requires:
            if fact in facts:
                continue
            provider = default_provider(fact)
            if provider is None or provider in chain:
                others = providers_of(fact)
                hint = (f"add {' or '.join(repr(o) for o in others)} before it" if others
                        else "no registered pass provides it")
                raise _caret_error(text, item.start, item.end,
                                   f"'{p.name}' requires '{fact}', which no earlier pass provides",
                                   hint=hint)
            place(pass_class(provider)(), item, text, chain + (p.name,))
            inserted.append(len(passes) - 1)
        passes.append(p)
        facts.difference_update(p.invalidates)
        facts.update(p.provides)
        provided_by.update({fact: p.name for fact in p.provides})

    for p, item, text in parsed:
        place(p, item, text, ())
    return Pipeline(tuple(passes), tuple(inserted))
