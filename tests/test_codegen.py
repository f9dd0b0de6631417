"""Codegen: readable source, exact round trips, weights, TorchScript."""

from __future__ import annotations

import ast

import torch

from qcompile.codegen import emit_python, load_model, write_model
from qcompile.frontend.lower import lower
from qcompile.pipeline import run_pipeline
from tests.models import Mixed, randomize_batch_norm


def test_round_trip_is_exact(tmp_path):
    model = randomize_batch_norm(Mixed())
    g = lower(model, (torch.randn(1, 3, 8, 8),))
    write_model(g, tmp_path)
    emitted = load_model(tmp_path)
    x = torch.randn(4, 3, 8, 8)
    for got, want in zip(emitted(x), model(x), strict=True):
        torch.testing.assert_close(got, want, rtol=0, atol=0)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["graph.qir", "model.py", "qcompile-signature.json", "weights.pt"]


def test_source_reads_like_eager_code():
    g = lower(randomize_batch_norm(Mixed()), (torch.randn(1, 3, 8, 8),))
    run_pipeline(g, "fuse")
    source = emit_python(g).source
    ast.parse(source)
    assert "class Mixed(nn.Module):" in source
    assert "self.stem_conv = nn.Conv2d(3, 8, (3, 3), padding=(1, 1))" in source  # defaults left out
    assert "stem_conv = F.relu(self.stem_conv(x))" in source  # fused activation
    assert "add = stem_conv + stem_conv" in source
    assert "cat = torch.cat([add, mul], dim=1)" in source
    assert "view = adaptive_avg_pool2d.view(size, -1)" in source
    assert "self.scale = nn.Parameter(torch.empty((1, 8, 1, 1), dtype=torch.float32))" in source
    assert "return (fc, mean)" in source


def test_emitted_module_scripts_and_reloads(tmp_path):
    model = randomize_batch_norm(Mixed())
    g = lower(model, (torch.randn(1, 3, 8, 8),))
    run_pipeline(g, "fuse")
    write_model(g, tmp_path / "out")
    emitted = load_model(tmp_path / "out")
    scripted = torch.jit.script(emitted)
    torch.jit.save(scripted, str(tmp_path / "s.pt"))
    reloaded = torch.jit.load(str(tmp_path / "s.pt"))
    x = torch.randn(2, 3, 8, 8)
    torch.testing.assert_close(reloaded(x)[0], emitted(x)[0], rtol=0, atol=0)


def test_write_is_atomic_no_temp_files_left(tmp_path):
    g = lower(Mixed(), (torch.randn(1, 3, 8, 8),))
    write_model(g, tmp_path)
    write_model(g, tmp_path)  # overwrite in place
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def _twice(x):
    return torch.from_numpy(x.numpy() * 2)  # TorchScript has no Tensor.numpy()


torch.fx.wrap("_twice")


class _CallsTwice(torch.nn.Module):
    def forward(self, x):
        return _twice(x) + 1


def test_aten_ops_from_torch_export_are_emitted_so_torchscript_compiles_them(tmp_path):
    from qcompile.deploy import save_torchscript

    program = torch.export.export(Mixed().eval(), (torch.randn(2, 3, 8, 8),),
                                  dynamic_shapes=({0: torch.export.Dim("batch")},))
    g = lower(program.module(), (torch.randn(1, 3, 8, 8),))
    source = emit_python(g).source
    assert "torch.ops.aten." in source and ".default(" not in source and ".int(" not in source
    write_model(g, tmp_path)
    path, diff = save_torchscript(tmp_path, (torch.randn(3, 3, 8, 8),))
    assert path.exists() and diff == 0


def test_model_torchscript_cannot_compile_is_a_clear_error(tmp_path):
    import pytest

    from qcompile.deploy import TORCHSCRIPT_FILE, save_torchscript
    from qcompile.errors import QCompileError

    write_model(lower(_CallsTwice(), (torch.randn(2, 3),)), tmp_path)
    with pytest.raises(QCompileError, match="TorchScript cannot compile .*model.py"):
        save_torchscript(tmp_path, (torch.randn(2, 3),))
    assert not (tmp_path / TORCHSCRIPT_FILE).exists()


def test_loading_an_int8_model_shows_no_torch_deprecation_warnings(tmp_path):
    import warnings

    from qcompile.backends.torch_ao.warnings import MESSAGES
    from qcompile.pipeline import PassContext

    torch.manual_seed(0)
    model = randomize_batch_norm(Mixed()).eval()
    graph = lower(model, (torch.randn(1, 3, 16, 16),))
    run_pipeline(graph, "ptq", PassContext(calib_data=[(torch.randn(4, 3, 16, 16),)]))
    write_model(graph, tmp_path)
    before = list(warnings.filters)
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        loaded = load_model(tmp_path)
        shown_inside = list(warnings.filters)
    assert any(type(m).__module__.startswith("torch.ao.nn.quantized") for m in loaded.modules())
    assert not [w for w in seen if any(text in str(w.message) for text in MESSAGES)], [str(w.message) for w in seen]
    assert shown_inside[0][0] == "always" and warnings.filters == before  # the caller's filters, untouched


def test_the_emitted_load_shows_no_torch_deprecation_warnings_on_its_own(tmp_path):
    """model.py used without qcompile (a deployment): its load() silences torch's deprecation of quantized
    tensors for the load only; the caller's warning filters are untouched."""
    import subprocess
    import sys

    from qcompile.pipeline import PassContext

    torch.manual_seed(0)
    model = randomize_batch_norm(Mixed()).eval()
    graph = lower(model, (torch.randn(1, 3, 16, 16),))
    run_pipeline(graph, "ptq", PassContext(calib_data=[(torch.randn(4, 3, 16, 16),)]))
    write_model(graph, tmp_path)
    script = ("import warnings, torch\n"
              "from model import load\n"
              "before = list(warnings.filters)\n"
              "model = load()\n"
              "assert warnings.filters == before\n"
              "torch.save(model(torch.load('x.pt')), 'out.pt')\n")
    x = torch.randn(2, 3, 16, 16)
    torch.save(x, tmp_path / "x.pt")
    run = subprocess.run([sys.executable, "-W", "always", "-c", script], cwd=tmp_path, capture_output=True,
                         text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    assert "deprecated" not in run.stderr, run.stderr
    for got, want in zip(torch.load(tmp_path / "out.pt"), load_model(tmp_path)(x), strict=True):
        torch.testing.assert_close(got, want, rtol=0, atol=0)
