"""What a pass is: a frozen dataclass with facts, typed options and ``run``.

A pass declares the facts it ``requires`` and ``provides`` (and those it
``invalidates``); its options are dataclass fields with defaults, so the
pipeline string ``aciq{prior=gauss bits=4}`` maps onto ``Aciq(prior="gauss",
bits=4)``. ``run(graph, ctx)`` rewrites the graph in place and returns a
:class:`PassResult` saying whether anything changed; the manager checks that
claim.

Data sets, devices and progress reporting come from the :class:`PassContext`,
never from options.
"""

from __future__ import annotations

import abc
import dataclasses
import inspect
import math
import sys
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, ClassVar

from qcompile.ir.graph import Graph

# facts passes and tools ask about by name (a pass's ``provides`` / ``requires`` / ``forbids``)
CALIBRATED = "calibrated"
CONVERTED = "converted"  # on integer kernels: convert, or dynamic
SIMULATED = "simulated"  # fake-quantized in float: simulate
STATICALLY_CONVERTED = "statically-converted"  # convert: the whole quantized region on integer kernels
INTEGER_STAGE = "integer-stage"  # integerize: every grid and weight code decided, as plain integer tensors
ON_KERNELS = "on-kernels"  # lower: the integer stage on one backend's kernels
# What the built-in passes that rewrite float graphs forbid: none runs once convert has put the graph on
# integer kernels (a second convert, a calibration after convert). ``dynamic`` may follow convert
# (ptq,dynamic{ops=embedding}) and precede it where it quantizes embeddings only.
FLOAT_GRAPH_ONLY: tuple[str, ...] = (STATICALLY_CONVERTED,)


def first_providing(passes: Iterable[Pass], *facts: str) -> Pass | None:
    """The first of ``passes`` that provides any of ``facts`` (None if none does)."""
    return next((p for p in passes if any(fact in p.provides for fact in facts)), None)


@dataclass(frozen=True)
class PassResult:
    """What a pass reports back.

    Attributes:
        modified: Whether the pass changed the graph or its parameters.
        stats: Counts and measurements for reports (``{"conv+bn": 20}``).
    """

    modified: bool
    stats: dict[str, Any] = field(default_factory=dict)


class PassContext:
    """Everything a pass may use besides its options.

    Attributes:
        calib_data: Iterable of model-input tuples for calibration (or ``None``).
        train_data: Labelled data source for training passes (or ``None``).
        quant_config: The quantization config (preset, overrides, skips);
            the ``x86`` preset when not given.
        device: Device for any computation a pass does.
        debug: Whether passes should explain their decisions (see ``explain``).
        explanations: (pass name, message) pairs recorded by ``explain``.
        world: The processes this run is spread over
            (:class:`qcompile.distributed.World`; one process unless started by torchrun).
    """

    def __init__(
        self,
        calib_data: Any = None,
        quant_config: Any = None,
        train_data: Any = None,
        device: str = "cpu",
        debug: bool = False,
        progress: Callable[[str, int, int | None], None] | None = None,
        log: Callable[[str], None] | None = None,
    ):
        self.calib_data = calib_data
        self.train_data = train_data
        self.statistics_file = None  # for the load-stats pass
        if quant_config is None:
            from qcompile.quant.config import QuantConfig

            quant_config = QuantConfig()
        self.quant_config = quant_config
        self.device = device
        self.debug = debug
        self.explanations: list[tuple[str, str]] = []
        self.remaining_passes: tuple = ()  # the passes after the current one (set by the manager)
        self._progress = progress
        self._log = log or (lambda message: print(message, file=sys.stderr))
        self.current_pass = ""
        from qcompile.distributed import single_process

        self.world = single_process()

    def explain(self, message: str) -> None:
        """Record why a pass did or did not act (shown with ``--debug``)."""
        self.explanations.append((self.current_pass, message))
        if self.debug:
            self._log(f"[{self.current_pass}] {message}")

    def log(self, message: str) -> None:
        """Tell the user something about the run."""
        self._log(message)

    def progress(self, label: str, done: int, total: int | None = None) -> None:
        """Report progress on long work (batches calibrated, layers corrected...)."""
        if self._progress is not None:
            self._progress(label, done, total)


@dataclass(frozen=True)
class Bounds:
    """The range an option's value must lie in (checked whenever a pass is built)."""

    low: float | None = None
    high: float | None = None
    low_open: bool = False  # a value equal to ``low`` is out of range

    def violated_by(self, value: float) -> bool:
        if self.low is not None and (value < self.low or (self.low_open and value == self.low)):
            return True
        return self.high is not None and value > self.high

    def describe(self) -> str:
        low = None if self.low is None else (f"above {self.low:g}" if self.low_open else f"at least {self.low:g}")
        high = None if self.high is None else f"at most {self.high:g}"
        if low and high and not self.low_open:
            return f"from {self.low:g} to {self.high:g}"
        return " and ".join(part for part in (low, high) if part) or "any value"


