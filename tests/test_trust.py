"""What qcompile refuses to do to a user: run code it was not asked to run, write garbage, lose OUT.

The command runs in-process (``qcompile.cli.main.main``) on the real digit
CNN with MNIST, so each case costs a compile, not a new interpreter.
"""

from __future__ import annotations

import io
import json
import os
import zipfile
from pathlib import Path

import pytest
import torch
from torch import nn

from qcompile.cli.main import main
from qcompile.errors import PipelineError
from qcompile.pipeline import parse_pipeline

DIGITS = ["zoo:digit_cnn", "--calib", "builtin:mnist5k", "--calib-samples", "64"]


def run(capsys, *args) -> tuple[int, str]:
    try:
        status = main([str(a) for a in args])
    except SystemExit as exc:  # argparse's own errors
        status = exc.code
    return status, capsys.readouterr().err


class _Evil:
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def _archive_with_a_pickled_payload(tmp_path: Path, marker: Path, route: str) -> Path:
    """A real torch.export archive with a pickle that creates ``marker`` when loaded: as its example inputs,
    or as a weight marked as pickled (the two routes by which torch 2.14's loader unpickles)."""
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU()).eval()
    buffer = io.BytesIO()
    torch.export.save(torch.export.export(model, (torch.randn(1, 3, 8, 8),)), buffer)
    payload = _pickled(_Evil(marker))
    with zipfile.ZipFile(buffer) as source:
        members = {info.filename: source.read(info.filename) for info in source.infolist()}
    if route == "example inputs":
        name = next(n for n in members if n.endswith("sample_inputs/model.pt"))
        members[name] = payload
    else:
        name = next(n for n in members if n.endswith("model_weights_config.json"))
        config = json.loads(members[name])
        entry = next(iter(config["config"].values()))
        entry["use_pickle"] = True
        members[name] = json.dumps(config).encode()
        members[next(n for n in members if n.endswith(f"weights/{entry['path_name']}"))] = payload
    path = tmp_path / f"evil_{route.replace(' ', '_')}.pt2"
    with zipfile.ZipFile(path, "w") as target:
        for member, data in members.items():
            target.writestr(member, data)
    return path


def test_a_pt2_archive_cannot_run_code_without_trust(tmp_path, capsys):
    for route in ("example inputs", "weight"):
        marker = tmp_path / f"ran_{route.replace(' ', '_')}"
        path = _archive_with_a_pickled_payload(tmp_path, marker, route)
        status, err = run(capsys, path, "--passes", "fuse", "-o", tmp_path / "out")
        assert status == 2 and "stores pickled objects beyond tensors" in err and "--trust-pickle" in err, route
        assert "pathlib" in err or "GLOBAL" in err  # names what the pickle wanted
        assert not marker.exists() and not (tmp_path / "out").exists(), route
        run(capsys, path, "--passes", "fuse", "--trust-pickle", "-o", tmp_path / "out")  # trusted, torch's loader does run it
        assert marker.exists(), route


def _pickled(obj) -> bytes:
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    return buffer.getvalue()


def test_compare_runs_only_outputs_this_user_wrote(tmp_path, capsys):
    out = tmp_path / "out"
    assert run(capsys, *DIGITS, "--passes", "ptq", "-o", out)[0] == 0
    compare = ["compare", "zoo:digit_cnn", out, "--data", "builtin:mnist5k", "--samples", "32", "--repeats", "1"]
    assert run(capsys, *compare)[0] == 0
    with open(out / "model.py", "a") as f:
        f.write("\nraise SystemExit('someone else wrote this')\n")
    status, err = run(capsys, *compare)
    assert status == 2 and "was not written by qcompile as this user" in err and "--trust-out" in err
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    for name in ("model.py", "weights.pt"):
        (foreign / name).write_bytes((out / name).read_bytes())
    assert run(capsys, "compare", "zoo:digit_cnn", foreign, "--data", "builtin:mnist5k")[0] == 2
    with pytest.raises(SystemExit, match="someone else wrote this"):  # --trust-out runs it, as asked
        main([str(a) for a in compare + ["--trust-out"]])


