"""Loading the models users have, from the forms they have them in.

* ``package.module:factory`` (plus ``--weights state_dict.pt``): the factory
  is imported and called with no arguments.
* A TorchScript file (``torch.jit.save``).
* A ``torch.export`` archive (``torch.export.save``, usually ``.pt2``).
* A fully pickled module (``torch.save(model)``): loading a pickle runs
  arbitrary code, so it is refused unless the user passes ``trust_pickle``.
* ``zoo:NAME``: a model bundled with qcompile's dependencies (see
  :mod:`qcompile.zoo`).

TorchScript files and export archives are lowered through the exported
program's graph (ATen ops), which :mod:`qcompile.frontend.raise_aten` turns
back into module-level ops.
"""

from __future__ import annotations

import contextlib
import importlib
import logging
import pickle
import sys
import warnings
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from qcompile.errors import LoweringError, QCompileError
from qcompile.frontend.functionalize import functional


@dataclass
class LoadedModel:
    """A model ready for lowering.

    Attributes:
        module: The model (an fx GraphModule for TorchScript / export inputs).
        source: What it was loaded from, for messages and reports.
        form: ``factory``, ``torchscript``, ``export``, ``pickle`` or ``zoo``.
        example_inputs: Inputs known from the file itself (export archives,
            zoo models), else ``None``.
        notes: Things the user should know (e.g. the form was converted).
    """

    module: nn.Module
    source: str
    form: str
    example_inputs: tuple | None = None
    notes: list[str] = field(default_factory=list)


def _zip_names(path: Path) -> list[str] | None:
    try:
        if not zipfile.is_zipfile(path):
            return None
        with zipfile.ZipFile(path) as archive:
            return archive.namelist()
    except (zipfile.BadZipFile, UnicodeDecodeError, ValueError, EOFError) as exc:
        raise QCompileError(f"{path} is a damaged zip archive ({_first_line(exc)})",
                            hint="save the model again; torch.save, torch.jit.save and torch.export.save all "
                            "write zip archives") from None
    except OSError as exc:
        raise QCompileError(f"cannot read {path}: {exc.strerror or exc}") from None


def detect_form(path: Path) -> str:
    """``torchscript``, ``export`` or ``pickle`` for a model file, by its contents."""
    names = _zip_names(path)
    if names is None:
        return "pickle"  # legacy (non-zip) torch.save format, or not a model at all
    if any(n.endswith("archive_format") or "/models/" in n and n.endswith(".json") for n in names):
        return "export"
    if any(n.endswith("constants.pkl") or "/code/" in n for n in names):
        return "torchscript"
    return "pickle"


_NOT_A_MODEL_HINT = ("give a torch.export archive (.pt2), package.module:factory with --weights, a TorchScript "
                     "file or a pickled module (these two with --trust-pickle)")


def _load_state_dict(path: Path) -> dict[str, torch.Tensor]:
    if not path.is_file():
        raise QCompileError(f"weights file {path} does not exist" if not path.exists() else
                            f"weights {path} is not a file")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - a damaged file raises anything from the unpickler or the zip reader
        raise QCompileError(
            f"{path} is not a readable state-dict file: {_first_line(exc)}",
            hint="save weights with torch.save(model.state_dict(), path)",
        ) from None
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]  # a training checkpoint
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise QCompileError(
            f"{path} does not hold a state dict (found {type(state).__name__})",
            hint="save weights with torch.save(model.state_dict(), path)",
        )
    return state


def load_factory(spec: str, weights: str | None = None) -> LoadedModel:
    """Import ``package.module:factory``, call it, and load ``weights`` into the result."""
    module_name, _, attr = spec.partition(":")
    if "" not in sys.path and str(Path.cwd()) not in sys.path:
        sys.path.append(str(Path.cwd()))  # like `python -m`: the user's own modules import
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise QCompileError(
            f"cannot import {module_name!r} (from {spec!r}): {exc}",
            hint="MODEL is a file path or package.module:factory; is the package installed?",
        ) from None
    except (Exception, SystemExit) as exc:  # noqa: BLE001 - the user's module runs on import
        raise QCompileError(
            f"importing {module_name!r} (from {spec!r}) failed: {_raised(exc)}",
            hint=f"run 'python -c \"import {module_name}\"' to see the whole error",
        ) from None
    factory = module
    for part in attr.split("."):
        factory = getattr(factory, part, None)
        if factory is None:
            raise QCompileError(f"{module_name!r} has no attribute {attr!r}",
                                hint="name a class or function that builds the model")
    model = _call_factory(spec, factory, seed=0)
    if not isinstance(model, nn.Module):
        raise QCompileError(f"{spec}() returned {type(model).__name__}, not an nn.Module")
    if weights is not None:
        state = _load_state_dict(Path(weights))
        result = model.load_state_dict(state, strict=False)
        if result.missing_keys or result.unexpected_keys:
            raise QCompileError(
                f"weights {weights} do not fit {spec}: "
                f"{len(result.missing_keys)} missing keys (e.g. {result.missing_keys[:3]}), "
                f"{len(result.unexpected_keys)} unexpected (e.g. {result.unexpected_keys[:3]})",
                hint="check that the weights belong to this architecture",
            )
    notes = []
    if weights is None and _depends_on_the_seed(model, _call_factory(spec, factory, seed=1)):
        notes.append(f"{spec} has no --weights: its weights are the factory's random initialization (seed 0, "
                     "the same on every run)")
    return LoadedModel(model.eval(), spec, "factory", notes=notes)


