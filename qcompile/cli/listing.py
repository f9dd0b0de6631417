"""``qcompile passes`` and ``qcompile zoo``: what is registered, and what is bundled."""

from __future__ import annotations

import argparse

from qcompile.errors import QCompileError


def list_passes(args: argparse.Namespace) -> int:
    """Every registered pass with its facts and options (or one pass in full), then the named pipelines."""
    import inspect

    from qcompile.pipeline import load_plugin, named_pipelines, registered_passes
    from qcompile.pipeline.parser import format_value

    for plugin in args.plugin:
        load_plugin(plugin)
    passes = registered_passes()
    if args.name:
        if args.name not in passes:
            raise QCompileError(f"no pass named {args.name!r}", hint="run 'qcompile passes' to list them")
        cls = passes[args.name]
        print(f"{cls.name}  (requires: {', '.join(cls.requires) or '-'}; "
              f"provides: {', '.join(cls.provides) or '-'})\n")
        print(inspect.getdoc(__import__(cls.__module__, fromlist=["_"])) or inspect.getdoc(cls))
        return 0
    width = max(len(n) for n in passes)
    print("passes:")
    for name, cls in passes.items():
        print(f"  {name:<{width}}  {cls.summary()}")
        print(f"  {'':<{width}}  requires: {', '.join(cls.requires) or '-'}; "
              f"provides: {', '.join(cls.provides) or '-'}")
        for f in cls.options():
            kind = getattr(f.type, "__name__", str(f.type))
            bounds = f.metadata.get("bounds")
            limits = f" ({bounds.describe()})" if bounds is not None else ""
            print(f"  {'':<{width}}    {f.name.replace('_', '-')}: {kind} = {format_value(f.default)}{limits}")
    named = named_pipelines()
    if named:
        print("named pipelines:")
        for name, (text, description) in named.items():
            print(f"  {name:<{width}}  {text}" + (f"   # {description}" if description else ""))
    return 0


def list_zoo() -> int:
    """The bundled models, their input shapes and the packages their weights come in."""
    from qcompile.zoo import ZOO

    for entry in ZOO.values():
        shape = ",".join(str(d) for d in entry.input_shape)
        print(f"zoo:{entry.name:<14} input {shape:<12} {entry.description} (package {entry.package})")
    return 0
