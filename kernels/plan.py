"""A whole call of an emitted gemmlowp model as a list of kernel calls, without the modules around them.

An emitted model calls one module per op, and every call pays for Python around its kernel: ``nn.Module``'s
dispatch, the module's checks of its input, and the check that its kept kernel call still fits
(``modules._kept_call``). A plan is the model's ``forward`` traced once (``torch.fx``, the kernel modules as
leaves) and, for one input signature, the calls that a run of the modules made, replayed in a loop: a kernel
module with a kept kernel call (a convolution, linear layer, add, pooling, dequantize) as that call, any other
kernel module by its eager method, a view of a kernel's value (flatten, view, reshape) or an identity at
inference (dropout) as a copy of its bytes, anything else as its node says. Before and after, for one op::

    layer1_0_conv1 = self.layer1_0_conv1(maxpool)   # Module.__call__ -> forward -> _call -> _kept_call -> call
    values[5] = call(values[4])                     # host_conv._Call: allocate the output, one ctypes call

and each run of two or more such calls in a row is one step, a :class:`qcompile.kernels.segment.Segment` (one
C call for all of them, the values only they read in an arena that the model's segments share).

Contract: a plan computes what the modules compute, bit for bit, and runs only where the modules would make
the same kernel calls: the inputs' shapes, dtypes and strides, the thread count and the kernels chosen
(``QCOMPILE_HOST_KERNELS``, ``QCOMPILE_BYTE_ISA``) as when it was made; the modules' tensors the same objects,
unchanged in place, and an add's settings the same; no forward hooks on the model, on any of its modules or
global ones; an identity replayed as a copy still in inference mode; eager CPU tensors (not tracing, scripting,
exporting or compiling). Anything else runs the modules. A signature's first call runs the modules (inputs
whose shapes never repeat pay for no recording), its second records the plan as it runs them, later ones replay
it; a model keeps the last 32 signatures'. A model whose ``forward`` does not trace runs its modules.
``QCOMPILE_PLAN=0`` turns plans off. Intermediate values live until the call returns, as the locals of the
emitted ``forward`` do.
"""

from __future__ import annotations

import functools
import operator
import os
import weakref

import torch
import torch.fx
from qcompile.kernels import host, host_conv, segment
from torch import Tensor, nn
from torch.nn.modules import module as _torch_module

# model -> its traced graph, or None where its forward does not trace
_graphs: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
# model -> {input signature: its plan, or None where seen once}, the last PLANS_KEPT signatures
_plans: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
# model -> the arena its plans' segments share
_arenas: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()

_MODULES = "qcompile.kernels.modules"


class _Tracer(torch.fx.Tracer):
    def is_leaf_module(self, module: nn.Module, qualified_name: str) -> bool:
        return type(module).__module__ == _MODULES or super().is_leaf_module(module, qualified_name)


def _graph(model: nn.Module) -> torch.fx.Graph | None:
    if model not in _graphs:
        try:
            _graphs[model] = _Tracer().trace(model)
        except Exception:  # noqa: BLE001 - any forward that does not trace simply runs its modules
            _graphs[model] = None
    return _graphs[model]


def _signature(args: tuple) -> tuple | None:
    """What the kernel calls depend on besides the modules: the inputs' layout, the threads, the kernels."""
    for a in args:
        if type(a) is not Tensor or not a.is_cpu:
            return None
    return (tuple((a.shape, a.dtype, a.stride()) for a in args), torch.get_num_threads(),
            host_conv.library() is not None, host_conv.byte_isa(), host_conv.depthwise_isa())


_FORWARD_HOOKS, _FORWARD_PRE_HOOKS = operator.attrgetter("_forward_hooks"), operator.attrgetter("_forward_pre_hooks")


def _hooked(modules: list[nn.Module]) -> bool:
    if _torch_module._global_forward_hooks or _torch_module._global_forward_pre_hooks:
        return True
    return any(map(_FORWARD_HOOKS, modules)) or any(map(_FORWARD_PRE_HOOKS, modules))


