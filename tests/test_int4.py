"""4-bit weights: integer conversion in int8 containers, packed two per byte on disk."""

from __future__ import annotations

import pytest
import torch

from qcompile.backends.torch_ao.int4 import MARKER, pack
from qcompile.codegen import load_model, write_model
from qcompile.data import open_data
from qcompile.frontend.loaders import load_model as load_user_model
from qcompile.frontend.lower import lower
from qcompile.interpreter import Interpreter
from qcompile.pipeline import PassContext, run_pipeline


def test_pack_round_trip_through_the_emitted_unpacker():
    from qcompile.backends.torch_ao.int4 import UNPACK_SOURCE

    namespace = {"torch": torch}
    exec(UNPACK_SOURCE, namespace)  # noqa: S102 - the source model.py carries
    codes = torch.randint(-8, 8, (5, 3, 3, 3), dtype=torch.int8)
    weight = torch._make_per_channel_quantized_tensor(codes, torch.rand(5).double() + 0.1,
                                                      torch.zeros(5, dtype=torch.int64), 0)
    packed = pack({"w": weight, "t": (weight, torch.ones(2))})
    assert MARKER in packed["w"] and packed["w"][MARKER].numel() == (5 * 27 + 1) // 2
    back = namespace["_unpack_int4"](packed)
    assert torch.equal(back["w"].int_repr(), codes) and torch.equal(back["t"][0].int_repr(), codes)
    wide = torch._make_per_channel_quantized_tensor(codes * 2, torch.ones(5).double(),
                                                    torch.zeros(5, dtype=torch.int64), 0)
    assert pack(wide) is wide  # codes beyond 4 bits stay as they are


@pytest.mark.parametrize("backend", ["gemmlowp", "native"])
def test_w4_model_file_is_about_eight_times_smaller(backend, tmp_path):
    model = load_user_model("zoo:digit_cnn").module
    data = open_data("builtin:mnist5k", limit=512, batch_size=128)
    graph = lower(model, (torch.zeros(1, 1, 28, 28),))
    run_pipeline(graph, f"fuse,calibrate,convert{{backend={backend} weight-bits=4}}", PassContext(calib_data=data))
    write_model(graph, tmp_path)
    emitted = load_model(tmp_path)
    x, y = next(data.labelled())
    torch.testing.assert_close(emitted(x), Interpreter(graph).run(x), rtol=0, atol=0)
    float_bytes = sum(p.numel() * 4 for p in model.parameters())
    assert float_bytes / (tmp_path / "weights.pt").stat().st_size > 6.5  # measured 7.2 (biases stay float)
    assert "_unpack_int4" in (tmp_path / "model.py").read_text()
    assert (emitted(x).argmax(1) == y).float().mean() > 0.9  # real digits, 4-bit weights
