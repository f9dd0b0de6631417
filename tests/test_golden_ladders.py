"""Golden .qir files for every stage of the pipeline on small real models.

Run ``pytest --update-golden`` to rewrite them after an intended change, and
read the diff before committing it.
"""

from __future__ import annotations

import pytest
import torch

from qcompile.data import open_data
from qcompile.frontend.loaders import load_model
from qcompile.frontend.lower import lower
from qcompile.ir import print_graph
from qcompile.pipeline import DumpDir, PassContext, run_pipeline
from qcompile.quant.config import QuantConfig
from tests.golden import GOLDEN_DIR, check_golden
from tests.models import Mixed

LADDERS = {
    "digit_cnn": "fuse",
    "mobilenet_v2": "fuse",
    "mixed": "fuse",
    "digit_cnn_ptq": "fuse,stubs,observe,calibrate,convert{backend=native}",
    # the neutral integer stage, then qcompile's kernels
    "digit_cnn_integer": "fuse,stubs,observe,calibrate,integerize,lower{backend=gemmlowp}",
}


def _graph(name):
    name = name.removesuffix("_ptq").removesuffix("_integer")
    if name == "mixed":
        torch.manual_seed(0)
        return lower(Mixed(), (torch.randn(1, 3, 8, 8),))
    loaded = load_model(f"zoo:{name}")
    return lower(loaded.module, loaded.example_inputs)


@pytest.mark.parametrize("name", sorted(LADDERS))
def test_ladder(name, tmp_path, update_golden):
    graph = _graph(name)
    dump = DumpDir(tmp_path, ("qir",))
    # min/max observers on fixed real data: every printed range is deterministic
    ctx = PassContext(calib_data=open_data("builtin:mnist5k", limit=64, batch_size=32),
                      quant_config=QuantConfig.from_preset("default"))
    run_pipeline(graph, LADDERS[name], ctx, instruments=[dump])
    assert dump.written, "the dump wrote nothing"
    for path in dump.written:
        check_golden(path.read_text(), GOLDEN_DIR / name / path.name, update_golden)
    assert dump.written[-1].read_text() == print_graph(graph)
