"""Finding where accuracy went: per-pass trace, per-layer SQNR, sensitivity, the HTML report, MLflow."""

from __future__ import annotations

import json
import re
import shutil
import subprocess

import pytest
import torch

from qcompile.data import open_data
from qcompile.diagnose.session import Diagnostics
from qcompile.frontend.loaders import load_model
from qcompile.frontend.lower import lower
from qcompile.pipeline import PassContext, PassManager, parse_pipeline
from qcompile.quant.config import QuantConfig, load_quant_config
from tests.pipelines import NATIVE_PTQ
from tests.test_cli import qcompile

PIPELINE = "fuse,calibrate,bitalloc{budget=5},aciq{bits=6},convert"


@pytest.fixture(scope="module")
def digits_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("diagnose") / "out"
    run = qcompile("zoo:digit_cnn", "--passes", PIPELINE, "--calib", "builtin:mnist5k", "--calib-samples", "256",
                   "--trace-error", "--layers", "--sensitivity", "30", "--report", "-o", out)
    assert run.returncode == 0, run.stderr
    return run, out


def test_trace_shows_where_the_error_appears(digits_run):
    run, _ = digits_run
    rows = dict(re.findall(r"^\| (\w[\w-]*) \| (exact|[\d.-]+) \| [\d.]+ \| [\d.]+ \|$", run.stdout, re.M))
    assert list(rows)[:4] == ["fuse", "stubs", "observe", "calibrate"]
    assert all(rows[p] == "exact" for p in ("fuse", "stubs", "observe", "calibrate", "bitalloc", "aciq"))
    assert 10 < float(rows["convert"]) < 60  # the error appears at convert, and only there


def test_layers_worst_first_and_sensitivity_with_a_checked_skip_list(digits_run):
    run, _ = digits_run
    layers = re.findall(r"^\| (\w+) \| (\w+) \| (\w+) \| ([\d.]+) \|$", run.stdout, re.M)
    values = [float(v) for *_, v in layers[:10]]
    assert len(layers) >= 10 and values == sorted(values)
    assert any(compared.endswith("_clamp6b") for _, _, compared, _ in layers)  # the 6-bit grid is compared
    suggestion = re.search(r"suggested skip list \((\d+) layers, (meets|does not reach) 30 dB in emulation: "
                           r"([\d.]+) -> ([\d.]+) dB\):\n(.*)\n", run.stdout)
    assert suggestion and float(suggestion[4]) > float(suggestion[3])
    skips = suggestion[5].split()[1::2]
    assert skips and all(s in run.stdout for s in skips)
    real = dict(re.findall(r"real run (as compiled|with the \d+ suggested skips): output SQNR ([\d.]+) dB", run.stdout))
    assert len(real) == 2
    before, after = (float(v) for v in real.values())
    assert after > before  # the real pipeline with the skips is closer to float


def test_report_is_one_self_contained_page(digits_run):
    _, out = digits_run
    page = (out / "report.html").read_text()
    for section in ("Model", "Comparison", "Pipeline", "Graph", "Per-layer error", "Activation histograms",
                    "ACIQ expected-MSE curves", "Bit allocation", "Sensitivity"):
        assert f"<h2>{section}" in page, section
    assert page.count('src="data:image/png;base64,') >= 4 and "<svg" in page
    assert "http://" not in page.replace("http://www.w3.org", "") and "https://" not in page  # nothing external
    assert "| float |" not in page and "<td>emitted</td>" in page


CHECKER = """<script>
window.__errors = [];
window.addEventListener('error', function (e) { window.__errors.push(String(e.message)); });
window.addEventListener('load', function () {
  var images = Array.prototype.slice.call(document.images);
  var loaded = images.filter(function (i) { return i.complete && i.naturalWidth > 0; }).length;
  var table = document.querySelector('table.sortable');
  var before = table.tBodies[0].rows[0].cells[0].textContent;
  table.tHead.rows[0].cells[0].click();  // ascending: 'emitted' before 'float'
  var sorted = table.tBodies[0].rows[0].cells[0].textContent;
  document.title = 'CHECK ' + JSON.stringify({images: images.length, loaded: loaded, errors: window.__errors,
                                               svg: document.querySelectorAll('svg').length,
                                               sorted: before !== sorted || table.tBodies[0].rows.length < 2});
});
</script>"""