def option(default: Any, *, low: float | None = None, high: float | None = None, above: float | None = None) -> Any:
    """A pass option with a range: ``bits: int = option(8, low=2, high=8)``, ``k: float = option(2.0, above=0)``."""
    bounds = Bounds(low=above if above is not None else low, high=high, low_open=above is not None)
    return field(default=default, metadata={"bounds": bounds})


@dataclass(frozen=True)
class Pass(abc.ABC):
    """Base class of all passes. Subclass as a frozen dataclass and register it.

    Class attributes:
        name: kebab-case name used in pipeline strings.
        requires: Facts that must hold before the pass runs.
        provides: Facts that hold after it.
        invalidates: Facts that no longer hold after it.
        forbids: Facts under which it cannot run; a pipeline that puts it there is refused when parsed.
    """

    name: ClassVar[str] = ""
    # Statistics beyond the observers' own that calibration must collect for
    # this pass (``moments``: mean, mean absolute deviation, std).
    needs_statistics: ClassVar[tuple[str, ...]] = ()
    requires: ClassVar[tuple[str, ...]] = ()
    provides: ClassVar[tuple[str, ...]] = ()
    invalidates: ClassVar[tuple[str, ...]] = ()
    # Facts under which the pass cannot run (the built-in passes rewrite float graphs: not after "converted").
    forbids: ClassVar[tuple[str, ...]] = ()

    def __post_init__(self) -> None:
        for f in self.options():
            value = getattr(self, f.name)
            key = f.name.replace("_", "-")
            if isinstance(value, float) and not math.isfinite(value):
                raise ValueError(f"{key} must be a finite number, got {value}")
            bounds = f.metadata.get("bounds")
            if bounds is not None and isinstance(value, (int, float)) and bounds.violated_by(value):
                raise ValueError(f"{key} must be {bounds.describe()}, got {value}")
        self.validate()

    def validate(self) -> None:
        """Check options against each other (ranges of single options are declared with :func:`option`).

        Raises:
            ValueError: saying which option is wrong and what it must be.
        """
        return None

    @abc.abstractmethod
    def run(self, graph: Graph, ctx: PassContext) -> PassResult:
        """Rewrite ``graph`` in place; say whether anything changed."""

    @classmethod
    def options(cls) -> list[dataclasses.Field]:
        """The pass's options (its dataclass fields), in declaration order."""
        return [f for f in dataclasses.fields(cls) if f.init]

    @classmethod
    def summary(cls) -> str:
        """First line of the pass's docstring."""
        doc = inspect.getdoc(cls) or ""
        return doc.splitlines()[0] if doc else ""

    def __str__(self) -> str:
        from qcompile.pipeline.parser import format_pass

        return format_pass(self)


def function_pass(
    name: str,
    *,
    requires: tuple[str, ...] = (),
    provides: tuple[str, ...] = (),
    invalidates: tuple[str, ...] = (),
) -> Callable[[Callable[..., PassResult | bool]], type[Pass]]:
    """Turn ``fn(graph, ctx, *, option=default...)`` into a registered pass class.

    The function's keyword-only parameters become the pass's options. It may
    return a :class:`PassResult` or just a bool (``modified``)::

        @function_pass("count-convs")
        def count_convs(graph, ctx, *, verbose: bool = False):
            ctx.log(f"{len(graph.find(op='conv2d'))} convolutions")
            return False
    """

    def wrap(fn: Callable[..., PassResult | bool]) -> type[Pass]:
        from qcompile.pipeline.registry import register_pass

        params = [
            p for p in inspect.signature(fn).parameters.values() if p.kind == p.KEYWORD_ONLY
        ]
        missing = [p.name for p in params if p.default is inspect.Parameter.empty]
        if missing:
            raise TypeError(f"options of pass {name!r} need defaults: {missing}")
        hints = inspect.get_annotations(fn, eval_str=True)
        fields = [(p.name, hints.get(p.name, type(p.default)), field(default=p.default)) for p in params]

        def run(self, graph: Graph, ctx: PassContext) -> PassResult:
            options = {p.name: getattr(self, p.name) for p in params}
            result = fn(graph, ctx, **options)
            return result if isinstance(result, PassResult) else PassResult(bool(result))

        cls = dataclasses.make_dataclass(
            "".join(part.title() for part in name.split("-")) + "Pass",
            fields,
            bases=(Pass,),
            frozen=True,
            namespace={
                "name": name,
                "requires": tuple(requires),
                "provides": tuple(provides),
                "invalidates": tuple(invalidates),
                "run": run,
                "__doc__": inspect.getdoc(fn) or f"{name} (function pass)",
                "__module__": fn.__module__,
            },
        )
        return register_pass(cls)

    return wrap