def call(model: nn.Module, args: tuple):
    """``model(*args)`` through its plan, or ``NotImplemented`` where the plan may not run (the caller then
    runs the modules)."""
    if (torch.compiler.is_compiling() or torch.jit.is_tracing() or model._forward_hooks
            or model._forward_pre_hooks or os.environ.get("QCOMPILE_PLAN", "1") == "0"):
        return NotImplemented
    key = _signature(args)
    if key is None:
        return NotImplemented
    plans = _plans.get(model)
    if plans is None:
        plans = _plans[model] = {}
    plan = plans.get(key, _UNSEEN)
    if plan is not None and plan is not _UNSEEN and plan.valid():
        return plan.run(args)
    if plan is _UNSEEN:  # a signature's first call runs the modules: one seen once is not worth a recording
        _remember(plans, key, None)
        return NotImplemented
    graph = _graph(model)
    if (graph is None or _hooked(list(model.modules()))
            or sum(node.op == "placeholder" for node in graph.nodes) != len(args)):  # defaults: the modules
        return NotImplemented
    plan = Plan()
    out = plan.record(model, graph, args, _arenas.setdefault(model, segment.Arena()))
    _remember(plans, key, plan)
    return out


PLANS_KEPT = 32  # per model: the input signatures seen last, each with its plan from its second call on
_UNSEEN = object()


def _remember(plans: dict, key: tuple, plan: Plan | None) -> None:
    """A signature's plan (None: seen once), the oldest signature forgotten past PLANS_KEPT."""
    if key not in plans and len(plans) >= PLANS_KEPT:
        plans.pop(next(iter(plans)))  # the oldest
    plans[key] = plan


class Plan:
    """One input signature's calls of a model: steps over a list of values (the inputs first)."""

    def __init__(self):
        self.steps: list[tuple] = []  # (function, slot) or (function, slot, slot) or (function, None): all values
        self.output = None  # a function of the values
        self.modules: list[nn.Module] = []  # the model's (a hook on any of them: the modules run)
        self.tensors: list[Tensor] = []  # the kept calls' modules' tensors: the same objects,
        self.places: tuple[list[dict], list[str]] = ([], [])  # still in their modules' buffers (dicts, names),
        self.versions: list[int] = []  # unchanged in place
        self.settings: list[tuple] = []  # (a function of a module, what it gave): settings, a dropout's mode

    def valid(self) -> bool:
        """Whether the modules are as the plan found them (about 0.1 us a tensor)."""
        return (not _hooked(self.modules) and [t._version for t in self.tensors] == self.versions
                and all(map(operator.is_, map(dict.get, *self.places), self.tensors))
                and all(f() == s for f, s in self.settings))

    def run(self, args: tuple):
        values = list(args)
        for step in self.steps:
            if len(step) == 2:
                fn, a = step
                values.append(fn(values[a]) if a is not None else fn(values))
            elif len(step) == 3:
                fn, a, b = step
                values.append(fn(values[a], values[b]))
            else:  # a segment: appends its steps' values
                step[0](values)
        return self.output(values)

    def record(self, model: nn.Module, graph: torch.fx.Graph, args: tuple, arena: segment.Arena):
        """Run ``model`` node by node on ``args`` (its modules called as usual, which makes their kept kernel
        calls), keeping each node's call as a step (runs of kernel calls as segments in ``arena``); the
        output."""
        self.modules = list(model.modules())
        slot: dict[torch.fx.Node, int] = {}
        values: list = []
        inputs = iter(args)
        reads: list[tuple[int, ...]] = []  # the value slots each step reads
        for node in graph.nodes:
            if node.op == "output":
                self.output = functools.partial(_read, node.args[0], slot)
                out = self.output(values)
                self.steps = segment.join(self.steps, reads, len(args), set(_slots(node.args[0], slot)), arena)
                return out
            if node.op == "placeholder":
                value = next(inputs)
            else:
                value = self._step(model, node, slot, values, reads)
            slot[node] = len(values)
            values.append(value)
        raise RuntimeError("a traced graph without an output")  # torch.fx always writes one

    def _step(self, model: nn.Module, node: torch.fx.Node, slot: dict, values: list, reads: list):
        """Run ``node`` once and keep its step, and in ``reads`` the value slots it reads (a convolution's kept
        call on NCHW codes: first a step that copies them into channels-last order, whose value it reads)."""
        args, kwargs = _read(node.args, slot, values), _read(node.kwargs, slot, values)
        every = _slots((node.args, node.kwargs), slot)
        if node.op == "call_module":
            module = model.get_submodule(node.target)
            value = module(*args, **kwargs)
            plain = not kwargs and 1 <= len(node.args) <= 2 and all(isinstance(a, torch.fx.Node) for a in node.args)
            kernel = getattr(module, "_kernel_call", None) if plain else None
            fn = kernel(*args) if kernel is not None else None
            if fn is None and kernel is not None and len(args) == 1 and type(args[0]) is Tensor \
                    and host.library() is not None and host.nchw_codes(args[0]):
                layout = host.LayoutCall(args[0].shape)
                copied = layout(args[0])
                fn = kernel(copied)
                if fn is not None:
                    self.steps.append((layout, every[0]))
                    reads.append(every)
                    every = (len(values),)
                    values.append(copied)
            if fn is not None:  # the kept call: valid while the module's tensors and settings stay as they are
                self._watch(module)
            elif plain and len(args) == 1 and isinstance(module, (nn.Identity, nn.Dropout)) and not module.training:
                fn = _copy(value, args[0])  # its input itself (dropout at inference): a copy, which a segment runs
                if fn is not None:  # while the module stays in inference mode
                    self.settings.append((functools.partial(getattr, module, "training"), False))
            if fn is None and plain and len(node.args) == 1 and type(module).__module__ == _MODULES \
                    and hasattr(module, "_call"):
                fn = module._call  # an eager kernel method that reads the module's state at each call
            reads.append(every)
            if fn is not None:
                self.steps.append((fn, *every))
            else:
                self.steps.append((_bound(module, node.args, node.kwargs, slot), None))
            return value
        if node.op == "get_attr":
            fn = _attribute(model, node.target)
            self.steps.append((fn, None))
            reads.append(())
            return fn(values)
        reads.append(every)
        target = node.target
        if node.op == "call_method":
            def fn(obj, *a, **k):
                return getattr(obj, target)(*a, **k)
        else:
            fn = target
        value = fn(*args, **kwargs)
        copy = _copy(value, values[every[0]]) if target in _VIEWS and len(every) == 1 else None
        self.steps.append((copy, *every) if copy is not None else (_bound(fn, node.args, node.kwargs, slot), None))
        return value

    def _watch(self, module: nn.Module) -> None:
        for name, tensor in module._buffers.items():
            if tensor is not None:
                self.tensors.append(tensor)
                self.places[0].append(module._buffers)
                self.places[1].append(name)
                self.versions.append(tensor._version)
        settings = getattr(module, "settings", None)
        if settings is not None:
            self.settings.append((settings, settings()))


