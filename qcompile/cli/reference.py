"""The command-line and pass references in ``docs/``, generated from the code.

``docs/cli.md`` comes from the argument parsers of :mod:`qcompile.cli.main`,
``docs/passes.md`` from the pass registry (each pass's facts, options with
their defaults and ranges, and its module docstring). A test holds the
committed files to this output; after changing a flag or a pass run::

    python -m qcompile.cli.reference docs/
"""

from __future__ import annotations

import argparse
import inspect
import sys
from pathlib import Path


def cli_reference() -> str:
    """Markdown for every command and flag, in the parsers' order."""
    from qcompile.cli.defaults import EXIT_STATUS
    from qcompile.cli.main import _build_parsers

    parts = ["# Command-line reference", "",
             "Generated from the argument parser (`python -m qcompile.cli.reference docs/`).", "",
             EXIT_STATUS, ""]
    for command, parser in _build_parsers().items():
        usage = " ".join(parser.format_usage().split())
        parts += [f"## `qcompile {'' if command == 'compile' else command}`".replace("`qcompile `", "`qcompile`"),
                  "", parser.description or "", "", f"    {usage.removeprefix('usage: ')}", "",
                  "| argument | meaning |", "|---|---|"]
        for action in parser._actions:
            if isinstance(action, argparse._HelpAction):
                continue
            names = ", ".join(action.option_strings) or action.dest.upper()
            if action.metavar and action.option_strings:
                names += f" {action.metavar}"
            elif action.choices and action.option_strings:
                names += " {" + ",".join(map(str, action.choices)) + "}"
            text = (action.help or "").replace("%%", "%").replace("|", "\\|")
            if action.required:
                text += " (required)"
            parts.append(f"| `{names}` | {text} |")
        parts.append("")
    return "\n".join(parts)


def passes_reference() -> str:
    """Markdown for every built-in pass and named pipeline."""
    from qcompile.pipeline import named_pipelines, registered_passes
    from qcompile.pipeline.parser import format_value

    parts = ["# Pass reference", "",
             "Generated from the pass registry and the passes' docstrings "
             "(`python -m qcompile.cli.reference docs/`). Options are written `pass{key=value ...}`.", ""]
    named = named_pipelines()
    if named:
        parts += ["## Named pipelines", "", "| name | passes | what for |", "|---|---|---|"]
        parts += [f"| `{name}` | `{text}` | {about} |" for name, (text, about) in named.items()]
        parts.append("")
    builtin = {name: cls for name, cls in registered_passes().items() if cls.__module__.startswith("qcompile.passes.")}
    for name, cls in builtin.items():  # plugins registered in this process are not the reference
        parts += [f"## `{name}`", "", cls.summary(), "",
                  f"requires: {', '.join(cls.requires) or '-'}; provides: {', '.join(cls.provides) or '-'}"
                  + (f"; invalidates: {', '.join(cls.invalidates)}" if cls.invalidates else "")
                  + (f"; cannot run once the graph is: {', '.join(cls.forbids)}" if cls.forbids else ""), ""]
        options = cls.options()
        if options:
            parts += ["| option | type | default | range |", "|---|---|---|---|"]
            for f in options:
                kind = getattr(f.type, "__name__", str(f.type)).replace("|", "\\|")
                bounds = f.metadata.get("bounds")
                default = format_value(f.default if f.default is not f.default_factory else f.default_factory())
                parts.append(f"| `{f.name.replace('_', '-')}` | `{kind}` | `{default}` | "
                             f"{bounds.describe() if bounds is not None else '-'} |")
            parts.append("")
        doc = inspect.getdoc(sys.modules[cls.__module__]) or ""
        if doc:
            parts += ["<details><summary>module documentation</summary>", "", "```text", doc, "```", "",
                      "</details>", ""]
    return "\n".join(parts)


def write(folder: str | Path) -> list[Path]:
    folder = Path(folder)
    written = []
    for name, text in (("cli.md", cli_reference()), ("passes.md", passes_reference())):
        (folder / name).write_text(text)
        written.append(folder / name)
    return written


if __name__ == "__main__":
    for path in write(sys.argv[1] if len(sys.argv) > 1 else "docs"):
        print(f"wrote {path}")
