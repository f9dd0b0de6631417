"""A whole call of an emitted gemmlowp model as its plan of kernel calls (qcompile.kernels.plan)."""

from __future__ import annotations

import pytest
from qcompile.kernels import host, host_conv, modules, plan

from qcompile.codegen import load_model as load_emitted
from qcompile.codegen import write_model
from qcompile.data import open_data
from qcompile.frontend.loaders import load_model
from qcompile.frontend.lower import lower
from qcompile.pipeline import PassContext, run_pipeline
from qcompile.quant.config import QuantConfig


@pytest.fixture(scope="module")
def resnet20(tmp_path_factory):
    """The Fashion-MNIST ResNet-20 (real weights: residual adds, strided and 1x1 convolutions, a linear
    layer) on the gemmlowp backend, and real test images."""
    out = tmp_path_factory.mktemp("plan") / "resnet20"
    calib = open_data("builtin:fashion-train", limit=128, batch_size=64)
    graph = lower(load_model("zoo:resnet20_fashion").module, (next(iter(calib))[0][:1],))
    run_pipeline(graph, "fuse,calibrate,convert{backend=gemmlowp}",
                 PassContext(calib_data=calib, quant_config=QuantConfig.from_preset("x86")))
    write_model(graph, out)
    assert "(qcompile.kernels.modules.KernelModel):" in (out / "model.py").read_text()
    return out, next(iter(open_data("builtin:fashion-test", limit=8, batch_size=8)))[0]


def _modules_call(model, x, monkeypatch):
    monkeypatch.setenv("QCOMPILE_PLAN", "0")
    try:
        return model(x)
    finally:
        monkeypatch.delenv("QCOMPILE_PLAN")


def _forwards(monkeypatch) -> list[str]:
    """The kernel modules' forward calls from now on, by class."""
    calls: list[str] = []
    for cls in (modules.QConv2d, modules.QLinear, modules.QAdd):
        def spy(self, *args, _forward=cls.forward, _name=cls.__name__):
            calls.append(_name)
            return _forward(self, *args)
        monkeypatch.setattr(cls, "forward", spy)
    return calls


def test_a_plan_replays_the_kernel_calls_bit_exact(resnet20, monkeypatch):
    folder, x = resnet20
    model = load_emitted(folder)
    first = model(x)  # runs the modules
    assert list(plan._plans[model].values()) == [None]  # a signature seen once: no plan yet
    assert model(x).equal(first)  # runs them again, keeping their calls as the plan
    (kept,) = plan._plans[model].values()
    calls = [step[0] for step in kept.steps]
    if host_conv.library() is not None:  # the host kernels' kept calls are the plan's steps
        assert sum(isinstance(c, host_conv._Call) for c in calls) >= 19  # 19 convolutions (3 strided 1x1s too)
        assert sum(isinstance(c, host.AddCall) for c in calls) == 9
    forwards = _forwards(monkeypatch)
    again = model(x)
    if host_conv.library() is not None:
        assert forwards == []  # the replay called no module
    assert _modules_call(model, x, monkeypatch).equal(first) and again.equal(first)
    assert forwards  # the modules' own call ran them
    assert first.shape == (8, 10) and first.std() > 0.5


def test_a_plan_follows_weights_hooks_and_shapes(resnet20, monkeypatch):
    folder, x = resnet20
    model = load_emitted(folder)
    before = model(x)
    model(x)
    # new weights loaded in place (load_state_dict copies into the same tensors): the plan is made again
    state = {k: v.clone() for k, v in model.state_dict().items()}
    fc = next(k for k in state if k.endswith(".weight") and state[k].dim() == 2)
    state[fc] = -state[fc].clamp(min=-127)
    model.load_state_dict(state)
    changed = model(x)
    assert not changed.equal(before) and changed.equal(_modules_call(model, x, monkeypatch))
    assert model(x).equal(changed)  # the new plan's replay
    # a hook on one module: it is called, so the modules run
    seen = []
    conv = next(m for m in model.modules() if isinstance(m, modules.QConv2d))
    handle = conv.register_forward_hook(lambda m, i, o: seen.append(o.shape))
    assert model(x).equal(changed) and len(seen) == 1
    handle.remove()
    # another batch: a plan of its own, the same codes image by image; the first kept
    assert all(model(x[:3]).equal(changed[:3]) for _ in range(3)) and model(x).equal(changed)
    assert [key[0][0][0] for key in plan._plans[model]] == [x.shape, (3, *x.shape[1:])]
    assert all(p is not None for p in plan._plans[model].values())


class _Branching(modules.KernelModel):
    """A forward that does not trace (it branches on a value): its modules run."""

    def __init__(self, inner):
        super().__init__()
        self.inner = inner

    def forward(self, x):
        y = self.inner(x)
        return y if float(y.sum()) > -1e30 else -y


def test_a_forward_that_does_not_trace_runs_its_modules(resnet20):
    folder, x = resnet20
    inner = load_emitted(folder)
    outer = _Branching(inner)
    assert outer(x).equal(inner(x)) and outer(x).equal(inner(x))
    assert outer(x).equal(inner(x))
    assert plan._graphs[outer] is None and not any(plan._plans[outer].values())


class _Wrapping(modules.KernelModel):
    """A forward that traces through another model (a container of the plan's modules)."""

    def __init__(self, inner):
        super().__init__()
        self.inner = inner

    def forward(self, x):
        return self.inner(x) * 2


def test_a_hook_on_a_container_inside_the_plan_is_called(resnet20):
    folder, x = resnet20
    inner = load_emitted(folder)
    outer = _Wrapping(inner)
    want = outer(x)
    assert outer(x).equal(want) and outer(x).equal(want) and plan._plans[outer]
    seen = []
    inner.register_forward_hook(lambda m, i, o: seen.append(o.shape))
    assert outer(x).equal(want) and seen == [want.shape]