@pytest.mark.parametrize("pipeline, message", [
    ("fuse,calibrate,aciq{prior=std k=nan},convert", "k must be a finite number, got nan"),
    ("fuse,calibrate,aciq{k=-1}", "k must be above 0"),
    ("fuse,calibrate,simulate{bits=0 weight-bits=-2}", "bits must be from 1 to 8, got 0"),
    ("fuse,calibrate{max-batches=-5}", "max-batches must be at least 0, got -5"),
    ("fuse,calibrate,aciq{k=1 k=2}", "option 'k' of 'aciq' is given twice"),
    ("qat,train{lr=inf}", "lr must be a finite number"),
    ("fuse,calibrate,bitalloc{budget=9}", "budget must be above 0 and at most 8"),
])
def test_pass_options_are_checked_when_parsed(pipeline, message):
    with pytest.raises(PipelineError, match=message.replace("(", r"\(")):
        parse_pipeline(pipeline)


def test_option_ranges_are_listed(capsys):
    assert main(["passes"]) == 0
    listing = capsys.readouterr().out
    assert "k: float = 2.0 (above 0)" in listing and "bits: int = 8 (from 2 to 8)" in listing


def _poison_pass(tmp_path: Path, name: str, body: str) -> Path:
    plugin = tmp_path / f"{name.replace('-', '_')}.py"
    plugin.write_text(
        "import torch\nfrom qcompile.pipeline import function_pass\n\n"
        f"@function_pass('{name}', requires=('fused',))\n"
        "def poison(graph, ctx):\n"
        f"{body}\n"
        "    return True\n")
    return plugin


@pytest.mark.parametrize("body, message", [
    ("    last = graph.find(op='linear')[-1]\n"
     "    graph.params[last.params['bias']] = torch.full_like(graph.param(last, 'bias'), float('nan'))",
     "computes NaN or infinity"),
    ("    last = graph.find(op='linear')[-1]\n"
     "    graph.params[last.params['weight']] = torch.zeros_like(graph.param(last, 'weight'))\n"
     "    graph.params[last.params['bias']] = torch.zeros_like(graph.param(last, 'bias'))",
     "gives every value of its output as 0"),
])
def test_a_model_that_outputs_garbage_is_not_written(tmp_path, capsys, body, message):
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("an earlier run")
    name = "poison-nan" if "NaN" in message else "poison-constant"  # a pass name registers once per process
    plugin = _poison_pass(tmp_path, name, body)
    status, err = run(capsys, *DIGITS, "--plugin", plugin, "--passes", f"fuse,{name}", "-o", out)
    assert status == 2 and message in err and "nothing was written" in err, err
    assert sorted(os.listdir(out)) == ["keep.txt"]  # OUT as it was
    assert [p.name for p in tmp_path.iterdir() if ".qcompile-" in p.name] == []  # no stage left behind


