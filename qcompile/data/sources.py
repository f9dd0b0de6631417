"""Opening calibration / evaluation data from what users have.

``open_data(SPEC)`` accepts:

* a directory of images (``.jpg``/``.png``), flat or with one sub-folder per class;
* an ``.npz`` file (arrays ``x`` and optionally ``y``; or its only array);
* a ``.pt`` file (a tensor, an ``(x, y)`` pair, or a dict with ``x`` / ``y``);
* ``module:function``: a callable returning one of the above, or an iterable
  of ready batches;
* ``builtin:NAME``: real data that installs offline (:mod:`qcompile.data.builtin`).

Images are decoded and preprocessed one batch at a time, so memory does not
grow with the number of samples.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from qcompile.data.builtin import BUILTIN
from qcompile.data.preprocess import get_preprocess
from qcompile.errors import QCompileError

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".gif", ".webp"}


class DataSource:
    """Samples with optional labels, batched on the fly.

    Iterating yields model-input tuples ``(x,)`` (what calibration wants);
    :meth:`labelled` yields ``(x, y)`` for evaluation.

    Attributes:
        name: Where the data came from.
        labels: Labels tensor, or ``None`` for unlabelled data.
    """

    def __init__(self, name: str, items: Sequence[Any], labels: torch.Tensor | None,
                 load: Callable[[Any], torch.Tensor], batch_size: int = 32,
                 ready_batches: Sequence[Any] | None = None):
        self.name = name
        self.items = items
        self.labels = labels
        self.load = load
        self.batch_size = batch_size
        self._ready = ready_batches
        if ready_batches is None and len(items) == 0:
            raise QCompileError(f"the data set {name} is empty", hint="check the path and --calib-samples")

    def __len__(self) -> int:
        if self._ready is not None:
            return len(self._ready)
        return (len(self.items) + self.batch_size - 1) // self.batch_size

    @property
    def num_samples(self) -> int:
        if self._ready is not None:
            return sum(len(b[0] if isinstance(b, (tuple, list)) else b) for b in self._ready)
        return len(self.items)

    def _batch(self, start: int) -> torch.Tensor:
        return self.load_samples(start, start + self.batch_size)

    def load_samples(self, start: int, stop: int) -> torch.Tensor:
        """Samples ``start`` to ``stop`` (not their labels), loaded and stacked."""
        tensors = [self.load(item) for item in self.items[start:stop]]
        shapes = {tuple(t.shape) for t in tensors}
        if len(shapes) > 1:
            raise QCompileError(f"samples of {self.name} have different shapes after preprocessing: "
                                f"{sorted(shapes)[:3]}", hint="choose a preprocessing that resizes "
                                "(--preprocess imagenet / mnist / grey-half)")
        return torch.stack(tensors)

    def __iter__(self) -> Iterator[tuple]:
        if self._ready is not None:
            for batch in self._ready:
                yield tuple(batch) if isinstance(batch, (tuple, list)) else (batch,)
            return
        for start in range(0, len(self.items), self.batch_size):
            yield (self._batch(start),)

    def interleaved_split(self) -> tuple[DataSource, DataSource]:
        """(odd samples, even samples): disjoint calibration and evaluation sets of one source."""
        def part(offset: int, role: str) -> DataSource:
            labels = self.labels[offset::2] if self.labels is not None else None
            return DataSource(f"{self.name} ({role})", self.items[offset::2], labels, self.load, self.batch_size)

        return part(1, "calibration"), part(0, "evaluation")

    def shard(self, rank: int, size: int) -> DataSource:
        """Batches ``rank``, ``rank + size``, ... of this source, whole and in order (one process's share).

        Batch boundaries stay where they are, so each batch is the one that a
        single process would see.
        """
        if self._ready is not None:
            return DataSource(self.name, [], None, self.load, self.batch_size, ready_batches=self._ready[rank::size])
        picks = [i for start in range(rank * self.batch_size, len(self.items), size * self.batch_size)
                 for i in range(start, min(start + self.batch_size, len(self.items)))]
        labels = self.labels[picks] if self.labels is not None else None
        return DataSource(f"{self.name} (rank {rank} of {size})", [self.items[i] for i in picks], labels,
                          self.load, self.batch_size)

    def spread(self, count: int) -> DataSource:
        """At most ``count`` samples, evenly spaced over the whole set (a set ordered by source stays varied)."""
        if self._ready is not None or len(self.items) <= count:
            return self
        picks = torch.linspace(0, len(self.items) - 1, count).round().long().tolist()
        labels = self.labels[picks] if self.labels is not None else None
        return DataSource(self.name, [self.items[i] for i in picks], labels, self.load, self.batch_size)

    def window(self, skip: int = 0, limit: int | None = None) -> DataSource:
        """At most ``limit`` samples after the first ``skip``: a view, nothing is loaded.

        A data function's ready batches are kept whole (the first
        ``limit // batch_size``, at least one) and cannot be skipped into.
        """
        if limit is not None and limit <= 0:
            raise QCompileError(f"sample limit must be positive, got {limit}")
        if self._ready is not None:
            if skip:
                raise QCompileError(f"the data function {self.name} gives batches, which cannot be skipped into")
            ready = self._ready if limit is None else self._ready[: max(1, limit // self.batch_size)]
            return DataSource(self.name, [], None, self.load, self.batch_size, ready_batches=ready)
        if not skip and limit is None:
            return self
        end = None if limit is None else skip + limit
        labels = self.labels[skip:end] if self.labels is not None else None
        return DataSource(self.name, self.items[skip:end], labels, self.load, self.batch_size)

    def labelled(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """``(x, y)`` batches; only for labelled data."""
        if self.labels is None:
            raise QCompileError(f"{self.name} has no labels")
        for start in range(0, len(self.items), self.batch_size):
            yield self._batch(start), self.labels[start:start + self.batch_size]


def _read_image(path: Path) -> torch.Tensor:
    from torchvision.io import ImageReadMode, decode_image, read_file

    try:
        return decode_image(read_file(str(path)), mode=ImageReadMode.UNCHANGED)
    except RuntimeError as exc:
        raise QCompileError(f"cannot decode image {path}: {exc}", hint="use JPEG or PNG files") from None


def _image_folder(root: Path) -> tuple[list[Path], torch.Tensor | None]:
    classes = sorted(d for d in root.iterdir() if d.is_dir() and not d.name.startswith("."))
    if classes:
        files, labels = [], []
        for index, folder in enumerate(classes):
            found = sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
            files += found
            labels += [index] * len(found)
        return files, torch.tensor(labels)
    return sorted(p for p in root.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES), None


def _split_xy(content: Any, where: str) -> tuple[Any, torch.Tensor | None]:
    if isinstance(content, dict):
        x = next((content[k] for k in ("x", "images", "inputs", "data") if k in content), None)
        if x is None and len(content) == 1:
            x = next(iter(content.values()))
        if x is None:
            raise QCompileError(f"{where} has keys {sorted(content)}; expected 'x' (and optionally 'y')")
        y = next((content[k] for k in ("y", "labels", "targets") if k in content), None)
    elif isinstance(content, (tuple, list)) and len(content) == 2 and not isinstance(content[1], (tuple, list)):
        x, y = content
    else:
        x, y = content, None
    try:
        x = torch.as_tensor(np.asarray(x)) if not isinstance(x, torch.Tensor) else x
        y = torch.as_tensor(np.asarray(y)).long() if y is not None else None
    except (TypeError, ValueError, RuntimeError) as exc:
        raise QCompileError(f"{where} does not hold numeric arrays: {type(exc).__name__}: {exc}",
                            hint="store the inputs as a tensor or array under 'x' (labels under 'y')") from None
    if x.ndim == 0 or x.dtype == torch.bool or x.is_complex():
        raise QCompileError(f"{where} holds a {x.dtype} {'scalar' if x.ndim == 0 else 'tensor'}, not a batch of "
                            "samples", hint="store a tensor whose first axis counts the samples")
    if y is not None:
        if y.ndim == 0:
            raise QCompileError(f"{where}: the labels are a scalar, not one per sample")
        if len(y) != len(x):
            raise QCompileError(f"{where}: {len(x)} samples but {len(y)} labels")
    return x, y


def open_data(spec: str, *, preprocess: str | None = None, limit: int | None = None,
              batch_size: int = 32, skip: int = 0) -> DataSource:
    """Open the data named by ``spec`` (see the module docstring): at most ``limit`` samples after the first ``skip``.

    ``skip`` needs files or a built-in set; a data function is refused with it.
    """
    if limit is not None and limit <= 0:
        raise QCompileError(f"sample limit must be positive, got {limit}")
    if batch_size <= 0:
        raise QCompileError(f"batch size must be positive, got {batch_size}", hint="e.g. --batch-size 32")
    labels: torch.Tensor | None
    if spec.startswith("builtin:"):
        name = spec.removeprefix("builtin:")
        if name not in BUILTIN:
            raise QCompileError(f"no built-in data set {name!r}", hint=f"choose one of: {', '.join(BUILTIN)}")
        loader, default = BUILTIN[name]
        items, labels = loader()
        load = get_preprocess(preprocess or default)
    else:
        path = Path(spec)
        if path.is_dir():
            items, labels = _image_folder(path)
            if not items:
                raise QCompileError(f"no images (.jpg/.png) in {path}")
            fn = get_preprocess(preprocess or "imagenet")
            load = lambda p: fn(_read_image(p))  # noqa: E731
        elif path.suffix in (".npz", ".pt", ".pth"):
            if not path.is_file():
                raise QCompileError(f"data file {path} does not exist")
            try:
                content = dict(np.load(path)) if path.suffix == ".npz" else torch.load(path, weights_only=True)
            except Exception as exc:  # noqa: BLE001 - a damaged file raises anything from numpy, zip or unpickler
                text = str(exc).strip().splitlines()
                reason = f"{type(exc).__name__}: {text[0] if text else 'empty, truncated or not this format'}"
                raise QCompileError(f"cannot read data file {path}: {reason}",
                                    hint="save tensors with torch.save({'x': inputs, 'y': labels}, path) or "
                                    "numpy.savez(path, x=inputs, y=labels)") from None
            items, labels = _split_xy(content, str(path))
            load = get_preprocess(preprocess or "none")
        elif ":" in spec and not path.exists():
            if skip:
                raise QCompileError(f"the data function {spec} gives batches, which cannot be skipped into")
            return _from_callable(spec, preprocess, limit, batch_size)
        else:
            raise QCompileError(f"data {spec!r} is not an image folder, .npz/.pt file, module:function "
                                "or builtin:NAME", hint="e.g. --calib builtin:photos or --calib images/")
    end = None if limit is None else skip + limit
    if skip or limit is not None:
        items = items[skip:end]
        labels = labels[skip:end] if labels is not None else None
    return DataSource(spec, items, labels, load, batch_size)


class OpenedData:
    """:func:`open_data` that opens each data set once: later requests for it are views of that opening.

    A data function runs once, a data file is read once, a folder listed
    once, however many steps of a run read the set (calibration, the
    verdict, the checks, the diagnostics). Called like :func:`open_data`.
    """

    def __init__(self) -> None:
        self._opened: dict[tuple, DataSource] = {}

    def __call__(self, spec: str, *, preprocess: str | None = None, limit: int | None = None,
                 batch_size: int = 32, skip: int = 0) -> DataSource:
        key = (spec, preprocess, batch_size)
        if key not in self._opened:
            self._opened[key] = open_data(spec, preprocess=preprocess, batch_size=batch_size)
        return self._opened[key].window(skip, limit)

    @property
    def opened(self) -> int:
        """How many data sets were opened."""
        return len(self._opened)


def _from_callable(spec: str, preprocess: str | None, limit: int | None, batch_size: int) -> DataSource:
    module_name, _, attr = spec.partition(":")
    if "" not in sys.path and str(Path.cwd()) not in sys.path:
        sys.path.append(str(Path.cwd()))
    try:
        fn = getattr(importlib.import_module(module_name), attr)
    except (Exception, SystemExit) as exc:  # noqa: BLE001 - the user's module runs on import
        raise QCompileError(f"cannot load data function {spec!r}: {type(exc).__name__}: {exc}") from None
    try:
        content = fn()
    except (Exception, SystemExit) as exc:  # noqa: BLE001 - the user's function can raise anything
        raise QCompileError(f"calling the data function {spec}() failed: {type(exc).__name__}: {exc}") from None
    if isinstance(content, (torch.Tensor, np.ndarray, dict)) or (
            isinstance(content, tuple) and len(content) == 2 and hasattr(content[0], "shape")):
        items, labels = _split_xy(content, spec)
        if limit is not None:
            items, labels = items[:limit], (labels[:limit] if labels is not None else None)
        return DataSource(spec, items, labels, get_preprocess(preprocess or "none"), batch_size)
    batches = list(content)
    if limit is not None:
        batches = batches[: max(1, limit // batch_size)]
    if not batches:
        raise QCompileError(f"the data function {spec} returned no batches")
    return DataSource(spec, [], None, lambda x: x, batch_size, ready_batches=batches)


def first_samples(batches: Iterable, count: int) -> tuple[torch.Tensor, ...] | None:
    """The first ``count`` samples of any batches (a DataSource, a list of tensors or tuples) as one batch.

    Each batch is a tensor or a tuple of tensors (one per model input);
    returns one tensor per input, or None if there are no batches.
    """
    parts: list[tuple] = []
    seen = 0
    for batch in batches:
        batch = tuple(batch) if isinstance(batch, (tuple, list)) else (batch,)
        parts.append(batch)
        seen += len(batch[0])
        if seen >= count:
            break
    if not parts:
        return None
    return tuple(torch.cat(column)[:count] for column in zip(*parts, strict=True))


def calibration_samples(data: Iterable | None, count: int, needed_by: str) -> tuple[torch.Tensor, ...]:
    """:func:`first_samples` of the calibration data, refusing missing or empty data on behalf of pass ``needed_by``."""
    if data is None:
        raise QCompileError(f"'{needed_by}' needs calibration data", hint="pass --calib DATA")
    inputs = first_samples(data, count)
    if inputs is None:
        raise QCompileError("the calibration data is empty", hint="check the --calib path and --calib-samples")
    return inputs