# the views a plan's step copies where it reads a kernel's value: the flattening before a classifier
_VIEWS = {torch.flatten, torch.reshape, "flatten", "view", "reshape"}


def _copy(value, source):
    """A step that copies ``source``'s bytes where ``value`` is a dense uint8 view of all of them (a
    ``host.CopyCall``, which a segment runs), or None."""
    if not (type(value) is Tensor and type(source) is Tensor and value.dtype == torch.uint8 and value.is_cpu
            and host.library() is not None and value.data_ptr() == source.data_ptr()
            and value.numel() == source.numel()
            and (value.is_contiguous() or value.is_contiguous(memory_format=torch.channels_last))):
        return None
    return host.CopyCall(value.shape, value.stride())


def _attribute(model: nn.Module, target: str):
    """A step that reads the model's attribute ``target`` at each call; it holds the model weakly, as the plans
    are held (by the model)."""
    held = weakref.ref(model)

    def fetch(values):
        obj = held()
        for part in target.split("."):
            obj = getattr(obj, part)
        return obj
    return fetch


def _bound(fn, args, kwargs, slot: dict):
    """``fn`` called with ``args`` and ``kwargs`` whose nodes are read from the values."""
    def step(values):
        return fn(*_read(args, slot, values), **_read(kwargs, slot, values))
    return step


def _slots(tree, slot: dict) -> tuple[int, ...]:
    """The value slots of the nodes in ``tree``, in order."""
    found: list[int] = []
    torch.fx.node.map_arg(tree, lambda n: found.append(slot[n]))
    return tuple(found)


def _read(tree, slot: dict, values: list):
    """``tree`` (a node's arguments, or the output) with each node replaced by its value."""
    return torch.fx.node.map_arg(tree, lambda n: values[slot[n]])