@pytest.mark.slow
def test_report_renders_in_a_real_headless_browser(digits_run, tmp_path):
    chromium = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
    assert chromium, "Chromium is installed by scripts/test.sh (Debian package chromium)"
    _, out = digits_run
    page = (out / "report.html").read_text().replace("<head>", "<head>" + CHECKER, 1)
    probe = tmp_path / "probe.html"
    probe.write_text(page)
    run = subprocess.run([chromium, "--headless=new", "--no-sandbox", "--disable-gpu", "--virtual-time-budget=10000",
                          "--dump-dom", probe.as_uri()], capture_output=True, text=True, timeout=120)
    title = re.search(r"<title>CHECK (.*?)</title>", run.stdout)
    assert title, run.stderr[-2000:]
    result = json.loads(title[1].replace("&quot;", '"'))
    assert result["errors"] == [] and result["images"] >= 4 and result["loaded"] == result["images"]
    assert result["svg"] >= 1 and result["sorted"]
    shot = tmp_path / "report.png"
    subprocess.run([chromium, "--headless=new", "--no-sandbox", "--disable-gpu", "--window-size=1200,2400",
                    f"--screenshot={shot}", (out / "report.html").as_uri()], capture_output=True, timeout=120)
    assert shot.stat().st_size > 50_000  # a page with plots, not a blank one


def test_mlflow_logs_parameters_metrics_and_the_report(tmp_path, monkeypatch):
    mlflow = pytest.importorskip("mlflow", reason="the test extra installs mlflow-skinny")
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")  # to read the store back here, as qcompile writes it
    store = f"file:{tmp_path / 'mlruns'}"
    run = qcompile("zoo:digit_cnn", "--passes", "ptq", "--calib", "builtin:mnist5k", "--calib-samples", "128",
                   "--report", "--mlflow", store, "-o", tmp_path / "out")
    assert run.returncode == 0, run.stderr
    run_id = re.search(r"logged MLflow run (\w+)", run.stderr)[1]
    client = mlflow.tracking.MlflowClient(tracking_uri=store)
    logged = client.get_run(run_id).data
    assert logged.params["pipeline"] == "fuse,equalize,stubs,observe,calibrate,convert"
    assert 10 < logged.metrics["output_sqnr_db"] < 80 and "seconds.calibrate" in logged.metrics
    assert [a.path for a in client.list_artifacts(run_id)] == ["report.html"]


def test_diagnostics_need_data(tmp_path):
    run = qcompile("zoo:digit_cnn", "--passes", "fuse", "--trace-error", "-o", tmp_path / "o")
    assert run.returncode == 2 and "need data" in run.stderr and not (tmp_path / "o").exists()


@pytest.mark.slow
def test_suggested_skips_raise_agreement_on_real_mobilenet_v2():
    """Seed 004's low-accuracy case: the default preset (per-tensor weights) on MobileNetV2, as torch.ao runs it
    (no equalization, torch's kernels)."""
    model = load_model("zoo:mobilenet_v2").module
    calib, evaluation = open_data("builtin:photos", batch_size=16).interleaved_split()
    x = torch.cat([b[0] for b in evaluation])[:16]
    config = QuantConfig.from_preset("default")
    diagnostics = Diagnostics((x,))
    graph = lower(model, (x[:1],))
    ctx = PassContext(calib_data=calib, quant_config=config)
    PassManager(parse_pipeline(NATIVE_PTQ), diagnostics.instruments()).run(graph, ctx)
    layers = diagnostics.per_layer(graph)
    assert layers[0].sqnr_db < 5  # the report points at layers far from float

    def rerun(skip):
        again = lower(model, (x[:1],))
        skipped = load_quant_config(preset="default", skip=skip)
        PassManager(parse_pipeline(NATIVE_PTQ)).run(again, PassContext(calib_data=calib, quant_config=skipped))
        return again

    suggestion = diagnostics.sensitivity(ctx, 12.0, rerun, graph)
    (_, sqnr_before, agree_before), (_, sqnr_after, agree_after) = diagnostics.findings.verification
    assert suggestion.skip and sqnr_after > sqnr_before + 3 and agree_after > agree_before


