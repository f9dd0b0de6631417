"""The pass registry, default providers of facts, named pipelines and plugins."""

from __future__ import annotations

import importlib
import importlib.util
import sys
from pathlib import Path

from qcompile.errors import QCompileError
from qcompile.pipeline.pass_base import Pass

_PASSES: dict[str, type[Pass]] = {}
_DEFAULT_PROVIDERS: dict[str, str] = {}
_NAMED_PIPELINES: dict[str, tuple[str, str]] = {}  # name -> (pipeline text, description)


def register_pass(cls: type[Pass] | None = None, *, default_for: tuple[str, ...] = ()):
    """Register a pass class under ``cls.name`` (usable as a decorator, with or without arguments).

    Args:
        cls: A frozen dataclass subclass of :class:`Pass` with a kebab-case name.
        default_for: Facts this pass provides by default: a pipeline that needs
            one of them and lacks a provider gets this pass inserted.
    """
    if cls is None:
        return lambda klass: register_pass(klass, default_for=default_for)
    if not cls.name or cls.name != cls.name.lower() or " " in cls.name or "_" in cls.name:
        raise ValueError(f"pass names are kebab-case, got {cls.name!r}")
    existing = _PASSES.get(cls.name)
    if existing is not None and existing.__qualname__ != cls.__qualname__:
        raise ValueError(f"a pass named {cls.name!r} is already registered ({existing.__qualname__})")
    _PASSES[cls.name] = cls
    for fact in default_for:
        if fact not in cls.provides:
            raise ValueError(f"pass {cls.name!r} cannot be the default for {fact!r}: it does not provide it")
        _DEFAULT_PROVIDERS[fact] = cls.name
    return cls


def pass_class(name: str) -> type[Pass] | None:
    """The registered pass called ``name``, or ``None``."""
    ensure_builtin_passes()
    return _PASSES.get(name)


def registered_passes() -> dict[str, type[Pass]]:
    """All registered passes by name, sorted."""
    ensure_builtin_passes()
    return dict(sorted(_PASSES.items()))


def default_provider(fact: str) -> str | None:
    """The pass inserted when a pipeline needs ``fact`` and nothing provides it."""
    ensure_builtin_passes()
    return _DEFAULT_PROVIDERS.get(fact)


def providers_of(fact: str) -> list[str]:
    """Names of all registered passes that provide ``fact``."""
    return [name for name, cls in registered_passes().items() if fact in cls.provides]


def register_pipeline(name: str, text: str, description: str = "") -> None:
    """Give a pipeline string a name (``ptq`` -> ``fuse,calibrate,convert``)."""
    _NAMED_PIPELINES[name] = (text, description)


def named_pipelines() -> dict[str, tuple[str, str]]:
    """Named pipelines: name -> (pipeline text, description)."""
    ensure_builtin_passes()
    return dict(sorted(_NAMED_PIPELINES.items()))


def ensure_builtin_passes() -> None:
    """Import ``qcompile.passes`` so the built-in passes are registered."""
    importlib.import_module("qcompile.passes")


def load_plugin(spec: str) -> None:
    """Import a user's passes from a ``.py`` file or an importable module name.

    Raises:
        QCompileError: if the file or module cannot be found or fails on import.
    """
    before = set(_PASSES)
    path = Path(spec)
    try:
        if spec.endswith(".py") or path.exists():
            if not path.is_file():
                raise QCompileError(
                    f"plugin file {spec} does not exist",
                    hint="give the path of a .py file or an importable module name",
                )
            module_name = f"qcompile_plugin_{path.stem}"
            module_spec = importlib.util.spec_from_file_location(module_name, path)
            module = importlib.util.module_from_spec(module_spec)
            sys.modules[module_name] = module
            module_spec.loader.exec_module(module)
        else:
            importlib.import_module(spec)
    except QCompileError:
        raise
    except ModuleNotFoundError as exc:
        raise QCompileError(
            f"plugin module {spec!r} cannot be imported: {exc}",
            hint="check the name, or give the path of the plugin's .py file",
        ) from None
    except Exception as exc:
        raise QCompileError(
            f"plugin {spec} failed while loading: {type(exc).__name__}: {exc}"
        ) from exc
    if set(_PASSES) == before:
        raise QCompileError(
            f"plugin {spec} registered no pass",
            hint="decorate a function with @function_pass(...) or a Pass subclass "
            "with @register_pass (see examples/custom_pass.py)",
        )