def _call_factory(spec: str, factory, seed: int):
    """``factory()`` under ``seed``, leaving the caller's random stream as it was."""
    try:
        with torch.random.fork_rng(devices=[]):
            # without --weights the model is its random initialization: seeded, so that compiling it and
            # comparing it later (two runs) see the same weights
            torch.manual_seed(seed)
            return factory()
    except (Exception, SystemExit) as exc:  # noqa: BLE001 - the user's factory can raise anything
        raise QCompileError(
            f"calling {spec}() failed: {_raised(exc)}",
            hint="the factory is called with no arguments; wrap it in a function that "
            "supplies them",
        ) from exc


def _depends_on_the_seed(model: nn.Module, other: object) -> bool:
    """Whether a second build under another seed has other weights: random ones, not a factory's own (loaded)."""
    if not isinstance(other, nn.Module):
        return True
    mine, theirs = model.state_dict(), other.state_dict()
    return mine.keys() != theirs.keys() or any(
        not torch.equal(value, theirs[key]) for key, value in mine.items() if isinstance(value, torch.Tensor))


_RESAVE_EXPORT_HINT = "save it again with torch.export.save(torch.export.export(model, inputs), path)"


def load_file(path: Path, *, trust_pickle: bool = False,
              example_inputs: tuple | None = None) -> LoadedModel:
    """Load a TorchScript file, an export archive or (if trusted) a pickled module."""
    form = detect_form(path)
    if form == "export":
        program = _load_export(path, trust_pickle)
        try:  # a damaged archive can load and still hold a program that does not hang together
            inputs = getattr(program, "example_inputs", None)
            example = tuple(inputs[0]) if inputs else None
            module = functional(program).module()
        except Exception as exc:  # noqa: BLE001 - torch raises anything on an inconsistent program
            raise QCompileError(f"{path} is a torch.export archive whose program is damaged: {_first_line(exc)}",
                                hint=_RESAVE_EXPORT_HINT) from None
        return LoadedModel(module, str(path), "export", example)
    if form == "torchscript":
        if not trust_pickle:
            raise QCompileError(
                f"{path} is TorchScript: loading it runs the TorchScript code and unpickles the objects stored "
                "in the file, so qcompile does not load it by default",
                hint="if you trust this file, pass --trust-pickle; better, save the model with "
                "torch.export.save (.pt2), which loads without running code from the file",
            )
        try:
            scripted = torch.jit.load(str(path), map_location="cpu")
        except Exception as exc:
            raise QCompileError(f"{path} looks like TorchScript but does not load: {_first_line(exc)}") from None
        if example_inputs is None:
            raise QCompileError(
                f"{path} is TorchScript, which is converted through torch.export and needs "
                "example inputs",
                hint="pass --input-shape, e.g. --input-shape 1,3,224,224",
            )
        from torch._export.converter import TS2EPConverter

        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                program = TS2EPConverter(scripted, tuple(example_inputs)).convert()
        except Exception as exc:
            raise LoweringError(
                f"converting TorchScript {path} to an exported program failed: {exc}",
                hint="export the original model with torch.export instead",
            ) from None
        return LoadedModel(functional(program).module(), str(path), "torchscript", tuple(example_inputs),
                           notes=["converted from TorchScript through torch.export"])
    return _load_pickle(path, trust_pickle)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text.splitlines()[0] if text else '(no message)'}"


def _raised(exc: BaseException) -> str:
    if isinstance(exc, SystemExit):
        return f"it called sys.exit({exc.code!r})"
    return _first_line(exc)


@contextlib.contextmanager
def _quiet_loggers(*names: str):
    """torch's export loader logs a traceback before raising; the raised error is reported instead."""
    loggers = [logging.getLogger(name) for name in names]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        for logger, level in zip(loggers, levels, strict=True):
            logger.setLevel(level)