def test_sensitivity_needs_a_quantizing_pipeline(tmp_path):
    run = qcompile("zoo:digit_cnn", "--passes", "fuse", "--sensitivity", "10", "--calib", "builtin:mnist5k",
                   "-o", tmp_path / "o")
    assert run.returncode == 2 and "calibrates, then converts or simulates" in run.stderr
    assert not (tmp_path / "o").exists()


def test_one_step_reach_changes_one_element_by_one_step():
    from qcompile.diagnose.amplification import final_integer_node, one_step_reach
    from qcompile.errors import QCompileError
    from qcompile.pipeline import run_pipeline

    batches = list(open_data("builtin:mnist5k", limit=64, batch_size=64))
    model = load_model("zoo:digit_cnn").module
    float_graph = lower(model, (batches[0][0][:1],))
    graph = float_graph.copy()
    run_pipeline(graph, "ptq", PassContext(calib_data=batches))
    x = batches[0][0][:1]
    last = final_integer_node(graph)
    at_output = one_step_reach(graph, x, node=last.name)  # nothing after it: exactly one step, once
    assert (at_output.node, at_output.max_lsb, at_output.moved) == (last.name, 1, 0.0)
    first = one_step_reach(graph, x, trials=32)
    # this small CNN keeps one step local: nothing at the output moves by more than one step
    assert (first.node, first.trials, first.moved) == ("conv_layers_0", 32, 0.0) and first.max_lsb <= 1
    with pytest.raises(QCompileError, match="no integer output"):
        one_step_reach(graph, x, node=graph.inputs(graph.output_node)[0].name)
    with pytest.raises(QCompileError, match="not a single dequantized integer value"):
        one_step_reach(float_graph, x)


def test_emulated_skips_compute_what_the_real_pipeline_with_them_computes():
    """A skipped layer's output is still quantized where a quantized layer reads it, as the stubs do it for real."""
    from qcompile.diagnose.metrics import sqnr_db
    from qcompile.diagnose.sensitivity import SensitivityAnalysis
    from qcompile.interpreter import Interpreter

    model = load_model("zoo:digit_cnn").module
    batches = list(open_data("builtin:mnist5k", limit=384, batch_size=128))
    calib, x = [(b[0],) for b in batches[:2]], batches[2][0]
    passes = "fuse,calibrate,simulate{bits=4 weight-bits=4}"
    float_graph = lower(model, (x[:1],))
    PassManager(parse_pipeline("fuse")).run(float_graph, PassContext())
    reference = Interpreter(float_graph).run(x)
    calibrated = lower(model, (x[:1],))
    PassManager(parse_pipeline("fuse,stubs,observe,calibrate")).run(calibrated, PassContext(calib_data=calib))
    rest = tuple(p for p in parse_pipeline(passes).passes if p.name == "simulate")
    analysis = SensitivityAnalysis(calibrated, rest, PassContext(calib_data=calib), (x,), reference)
    weighted = [n.name for n in analysis.layers if n.op in ("conv2d", "linear")]
    assert len(weighted) == 5
    # conv_layers_6 is left out: skipped, its stub lands after the pooling and flatten that follow it, on a
    # grid calibrated on the pooled values (0.18 dB apart here); every other layer's stub reads the layer itself
    for skip in ([], weighted[:1], weighted[1:2], weighted[3:4], weighted[:2], [weighted[1], weighted[4]]):
        real = lower(model, (x[:1],))
        config = load_quant_config(skip=skip)
        PassManager(parse_pipeline(passes)).run(real, PassContext(calib_data=calib, quant_config=config))
        measured = sqnr_db(Interpreter(real).run(x), reference)
        assert analysis.sqnr(set(analysis.names) - set(skip)) == pytest.approx(measured, abs=0.01), skip
