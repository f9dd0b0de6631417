"""``--target-agreement`` / ``--target-sqnr``: the cheapest pipeline that meets a target, by real runs."""

from __future__ import annotations

import re

import pytest

from qcompile.pipeline import parse_pipeline
from qcompile.target_search import LADDER, candidates
from tests.test_cli import qcompile

_TRIAL = re.compile(r"qcompile: target: (meets|misses) .*?: (.+?): agreement ([\d.]+), ([\d.]+) dB")


def _trials(stderr: str) -> list[tuple[str, str, float, float]]:
    return [(m[1], m[2], float(m[3]), float(m[4])) for m in _TRIAL.finditer(stderr)]


def test_ladder_tries_the_users_pipeline_first_and_no_rung_twice():
    tried = candidates(parse_pipeline("ptq"))  # the default is the first rung: it is not tried again
    assert [label for label, _ in tried] == ["your pipeline"] + [label for label, _ in LADDER[1:]]
    assert len(candidates(parse_pipeline("fuse,calibrate,convert"))) == 1 + len(LADDER)


def test_rungs_keep_the_users_weight_bit_width():
    tried = candidates(parse_pipeline("fuse,calibrate,convert{weight-bits=4 eight-bit=conv1}"))
    assert len(tried) == 1 + len(LADDER)
    assert all("convert{weight-bits=4 eight-bit=conv1}" in str(p) for _, p in tried)


def test_per_layer_bit_widths_come_before_layers_kept_float(tmp_path):
    """At 4-bit weights no rung reaches 33.5 dB on the digit CNN (second-order rounding: 33.2, learned rounding:
    31.6); the closest, second-order rounding, with the layer sensitivity ranks worst at 8-bit weights does
    (34.4), and nothing is kept float."""
    out = tmp_path / "out"
    run = qcompile("zoo:digit_cnn", "--passes", "fuse,calibrate,convert{weight-bits=4}", "--calib", "builtin:mnist5k",
                   "--calib-samples", "256", "--no-verdict", "--target-sqnr", "33.5", "-o", out)
    assert run.returncode == 0, run.stderr
    trials = _trials(run.stderr)
    closest = max(trials[:-1], key=lambda t: t[3])[1]
    assert closest == "second-order rounding (seconds)"
    assert [t[1] for t in trials] == ["your pipeline"] + [label for label, _ in LADDER] + [
        f"{closest}, 1 layers at 8-bit weights"]
    assert [t[0] for t in trials] == ["misses"] * (1 + len(LADDER)) + ["meets"] and trials[-1][3] >= 33.5
    wide = re.findall(r"eight-bit=(\S+?)}", run.stderr)[-1].split(",")  # the trial that met it
    graph = (out / "graph.qir").read_text()
    lines = {name: next(line for line in graph.splitlines() if line.strip().startswith(f"%{name} "))
             for name in ("conv_layers_0", "conv_layers_3", "conv_layers_6", "fc_layers_0", "fc_layers_2")}
    assert len(wide) == 1 and "bits=" not in lines[wide[0]]  # 8-bit: no per-channel bit widths
    assert all("4..4" in line for name, line in lines.items() if name not in wide)
    assert "skipped by the config" not in graph


def test_eight_bit_layers_need_fewer_bits_elsewhere_and_real_names(tmp_path):
    args = ("zoo:digit_cnn", "--calib", "builtin:mnist5k", "--calib-samples", "64", "--no-verdict")
    eight = qcompile(*args, "--passes", "fuse,calibrate,convert{eight-bit=conv_layers_0}", "-o", tmp_path / "a")
    assert eight.returncode != 0 and "every weight has 8 bits already" in eight.stderr
    typo = qcompile(*args, "--passes", "fuse,calibrate,convert{weight-bits=4 eight-bit=conv9}", "-o", tmp_path / "b")
    assert typo.returncode != 0 and "'conv9' names no layer with weights" in typo.stderr
    assert "conv_layers_0" in typo.stderr and not (tmp_path / "b").exists()