def test_out_is_replaced_whole(tmp_path, capsys, monkeypatch):
    out = tmp_path / "out"
    assert run(capsys, *DIGITS, "--passes", "ptq", "-o", out, "--export", "onnx")[0] == 0
    first = {p.name: p.read_bytes() for p in out.iterdir()}
    assert "model.onnx" in first

    import qcompile.deploy

    def broken(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(qcompile.deploy, "save_torchscript", broken)
    with pytest.raises(OSError, match="disk full"):
        main([*DIGITS, "--passes", "fuse", "-o", str(out), "--deploy", "torchscript"])
    assert {p.name: p.read_bytes() for p in out.iterdir()} == first  # a failure late in the run: OUT untouched
    monkeypatch.undo()

    assert run(capsys, *DIGITS, "--passes", "fuse", "-o", out)[0] == 0
    assert "model.onnx" not in os.listdir(out)  # success: nothing of the earlier run is left
    assert [p.name for p in tmp_path.iterdir()] == ["out"]


def test_out_problems_are_found_before_compiling(tmp_path, capsys):
    existing = tmp_path / "afile"
    existing.write_text("x")
    status, err = run(capsys, *DIGITS, "--passes", "ptq", "-o", existing)
    assert status == 2 and "a file of that name exists" in err and "calibrate:" not in err
    status, err = run(capsys, *DIGITS, "--passes", "ptq", "-o", existing / "out")
    assert status == 2 and "is a file, not a directory" in err and "calibrate:" not in err
    assert existing.read_text() == "x"


def _user_files(tmp: Path) -> None:
    (tmp / "model.pt").write_text("hello, I am text\n")
    with zipfile.ZipFile(tmp / "badname.pt", "w") as archive:
        archive.writestr(zipfile.ZipInfo("AAAAé.pkl"), b"abc")  # a non-ASCII name sets the UTF-8 flag
    (tmp / "badname.pt").write_bytes((tmp / "badname.pt").read_bytes().replace("AAAAé".encode(), b"\xff\xfe" * 3))
    torch.save(nn.Conv2d(3, 4, 3).state_dict(), tmp / "w.pt")
    (tmp / "trunc.pt").write_bytes((tmp / "w.pt").read_bytes()[:300])
    (tmp / "empty.pt").write_bytes(b"")
    (tmp / "qc_raise.py").write_text("raise RuntimeError('boom at import')\n")
    (tmp / "qc_models.py").write_text(
        "import sys\nimport torch\nfrom torch import nn\n\n"
        "def conv():\n    return nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU())\n\n"
        "def leaves():\n    sys.exit(7)\n\n"
        "class I0(nn.Module):\n    def forward(self, x):\n        return torch.special.i0(x)\n")
    (tmp / "preset.toml").write_text("preset = 5\n")
    (tmp / "skip.toml").write_text('skip = "conv.*"\n')
    (tmp / "pc.toml").write_text('[[override]]\nmatch = "op:conv2d"\nweight = { per_channel = "maybe" }\n')


SHAPE = ["--input-shape", "1,3,8,8"]
PHOTOS = ["--calib", "builtin:photos", "--calib-samples", "8"]


@pytest.mark.parametrize("args, message", [
    (["model.pt", *SHAPE], "is not a file that torch.save"),
    (["badname.pt", *SHAPE], "is a damaged zip archive"),
    (["qc_models:conv", "--weights", "trunc.pt", *SHAPE], "is not a readable state-dict file"),
    (["qc_raise:make", *SHAPE], "importing 'qc_raise' (from 'qc_raise:make') failed: RuntimeError: boom"),
    (["qc_models:conv", *SHAPE, "--passes", ""], "--passes is empty"),
    (["qc_models:conv", *SHAPE, "--passes", "ptq", "--calib", "empty.pt"], "cannot read data file empty.pt"),
    (["qc_models:conv", *SHAPE, "--passes", "ptq", *PHOTOS, "--qconfig", "preset.toml"], "preset is 5 (int)"),
    (["qc_models:conv", *SHAPE, "--passes", "ptq", *PHOTOS, "--batch-size", "0"], "must be at least 1, got 0"),
    (["qc_models:conv", *SHAPE, "--passes", "ptq", *PHOTOS, "--qconfig", "skip.toml"], "skip is 'conv.*' (str)"),
    (["qc_models:conv", *SHAPE, "--passes", "ptq", *PHOTOS, "--qconfig", "pc.toml"],
     "per_channel must be true or false, got 'maybe'"),
    (["qc_models:leaves", *SHAPE], "it called sys.exit(7)"),
])
def test_user_mistakes_are_errors_with_exit_2(tmp_path, capsys, monkeypatch, args, message):
    _user_files(tmp_path)
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    passes = [] if "--passes" in args else ["--passes", "fuse"]  # without --passes, --calib would be missing first
    status, err = run(capsys, *args, *passes, "-o", "out")
    assert status == 2, err
    assert message in err and "Traceback" not in err
    assert not (tmp_path / "out").exists()


def test_a_torch_special_function_is_named_as_torch_names_it(tmp_path, capsys, monkeypatch):
    _user_files(tmp_path)
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    status, err = run(capsys, "qc_models:I0", *SHAPE, "--passes", "fuse", "-o", "out")
    assert status == 0, err
    assert "target='torch.special.i0'" in (tmp_path / "out" / "graph.qir").read_text()
    assert "torch.special.i0(" in (tmp_path / "out" / "model.py").read_text()


def test_files_asked_for_inside_out_survive_its_replacement(tmp_path, capsys):
    out = tmp_path / "out"
    status, err = run(capsys, *DIGITS, "--passes", "ptq", "-o", out, "--save-stats", out / "stats.pt",
                      "--dump-dir", out / "dump")
    assert status == 0, err
    assert (out / "stats.pt").is_file() and (out / "dump" / "00_input.qir").is_file()
    assert f"wrote {out / 'stats.pt'}" in err and ".qcompile-" not in err


def test_without_a_place_for_the_key_outputs_are_written_unsigned(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("XDG_CONFIG_HOME", "/proc/qcompile-no-such-place")  # not writable, even as root
    out = tmp_path / "out"
    assert run(capsys, *DIGITS, "--passes", "fuse", "-o", out)[0] == 0
    assert not (out / "qcompile-signature.json").exists()
    compare = ["compare", "zoo:digit_cnn", out, "--data", "builtin:mnist5k", "--samples", "32", "--repeats", "1"]
    assert run(capsys, *compare)[0] == 2
    assert run(capsys, *compare, "--trust-out")[0] == 0
