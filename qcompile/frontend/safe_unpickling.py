"""Loading ``torch.export`` archives without running code named in the file.

A ``.pt2`` archive is JSON (the program) plus pickles (weights, constants,
example inputs). ``torch.export.load`` unpickles some of them with
``weights_only=False`` or plain ``pickle.loads``, and falls back to
``weights_only=False`` when the safe load fails: a crafted archive then runs
whatever its pickle names. Inside :func:`tensors_only_unpickling` every
unpickling that torch's export loader does is held to torch's
``weights_only`` rules (tensors, containers, numbers, strings), and the
TorchScript object loader is refused; a file that needs more is an
:class:`UnsafeArchive`, which the caller turns into an error naming
``--trust-pickle``.

Contract: the patches live only for the ``with`` block and are undone on
every exit; they are not thread-safe (the command line loads on one thread).
"""

from __future__ import annotations

import contextlib
import io
import pickle
from collections.abc import Iterator
from typing import Any

import torch


class UnsafeArchive(Exception):
    """The archive asked to unpickle something beyond tensors and plain data."""


def _reason(exc: Exception) -> str:
    """The line of torch's refusal that names what the pickle wanted (``posix.system``...)."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    named = [line for line in lines if "GLOBAL" in line or "Unsupported" in line or "unsupported" in line]
    return (named or lines or ["it names objects beyond tensors"])[0]


def _tensors_only_load(original):
    def load(f: Any, *args: Any, **kwargs: Any) -> Any:
        kwargs["weights_only"] = True
        try:
            return original(f, *args, **kwargs)
        except pickle.UnpicklingError as exc:
            raise UnsafeArchive(_reason(exc)) from None

    return load


def _tensors_only_pickle_loads(data: bytes, *args: Any, **kwargs: Any) -> Any:
    # torch's weights-only unpickler, on a bare pickle stream (no zip container)
    from torch import _weights_only_unpickler

    try:
        return _weights_only_unpickler.load(io.BytesIO(data), encoding="utf-8")
    except pickle.UnpicklingError as exc:
        raise UnsafeArchive(_reason(exc)) from None


def _refuse_script_object(*args: Any, **kwargs: Any) -> Any:
    raise UnsafeArchive("the archive holds a TorchScript object, whose loading runs code from the file")


@contextlib.contextmanager
def tensors_only_unpickling() -> Iterator[None]:
    """Hold every unpickling inside the block to torch's ``weights_only`` rules."""
    saved = (torch.load, pickle.loads, torch._C._pickle_load_obj)
    torch.load = _tensors_only_load(saved[0])
    pickle.loads = _tensors_only_pickle_loads
    torch._C._pickle_load_obj = _refuse_script_object
    try:
        yield
    finally:
        torch.load, pickle.loads, torch._C._pickle_load_obj = saved
