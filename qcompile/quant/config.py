"""Quantization configs: presets, per-layer overrides, skip lists, config files.

The presets reproduce PyTorch's own quantization defaults, so a result can be
compared with PyTorch's one for one:

===========  ===========================================  =================================  ========
preset       activations                                  weights                            engine
===========  ===========================================  =================================  ========
default      min/max, uint8 [0,127], affine                min/max, int8, symmetric           x86
x86          histogram (L2-optimal range), uint8 [0,127]   per-channel min/max, int8, sym     x86
fbgemm       same as x86                                   same as x86                        fbgemm
qnnpack      histogram, uint8 [0,255]                      min/max, int8, symmetric           qnnpack
===========  ===========================================  =================================  ========

Without a preset qcompile uses ``x86``, the most accurate of the four here.

A config file (TOML or JSON) picks a preset and adjusts it::

    preset = "x86"
    skip = ["classifier.*", "op:hardswish"]     # stay float (node names, module paths, or op:TYPE)

    [[override]]
    match = "features.0.*"                      # node name / module path glob, or op:TYPE
    activation = { kind = "minmax" }
    weight = { per_channel = false }
"""

from __future__ import annotations

import dataclasses
import difflib
import fnmatch
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from qcompile.backends.torch_ao.tensors import TORCH_NAMES
from qcompile.compat import tomllib
from qcompile.errors import QCompileError
from qcompile.ir.node import Node
from qcompile.ir.quant_types import ObserverSpec


@dataclass(frozen=True)
class QConfig:
    """Observer specs for a layer's output activation and its weight."""

    activation: ObserverSpec
    weight: ObserverSpec


_ACT_7BIT = dict(dtype="uint8", reduce_range=True)
_W_SYM = dict(dtype="int8", symmetric=True)

PRESETS: dict[str, tuple[QConfig, str]] = {
    "default": (QConfig(ObserverSpec("minmax", **_ACT_7BIT), ObserverSpec("minmax", **_W_SYM)), "x86"),
    "x86": (QConfig(ObserverSpec("histogram", **_ACT_7BIT),
                    ObserverSpec("minmax", per_channel=True, **_W_SYM)), "x86"),
    "fbgemm": (QConfig(ObserverSpec("histogram", **_ACT_7BIT),
                       ObserverSpec("minmax", per_channel=True, **_W_SYM)), "fbgemm"),
    "qnnpack": (QConfig(ObserverSpec("histogram", dtype="uint8"), ObserverSpec("minmax", **_W_SYM)),
                "qnnpack"),
}


def matches_pattern(node: Node, pattern: str) -> bool:
    """Whether ``node`` is what ``pattern`` names: ``op:conv2d``, or a glob over its name or module path."""
    if pattern.startswith("op:"):
        return node.op == pattern[3:]
    candidates = [node.name, node.source.module_path]
    return any(c and fnmatch.fnmatchcase(c, pattern) for c in candidates)


@dataclass
class QuantConfig:
    """The quantization config of a run: a preset plus overrides and skips.

    Attributes:
        preset: Name of the preset it started from.
        qconfig: The preset's activation/weight specs.
        engine: torch's quantized engine for the native backend.
        overrides: (pattern, QConfig) pairs; the last match wins.
        skip: Patterns of nodes that stay float.
    """

    preset: str = "x86"
    qconfig: QConfig = field(default_factory=lambda: PRESETS["x86"][0])
    engine: str = "x86"
    overrides: list[tuple[str, QConfig]] = field(default_factory=list)
    skip: list[str] = field(default_factory=list)

    @classmethod
    def from_preset(cls, name: str) -> QuantConfig:
        if name not in PRESETS:
            close = difflib.get_close_matches(name, list(PRESETS), n=1)
            raise QCompileError(
                f"unknown preset {name!r}",
                hint=(f"did you mean {close[0]!r}? " if close else "") + f"presets: {', '.join(PRESETS)}",
            )
        qconfig, engine = PRESETS[name]
        return cls(name, qconfig, engine)

    def qconfig_for(self, node: Node) -> QConfig | None:
        """The node's QConfig, or ``None`` if it is skipped (stays float)."""
        if any(matches_pattern(node, p) for p in self.skip):
            return None
        chosen = self.qconfig
        for pattern, qconfig in self.overrides:
            if matches_pattern(node, pattern):
                chosen = qconfig
        return chosen

    def check_patterns(self, nodes: list[Node]) -> None:
        """Refuse skip/override patterns that match no node: they are usually typos."""
        for pattern in self.skip + [p for p, _ in self.overrides]:
            if not any(matches_pattern(n, pattern) for n in nodes):
                names = [n.name for n in nodes] + [n.source.module_path for n in nodes if n.source.module_path]
                close = difflib.get_close_matches(pattern, names, n=1)
                raise QCompileError(
                    f"pattern {pattern!r} in the quantization config matches no node",
                    hint=(f"did you mean {close[0]!r}? " if close else "")
                    + "patterns match node names, module paths (globs) or op:TYPE; "
                    "see 'qcompile inspect MODEL'",
                )

    def describe(self) -> str:
        parts = [f"preset {self.preset} (engine {self.engine})"]
        if self.skip:
            parts.append("skip " + ", ".join(self.skip))
        if self.overrides:
            parts.append(f"{len(self.overrides)} overrides")
        return "; ".join(parts)


