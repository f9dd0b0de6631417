"""A whole call of an emitted gemmlowp model as its plan of kernel calls (qcompile.kernels.plan)."""

from __future__ import annotations

import threading

import pytest
from qcompile.kernels import host, host_conv, modules, plan, segment

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
    segments = [step[0] for step in kept.steps if isinstance(step[0], segment.Segment)]
    calls = [step[0] for step in kept.steps] + [c for s in segments for c in s.calls]
    if host_conv.library() is not None:  # the host kernels' kept calls are the plan's steps, most in one segment
        assert sum(isinstance(c, host_conv._Call) for c in calls) >= 19  # 19 convolutions (3 strided 1x1s too)
        assert sum(isinstance(c, host.AddCall) for c in calls) == 9
        assert max(len(s.calls) for s in segments) >= 27
        # the arena holds the values alive at once: less than all the segment's values
        longest = max(segments, key=lambda s: len(s.calls))
        assert 0 < longest.size < sum(map(segment._bytes, longest.calls)) / 2
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
    # the two plans' segments share one arena, as large as the largest needs
    needs = [s.size for p in plan._plans[model].values() for (s, *_) in p.steps if isinstance(s, segment.Segment)]
    if host_conv.library() is not None:
        assert len(needs) >= 2 and len(set(needs)) >= 2
        assert plan._arenas[model].bytes.numel() == max(needs) + segment.SLACK + segment.ALIGN


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