def test_layers_kept_float_are_the_last_resort_and_a_missed_target_writes_nothing(tmp_path):
    out = tmp_path / "out"
    args = ("zoo:digit_cnn", "--calib", "builtin:mnist5k", "--calib-samples", "256", "--no-verdict")
    # 44 dB: no pipeline alone reaches it (41-42 dB), one layer kept float does
    kept = qcompile(*args, "--target-sqnr", "44", "-o", out)
    assert kept.returncode == 0, kept.stderr
    trials = _trials(kept.stderr)
    assert [t[1] for t in trials[:len(LADDER)]] == ["your pipeline"] + [label for label, _ in LADDER[1:]]
    assert all(t[0] == "misses" and t[3] < 44 for t in trials[:-1])
    assert trials[-1][0] == "meets" and trials[-1][1].endswith("1 layers kept float") and trials[-1][3] >= 44
    skipped = re.search(r"--skip (\S+)\)", kept.stderr)[1]
    assert f"%{skipped} " in (out / "graph.qir").read_text() and "skipped by the config" in (out / "graph.qir").read_text()
    # 60 dB: a quarter of the layers (one) kept float is not enough either: the closest is named, nothing written
    missed = tmp_path / "missed"
    run = qcompile(*args, "--target-sqnr", "60", "-o", missed)
    assert run.returncode == 4, run.stderr
    trials = _trials(run.stderr)
    assert all(verdict == "misses" and sqnr < 60 for verdict, _, _, sqnr in trials)
    closest = max(trials, key=lambda t: t[3])
    assert f"the closest was {closest[1]}" in run.stderr and "--write-best" in run.stderr
    assert not missed.exists()
    written = qcompile(*args, "--target-sqnr", "60", "--write-best", "-o", missed)
    assert written.returncode == 4, written.stderr
    assert (missed / "model.py").is_file() and "wrote the closest pipeline" in written.stderr


@pytest.mark.slow
def test_mobilenet_v2_climbs_until_the_agreement_is_met(tmp_path):
    out = tmp_path / "out"
    # from torch's kernels on 7-bit grids (about 0.77 on these samples) to the default, which meets it
    run = qcompile("zoo:mobilenet_v2", "--passes", "fuse,calibrate,convert{backend=native}", "--calib",
                   "builtin:photos", "--target-agreement", "0.8", "--no-verdict", "-o", out)
    assert run.returncode == 0, run.stderr
    trials = _trials(run.stderr)
    assert "on 64 samples of builtin:photo-crops, held out from builtin:photos" in run.stderr
    assert [(t[0], t[1]) for t in trials] == [("misses", "your pipeline"), ("meets", LADDER[0][0])]
    assert trials[-1][2] >= 0.8 > trials[0][2]
    # the written model is the one that met it: backend=auto put it on qcompile's kernels
    assert "backend='gemmlowp'" in (out / "graph.qir").read_text()


def test_a_target_needs_data_and_one_pipeline_of_tools(tmp_path):
    no_data = qcompile("zoo:digit_cnn", "--passes", "fuse,stubs,observe,load-stats,convert", "--target-sqnr", "30",
                       "-o", tmp_path / "a")
    assert no_data.returncode == 2 and "needs calibration data" in no_data.stderr
    timed = qcompile("zoo:digit_cnn", "--calib", "builtin:mnist5k", "--target-sqnr", "30", "--timing",
                     "-o", tmp_path / "b")
    assert timed.returncode == 2 and "runs several pipelines" in timed.stderr
    out_of_range = qcompile("zoo:digit_cnn", "--calib", "builtin:mnist5k", "--target-agreement", "1.5",
                            "-o", tmp_path / "c")
    assert out_of_range.returncode == 2 and "must be from 0 to 1" in out_of_range.stderr


def test_pipelines_that_calibrate_alike_share_one_calibration_and_compute_the_same():
    import torch

    from qcompile.data import open_data
    from qcompile.frontend.loaders import load_model
    from qcompile.frontend.lower import lower
    from qcompile.interpreter import Interpreter
    from qcompile.ir import print_graph
    from qcompile.pipeline import PassContext, PassManager
    from qcompile.target_search import compiled

    batches = list(open_data("builtin:mnist5k", limit=192, batch_size=64))
    ctx = PassContext(calib_data=[(b[0],) for b in batches[:2]])
    graph = lower(load_model("zoo:digit_cnn").module, (batches[2][0][:1],))
    cache: dict = {}
    for text in ("fuse,equalize,calibrate,convert{backend=gemmlowp}",
                 "fuse,equalize,calibrate,aciq{weights=true},convert{backend=gemmlowp}",
                 "fuse,equalize,calibrate,bias-correct,convert{backend=gemmlowp}",
                 "fuse,equalize,calibrate,convert"):
        shared, records = compiled(graph, parse_pipeline(text), ctx, cache)
        alone = graph.copy()
        PassManager(parse_pipeline(text)).run(alone, ctx)
        assert [r.pass_.name for r in records] == [p.name for p in parse_pipeline(text).passes]
        assert print_graph(shared) == print_graph(alone), text
        x = batches[2][0]
        assert torch.equal(Interpreter(shared).run(x), Interpreter(alone).run(x)), text
    assert len(cache) == 3  # gemmlowp grids, the same with aciq's moments, native grids: calibrated once each
