"""Corrupt, truncated and bit-flipped files given as a model, ``--weights`` or ``--calib``.

Every file either loads or is refused with a :class:`QCompileError` (the
command line's ``qcompile: error:`` and exit 2); an exception of any other
type escaping the loaders is a failure. The files are generated from real
ones (a state dict, a ``torch.export`` archive, a TorchScript file, a data
file), seeded, so a failure reproduces.
"""

from __future__ import annotations

import io
import json
import random
import zipfile
from pathlib import Path

import pytest
import torch
from torch import nn

from qcompile.data import open_data
from qcompile.errors import QCompileError
from qcompile.frontend.loaders import load_model

FILES_PER_SEED = 60


class _Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)

    def forward(self, x):
        return torch.relu(self.conv(x))


def make_net() -> nn.Module:
    return _Net()


def _seeds() -> dict[str, bytes]:
    torch.manual_seed(0)
    net = _Net().eval()
    seeds = {}
    buffer = io.BytesIO()
    torch.save(net.state_dict(), buffer)
    seeds["weights"] = buffer.getvalue()
    buffer = io.BytesIO()
    torch.export.save(torch.export.export(net, (torch.randn(1, 3, 8, 8),)), buffer)
    seeds["export"] = buffer.getvalue()
    buffer = io.BytesIO()
    torch.jit.save(torch.jit.trace(net, torch.randn(1, 3, 8, 8)), buffer)
    seeds["torchscript"] = buffer.getvalue()
    buffer = io.BytesIO()
    torch.save({"x": torch.randn(6, 3, 8, 8), "y": torch.arange(6)}, buffer)
    seeds["data"] = buffer.getvalue()
    return seeds


def _mutants(name: str, data: bytes, rng: random.Random) -> list[bytes]:
    """Truncations, bit flips, overwritten runs, and zip members rewritten with damaged contents."""
    out = []
    for _ in range(FILES_PER_SEED // 3):
        out.append(data[: rng.randrange(0, len(data))])
        flipped = bytearray(data)
        for _ in range(rng.choice((1, 4, 32))):
            flipped[rng.randrange(len(flipped))] ^= 1 << rng.randrange(8)
        out.append(bytes(flipped))
        start = rng.randrange(len(data))
        run = bytes(rng.randrange(256) for _ in range(rng.randrange(1, 64)))
        out.append(data[:start] + run + data[start + len(run):])
    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        members = [(info, archive.read(info.filename)) for info in archive.infolist()]
    for index in range(len(members)):  # one member at a time damaged, the zip itself intact
        buffer = io.BytesIO()
        with zipfile.ZipFile(buffer, "w") as archive:
            for i, (info, content) in enumerate(members):
                if i == index and content:
                    cut = rng.randrange(len(content))
                    content = content[:cut] + bytes(rng.randrange(256) for _ in range(rng.randrange(0, 16)))
                archive.writestr(info.filename, content)
        out.append(buffer.getvalue())
    return out


def _load(role: str, path: Path) -> None:
    if role == "model":
        load_model(str(path), example_inputs=(torch.randn(1, 3, 8, 8),))
    elif role == "trusted model":
        load_model(str(path), trust_pickle=True, example_inputs=(torch.randn(1, 3, 8, 8),))
    elif role == "weights":
        load_model(f"{__name__}:make_net", weights=str(path))
    else:
        for _ in open_data(str(path), batch_size=4):
            pass


ROLES = {"weights": ("weights",), "export": ("model",), "torchscript": ("model", "trusted model"),
         "data": ("data",)}


def test_loader_fuzz_raises_only_qcompile_errors(tmp_path):
    rng = random.Random(2026)
    foreign, refused, loaded = [], 0, 0
    for name, data in _seeds().items():
        for index, mutant in enumerate(_mutants(name, data, rng)):
            for role in ROLES[name]:
                path = tmp_path / f"{name}_{index}.pt"
                path.write_bytes(mutant)
                try:
                    _load(role, path)
                    loaded += 1
                except QCompileError:
                    refused += 1
                except Exception as exc:  # noqa: BLE001 - the point of the test
                    foreign.append(f"{name} #{index} as {role}: {type(exc).__name__}: {str(exc)[:120]}")
    total = refused + loaded + len(foreign)
    assert total >= 300, total
    assert refused > total // 2, (refused, loaded)  # the mutants are mostly damaged: most must be refused
    assert not foreign, f"{len(foreign)} of {total} files escaped as foreign exceptions:\n" + "\n".join(foreign)


@pytest.mark.parametrize("role", ["model", "weights", "data"])
def test_a_text_file_is_refused_with_the_reason(tmp_path, role):
    path = tmp_path / "model.pt"
    path.write_text("not a model\n")
    with pytest.raises(QCompileError) as info:
        _load(role, path)
    assert str(path) in str(info.value)


def test_an_export_archive_whose_program_is_inconsistent_is_refused(tmp_path):
    """The archive unpacks and deserializes, but its call signature is gone: ``.module()`` would fail inside torch."""
    with zipfile.ZipFile(io.BytesIO(_seeds()["export"])) as archive:
        members = [(info.filename, archive.read(info.filename)) for info in archive.infolist()]
    path = tmp_path / "model.pt2"
    with zipfile.ZipFile(path, "w") as archive:
        for name, content in members:
            if name.endswith("models/model.json"):
                program = json.loads(content)
                program["graph_module"]["module_call_graph"][0]["signature"] = None
                content = json.dumps(program).encode()
            archive.writestr(name, content)
    with pytest.raises(QCompileError, match="program is damaged") as info:
        _load("model", path)
    assert str(path) in str(info.value)