def _load_export(path: Path, trust_pickle: bool):
    """``torch.export.load``, holding its unpickling to tensors and plain data unless the user trusts the file."""
    from qcompile.frontend.safe_unpickling import UnsafeArchive, tensors_only_unpickling

    guard = contextlib.nullcontext() if trust_pickle else tensors_only_unpickling()
    try:
        with guard, warnings.catch_warnings(), _quiet_loggers("torch.export", "torch._export"):
            warnings.simplefilter("ignore")
            return torch.export.load(str(path))
    except UnsafeArchive as exc:
        raise QCompileError(
            f"{path} is a torch.export archive that stores pickled objects beyond tensors ({exc}); loading "
            "them runs code named in the file, so qcompile does not load it by default",
            hint="if you trust this file, pass --trust-pickle",
        ) from None
    except Exception as exc:
        raise QCompileError(f"{path} looks like a torch.export archive but does not load: {_first_line(exc)}",
                            hint=_RESAVE_EXPORT_HINT) from None


def _load_pickle(path: Path, trust_pickle: bool) -> LoadedModel:
    with open(path, "rb") as f:
        head = f.read(8)
    if head.startswith(b"PK"):
        if not zipfile.is_zipfile(path):
            raise QCompileError(f"{path} is a truncated or damaged zip archive", hint=_NOT_A_MODEL_HINT)
    elif not head.startswith(b"\x80"):  # torch.save's legacy format is a bare pickle (protocol 2+)
        raise QCompileError(f"{path} is not a file that torch.save, torch.jit.save or torch.export.save wrote "
                            f"(it starts with {head!r})", hint=_NOT_A_MODEL_HINT)
    try:
        content: Any = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        if "weights_only" not in str(exc) and "Unsupported global" not in str(exc):
            raise QCompileError(f"{path} is not a model file qcompile can read: {_first_line(exc)}",
                                hint=_NOT_A_MODEL_HINT) from None
        if not trust_pickle:
            raise QCompileError(
                f"{path} is a pickled Python object; loading it runs whatever code the "
                "pickle names, so qcompile does not load it by default",
                hint="if you trust this file, pass --trust-pickle; better, save the model "
                "as a state_dict and name its architecture (package.module:factory --weights)",
            ) from None
        try:
            content = torch.load(path, map_location="cpu", weights_only=False)
        except (Exception, SystemExit) as exc2:  # noqa: BLE001 - the pickle runs code that can raise anything
            raise QCompileError(
                f"unpickling {path} failed: {_raised(exc2)}",
                hint="the classes the pickle refers to must be importable here",
            ) from None
    except Exception as exc:  # noqa: BLE001 - a damaged file raises anything from the unpickler or the zip reader
        raise QCompileError(f"{path} is not a model file qcompile can read (truncated, corrupt or another "
                            f"format): {_first_line(exc)}", hint=_NOT_A_MODEL_HINT) from None
    if isinstance(content, nn.Module):
        return LoadedModel(content.eval(), str(path), "pickle")
    if isinstance(content, dict):
        raise QCompileError(
            f"{path} holds a state dict (weights only), not a model",
            hint=f"name the architecture and pass the file as weights: "
            f"qcompile package.module:factory --weights {path}",
        )
    raise QCompileError(f"{path} holds a {type(content).__name__}, not a model", hint=_NOT_A_MODEL_HINT)


def load_model(spec: str, *, weights: str | None = None, trust_pickle: bool = False,
               example_inputs: tuple | None = None) -> LoadedModel:
    """Load the model named by ``spec`` (a path, ``package.module:factory`` or ``zoo:NAME``)."""
    if spec.startswith("zoo:"):
        from qcompile.zoo import load_zoo_model

        return load_zoo_model(spec.removeprefix("zoo:"))
    path = Path(spec)
    if path.exists():
        if path.is_dir():
            raise QCompileError(f"{spec} is a directory, not a model file")
        if weights is not None:
            raise QCompileError(
                "--weights goes with package.module:factory, not with a model file",
                hint="a model file already holds its weights",
            )
        return load_file(path, trust_pickle=trust_pickle, example_inputs=example_inputs)
    if ":" in spec and not spec.endswith((".pt", ".pth", ".pt2")):
        return load_factory(spec, weights)
    raise QCompileError(
        f"model {spec!r} is neither an existing file nor package.module:factory",
        hint="examples: model.pt2, scripted.pt, torchvision.models:resnet18 --weights w.pth, "
        "zoo:mobilenet_v2",
    )