def test_a_segment_replays_bit_exact_beside_another_call_of_it(resnet20):
    folder, x = resnet20
    model = load_emitted(folder)
    want = model(x)
    model(x)
    (kept,) = plan._plans[model].values()
    segments = [step[0] for step in kept.steps if isinstance(step[0], segment.Segment)]
    if host_conv.library() is None:
        assert segments == []
        return
    arena = plan._arenas[model]
    assert all(s.arena is arena for s in segments)
    assert arena.lock.acquire(blocking=False)  # another thread is in the model's segments: this call takes an
    try:  # arena of its own
        assert model(x).equal(want)
    finally:
        arena.lock.release()
    results = []
    threads = [threading.Thread(target=lambda: results.extend(model(x) for _ in range(5))) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(results) == 15 and all(r.equal(want) for r in results)


def test_arena_offsets_reuse_bytes_no_longer_read():
    # value i written by step i; last[i]: the step that reads it last; kept values are tensors of their own
    sizes, last, kept = [100, 50, 100, 10, 70], [1, 2, 3, 4, 4], [False, False, False, True, False]
    offsets = segment._offsets(sizes, last, kept)
    # step 1 reads value 0, so value 1 goes past it; value 2 takes value 0's bytes (read for the last time at
    # step 1), not value 1's (read at step 2); value 4 takes them again (value 2's last reader is step 3)
    assert offsets == [0, 128, 0, -1, 0]
    assert segment._offsets([10, 10], [1, 1], [False, False]) == [0, 64]


class _TwoLayers(modules.KernelModel):
    """Two convolutions of the real model in a row, both outputs returned: the first is read inside the segment
    and by the caller."""

    def __init__(self, first, second):
        super().__init__()
        self.first, self.second = first, second

    def forward(self, q):
        a = self.first(q)
        return a, self.second(a)


def test_a_value_the_caller_reads_is_a_tensor_of_its_own(resnet20):
    folder, x = resnet20
    model = load_emitted(folder)
    convs = [m for m in model.modules() if isinstance(m, modules.QConv2d)]
    first, second = next((a, b) for a, b in zip(convs, convs[1:], strict=False)
                         if a.weight.shape[0] == b.weight.shape[1] and b.groups == 1)
    seen = []
    handle = first.register_forward_pre_hook(lambda m, i: seen.append(i[0]))
    model(x)
    handle.remove()
    pair = _TwoLayers(first, second)
    want = [pair(seen[0]) for _ in range(3)][0]  # the third call replays the plan
    got = pair(seen[0])
    assert got[0].equal(want[0]) and got[1].equal(want[1]) and got[0].float().std() > 0
    if host_conv.library() is not None:
        (kept,) = plan._plans[pair].values()
        assert [len(step[0].calls) for step in kept.steps] == [2]  # one segment


@pytest.fixture(scope="module")
def mobilenet(tmp_path_factory):
    """The real MobileNetV2 on the gemmlowp backend (depthwise, thin 1x1 and dense layers, adds), two photos."""
    out = tmp_path_factory.mktemp("plan") / "mobilenet"
    calib = list(open_data("builtin:photos", batch_size=8, limit=8))
    graph = lower(load_model("zoo:mobilenet_v2").module, (calib[0][0][:1],))
    run_pipeline(graph, "fuse,calibrate,convert{backend=gemmlowp}",
                 PassContext(calib_data=calib, quant_config=QuantConfig.from_preset("x86")))
    write_model(graph, out)
    return out, calib[0][0][:2]


def _forms() -> list[str]:
    """The byte forms this CPU runs (each caps the kernels as on a CPU whose best it is)."""
    best = host_conv.byte_isa() if host_conv.library() is not None else None
    return [] if best is None else list(host_conv.BYTE_ISAS[:host_conv.BYTE_ISAS.index(best) + 1])


@pytest.mark.parametrize("lookup", [True, False], ids=["add-table", "add-arithmetic"])
def test_every_kernel_form_replays_bit_exact_in_a_segment(mobilenet, monkeypatch, lookup):
    folder, x = mobilenet
    if not lookup:
        monkeypatch.setattr(host, "_has_avx512", lambda: False)
    kinds = set()
    for form in _forms():
        monkeypatch.setenv("QCOMPILE_BYTE_ISA", form)
        host_conv.byte_isa.cache_clear()
        host_conv.depthwise_isa.cache_clear()
        try:
            model = load_emitted(folder)
            want = _modules_call(model, x, monkeypatch)
            assert all(model(x).equal(want) for _ in range(3)), form  # modules, recording, replay
            (kept,) = plan._plans[model].values()
            segments = [step[0] for step in kept.steps if isinstance(step[0], segment.Segment)]
            # the whole call one segment: the quantize, the first convolution's NCHW input copied into
            # channels-last order, 52 convolutions and 10 adds, then the pooling, the flattening and the dropout
            # as copies, the classifier and the dequantize
            (whole,) = segments
            assert [step[0] for step in kept.steps] == [whole], form
            names = [type(c).__name__ for c in whole.calls]
            assert len(names) == 69 and names[:2] == ["QuantizeCall", "LayoutCall"], form
            assert names[-5:] == ["MeanCall", "CopyCall", "CopyCall", "_Call", "DequantizeCall"], form
            kinds |= {segment.KINDS[c.entry.__name__] for s in segments for c in s.calls}
        finally:
            host_conv.byte_isa.cache_clear()
            host_conv.depthwise_isa.cache_clear()
    if not _forms():
        pytest.skip("no host convolution kernels on this machine (no compiler or no AVX2)")
    # every form's kinds: the int16 GEMM or the byte form without VNNI, the AVX2 depthwise (capped forms), the
    # byte form with VNNI, AMX and the VNNI depthwise where the CPU has them; the add as the table or its
    # arithmetic, the layout copy, the pooling, the quantize and dequantize (this CPU, all forms: 0-5 and 8-11
    # with the table, 0-4, 6 and 8-11 without)
    assert {3, 8, 9, 10, 11} <= kinds and (0 in kinds or 4 in kinds)
    if len(_forms()) > 1:
        assert 4 in kinds
    assert (5 in kinds) == (lookup and host._has_avx512()) and (6 in kinds) != (5 in kinds)
    if "amx" in _forms():
        assert {1, 2} <= kinds
    elif "avx512-vnni" in _forms():
        assert 2 in kinds


def test_pooling_and_linear_layers_join_the_segments(tmp_path, monkeypatch):
    """The digit CNN (real weights): the quantize, convolutions, max pooling, two linear layers and the dequantize
    replay in two segments (its flattening, a view of the input's size, runs between them)."""
    calib = open_data("builtin:mnist5k", limit=64, batch_size=32)
    x = next(iter(calib))[0][:8]
    graph = lower(load_model("zoo:digit_cnn").module, (x[:1],))
    run_pipeline(graph, "fuse,calibrate,convert{backend=gemmlowp}",
                 PassContext(calib_data=calib, quant_config=QuantConfig.from_preset("x86")))
    write_model(graph, tmp_path / "digits")
    model = load_emitted(tmp_path / "digits")
    want = _modules_call(model, x, monkeypatch)
    assert all(model(x).equal(want) for _ in range(3))  # modules, recording, replay
    if host_conv.library() is None:
        return
    (kept,) = plan._plans[model].values()
    segments = [step[0] for step in kept.steps if isinstance(step[0], segment.Segment)]
    kinds = [[type(c).__name__ for c in s.calls] for s in segments]
    assert kinds == [["QuantizeCall", *["_Call", "PoolCall"] * 3], ["_Call", "_Call", "DequantizeCall"]], kinds
    assert want.shape == (8, 10) and want.std() > 1


def test_dropout_replays_as_a_copy_while_the_model_infers(mobilenet, monkeypatch):
    """MobileNetV2's classifier dropout is its input at inference: a copy in the segment, whose plan holds only
    while the dropout stays in inference mode."""
    folder, x = mobilenet
    model = load_emitted(folder)
    want = _modules_call(model, x, monkeypatch)
    assert all(model(x).equal(want) for _ in range(3))
    (kept,) = plan._plans[model].values()
    if host_conv.library() is None:
        pytest.skip("no host kernels on this machine")
    assert kept.valid()
    model.classifier_0.train()
    assert not kept.valid()
    model.classifier_0.eval()
    assert kept.valid() and model(x).equal(want)
