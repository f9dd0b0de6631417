"""qcompile on several processes (torchrun, gloo): the same results as one process.

The end-to-end tests start real ``torchrun`` runs of 2 processes on this
machine and compare what they write with a one-process run on the same
samples; both use one thread per process, as torchrun sets it.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from qcompile.data import open_data
from qcompile.distributed import World, single_process
from qcompile.distributed.shards import my_batch_count, my_batches, my_slice, training_batches
from qcompile.errors import QCompileError

ROOT = Path(__file__).resolve().parent.parent
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}
CALIB = ["--calib", "builtin:mnist5k", "--calib-samples", "500", "--batch-size", "30", "--no-verdict"]


def _one_process(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *args], env=ENV, capture_output=True, text=True, timeout=600, cwd=ROOT)


def _torchrun(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", *args]
    return subprocess.run(command, env=ENV, capture_output=True, text=True, timeout=600, cwd=cwd)


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


# --- which rank works on what -------------------------------------------------------------------------


def test_one_process_collectives_are_identities():
    world = single_process()
    x = torch.tensor([1.5, -2.0])
    assert torch.equal(world.all_reduce(x, "min"), x) and world.all_gather("a") == ["a"]
    assert not world.distributed and world.is_main
    with pytest.raises(QCompileError, match="plain"):  # one process: errors pass through unchanged
        with world.together("step"):
            raise QCompileError("plain")


def test_interleave_restores_the_global_batch_order():
    world = World(rank=0, size=3)
    assert world.interleave([[0, 3, 6], [1, 4], [2, 5]]) == [0, 1, 2, 3, 4, 5, 6]


def test_shards_deal_whole_batches_round_robin():
    data = open_data("builtin:mnist5k", limit=100, batch_size=30)  # batches of 30, 30, 30, 10
    one = [b[0] for b in data]
    shards = [[b[0] for _, b in my_batches(data, World(rank, 2))] for rank in (0, 1)]
    assert [len(b) for b in shards[0]] == [30, 30] and [len(b) for b in shards[1]] == [30, 10]
    assert all(torch.equal(a, b) for a, b in zip(World(0, 2).interleave(shards), one, strict=True))
    assert [my_batch_count(data, World(rank, 2)) for rank in (0, 1)] == [2, 2]
    assert [len(list(my_batches(data, World(rank, 2), max_batches=3))) for rank in (0, 1)] == [2, 1]
    assert [[i for i, _ in my_batches(data, World(rank, 2))] for rank in (0, 1)] == [[0, 2], [1, 3]]  # global


def test_too_few_batches_for_the_processes_is_refused():
    data = open_data("builtin:mnist5k", limit=40, batch_size=32)
    with pytest.raises(QCompileError, match="2 batches for 3 processes"):
        list(my_batches(data, World(0, 3)))


def test_slices_cover_every_sample_once():
    parts = [my_slice(10, World(rank, 4)) for rank in range(4)]
    assert [(p.start, p.stop) for p in parts] == [(0, 3), (3, 6), (6, 8), (8, 10)]


def test_training_batches_split_each_global_batch():
    data = open_data("builtin:fashion-train", limit=100, batch_size=64)
    halves = [list(training_batches(data, World(rank, 2))) for rank in (0, 1)]
    assert [(len(x), n) for x, _, n in halves[0]] == [(32, 64), (18, 36)]
    assert torch.equal(torch.cat([halves[0][0][1], halves[1][0][1]]), data.labels[:64])
    with pytest.raises(QCompileError, match="cannot be split over 3 processes"):
        list(training_batches(open_data("builtin:fashion-train", limit=66, batch_size=64), World(0, 3)))


# --- end to end under torchrun ---------------------------------------------------------------------------

MOVING_AVERAGE = '[[override]]\nmatch = "*"\nactivation = { kind = "moving_average" }\n'
PERCENTILE = '[[override]]\nmatch = "*"\nactivation = { kind = "percentile" }\n'


@pytest.mark.slow
@pytest.mark.parametrize("passes, qconfig", [
    ("ptq", None),  # histogram activations (the default preset), per-channel min/max weights
    ("fuse,calibrate,aciq,convert", MOVING_AVERAGE),  # per-batch moments and a moving average
    ("ptq", PERCENTILE),
], ids=["histogram", "aciq-moving-average", "percentile"])
def test_two_processes_write_byte_identical_output(tmp_path, passes, qconfig):
    extra = []
    if qconfig:
        (tmp_path / "q.toml").write_text(qconfig)
        extra = ["--qconfig", str(tmp_path / "q.toml")]
    args = ["zoo:digit_cnn", "--passes", passes, *CALIB, *extra, "--save-stats", "OUT/stats.json"]
    one = _one_process("-m", "qcompile", *[a.replace("OUT", str(tmp_path / "one")) for a in args],
                       "-o", str(tmp_path / "one"))
    assert one.returncode == 0, one.stderr
    work = tmp_path / "cwd"
    work.mkdir()
    two = _torchrun("-m", "qcompile", *[a.replace("OUT", str(tmp_path / "two")) for a in args],
                    "-o", str(tmp_path / "two"), cwd=work)
    assert two.returncode == 0, two.stderr
    assert "calibrate: changed (batches: 17" in two.stderr  # the batches of both ranks
    assert two.stderr.count("qcompile: wrote") == 2  # stats and OUT, once: rank 1 prints nothing
    written = _files(tmp_path / "one")
    assert {"graph.qir", "weights.pt", "stats.json"} <= set(written)
    assert _files(tmp_path / "two") == written
    assert not any(work.iterdir())  # no rank wrote anything else


@pytest.mark.slow
def test_a_failure_on_one_rank_stops_all_with_one_error(tmp_path):
    x = torch.rand(64, 1, 28, 28)
    x[40, 0, 0, 0] = float("nan")  # in the second batch of 32: rank 1's
    torch.save({"x": x}, tmp_path / "bad.pt")
    run = _torchrun("-m", "qcompile", "zoo:digit_cnn", "--passes", "ptq", "--calib", str(tmp_path / "bad.pt"),
                    "-o", str(tmp_path / "out"))
    assert run.returncode != 0
    errors = [line for line in run.stderr.splitlines() if line.startswith("qcompile: error:")]
    assert errors == ["qcompile: error: calibrate failed on rank 1 of 2: calibration batch 1: input %x contains "
                      "NaN or Inf"]
    assert not (tmp_path / "out").exists()


@pytest.mark.slow
def test_bias_correction_on_two_processes_matches_one(tmp_path):
    args = ["zoo:digit_cnn", "--passes", "fuse,calibrate,bias-correct{samples=64},simulate", *CALIB]
    one = _one_process("-m", "qcompile", *args, "-o", str(tmp_path / "one"))
    two = _torchrun("-m", "qcompile", *args, "-o", str(tmp_path / "two"))
    assert one.returncode == 0 and two.returncode == 0, one.stderr + two.stderr
    a, b = torch.load(tmp_path / "one" / "weights.pt"), torch.load(tmp_path / "two" / "weights.pt")
    biases = [k for k in a if k.endswith("bias")]
    assert biases and a.keys() == b.keys()
    for key in biases:
        torch.testing.assert_close(b[key], a[key], rtol=1e-4, atol=1e-5)  # float32 sums in another order


def _train(tmp_path: Path, qat: bool) -> tuple[dict, dict]:
    worker = str(ROOT / "tests" / "distributed_worker.py")
    one = _one_process(worker, str(tmp_path / "one.pt"), str(int(qat)))
    two = _torchrun(worker, str(tmp_path / "two.pt"), str(int(qat)))
    assert one.returncode == 0 and two.returncode == 0, one.stderr + two.stderr
    return torch.load(tmp_path / "one.pt"), torch.load(tmp_path / "two.pt")


@pytest.mark.slow
def test_data_parallel_training_matches_one_process_on_the_global_batch(tmp_path):
    """Float ResNet-20 with BatchNorm training: 4 steps of SGD agree to float rounding."""
    one, two = _train(tmp_path, qat=False)
    assert one["params"].keys() == two["params"].keys()
    for key, value in one["params"].items():
        torch.testing.assert_close(two["params"][key], value, rtol=1e-4, atol=1e-5, msg=key)
    assert two["history"][0]["loss"] == pytest.approx(one["history"][0]["loss"], rel=1e-5)


@pytest.mark.slow
def test_data_parallel_qat_matches_one_process_within_rounding_flips(tmp_path):
    """Fake quantization rounds: a 1e-7 difference flips a code here and there, and flips grow."""
    one, two = _train(tmp_path, qat=True)
    for key, value in one["params"].items():
        scale = float(value.abs().max()) or 1.0
        assert float((two["params"][key] - value).abs().max()) <= 0.02 * scale, key
    assert two["history"][0]["loss"] == pytest.approx(one["history"][0]["loss"], rel=0.02)
    assert two["history"][0]["accuracy"] == pytest.approx(one["history"][0]["accuracy"], abs=0.02)