def _spec_with(base: ObserverSpec, changes: dict[str, Any], where: str) -> ObserverSpec:
    fields = {f.name for f in dataclasses.fields(ObserverSpec)}
    unknown = set(changes) - fields
    if unknown:
        raise QCompileError(f"{where}: unknown observer settings {sorted(unknown)}",
                            hint=f"settings: {', '.join(sorted(fields))}")
    if changes.get("dtype") in TORCH_NAMES:  # torch's names for the containers, as PyTorch's configs write them
        changes = changes | {"dtype": TORCH_NAMES[changes["dtype"]]}
    try:
        return dataclasses.replace(base, **changes)
    except (ValueError, TypeError) as exc:
        raise QCompileError(f"{where}: {exc}") from None


def _expect(value: Any, kind: type, where: str, form: str) -> None:
    if not isinstance(value, kind):
        raise QCompileError(f"{where} is {value!r} ({type(value).__name__})", hint=f"write {form}")


def load_quant_config(path: str | Path | None = None, *, preset: str | None = None,
                      skip: list[str] | None = None) -> QuantConfig:
    """Build a QuantConfig from a TOML/JSON file and/or command-line settings.

    Command-line settings win over the file: ``preset`` replaces the file's
    preset, ``skip`` patterns are added to the file's.
    """
    data: dict[str, Any] = {}
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise QCompileError(f"quantization config {path} does not exist")
        try:
            text = path.read_text(encoding="utf-8")
            data = json.loads(text) if path.suffix == ".json" else tomllib.loads(text)
        except (json.JSONDecodeError, tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
            raise QCompileError(f"quantization config {path} is not valid "
                                f"{'JSON' if path.suffix == '.json' else 'TOML'}: {exc}") from None
        if not isinstance(data, dict):
            raise QCompileError(f"quantization config {path} holds a {type(data).__name__}, not a table of settings",
                                hint='e.g. preset = "x86" and skip = ["classifier.*"]')
        unknown = set(data) - {"preset", "skip", "override"}
        if unknown:
            raise QCompileError(f"{path}: unknown keys {sorted(unknown)}",
                                hint="keys: preset, skip, override (observer settings such as per_channel go in "
                                "an override's activation or weight table)")
        _expect(data.get("preset", "x86"), str, f"{path}: preset", 'a preset name in quotes, e.g. preset = "x86"')
        _expect(data.get("skip", []), list, f"{path}: skip", 'a list of patterns, e.g. skip = ["conv.*"]')
        for pattern in data.get("skip", []):
            _expect(pattern, str, f"{path}: skip", 'a list of patterns, e.g. skip = ["conv.*"]')
        _expect(data.get("override", []), list, f"{path}: override", "a list of [[override]] tables")
    config = QuantConfig.from_preset(preset or data.get("preset", "x86"))
    config.skip = list(data.get("skip", [])) + list(skip or [])
    for i, entry in enumerate(data.get("override", [])):
        where = f"{path}: override {i + 1}"
        _expect(entry, dict, where, "a table with match, activation and weight")
        if "match" not in entry:
            raise QCompileError(f"{where} has no 'match' pattern")
        extra = set(entry) - {"match", "activation", "weight"}
        if extra:
            raise QCompileError(f"{where}: unknown keys {sorted(extra)}", hint="keys: match, activation, weight")
        _expect(entry["match"], str, f"{where}: match", 'a pattern in quotes, e.g. match = "features.0.*"')
        for key in ("activation", "weight"):
            _expect(entry.get(key, {}), dict, f"{where}: {key}", f'a table, e.g. {key} = {{ kind = "minmax" }}')
        qconfig = QConfig(_spec_with(config.qconfig.activation, entry.get("activation", {}), where),
                          _spec_with(config.qconfig.weight, entry.get("weight", {}), where))
        config.overrides.append((entry["match"], qconfig))
    return config
