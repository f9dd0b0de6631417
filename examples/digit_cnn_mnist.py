"""The digit-recognizer CNN (real trained weights) on 5,000 real MNIST digits, float vs int8.

    python examples/digit_cnn_mnist.py

Its forward uses ``x.view(...)``, which fails on the channels-last output of
torch's quantized convolutions; qcompile rewrites it to ``reshape`` in the
quantized region, so the model needs no edits.
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from qcompile.codegen import load_model, write_model  # noqa: E402
from qcompile.compare import compare, format_table, state_size_bytes  # noqa: E402
from qcompile.data import open_data  # noqa: E402
from qcompile.frontend.loaders import load_model as load_user_model  # noqa: E402
from qcompile.frontend.lower import lower  # noqa: E402
from qcompile.pipeline import PassContext, run_pipeline  # noqa: E402


def main() -> None:
    model = load_user_model("zoo:digit_cnn").module
    data = open_data("builtin:mnist5k", batch_size=250)
    calibration = open_data("builtin:mnist5k", limit=512, batch_size=64)
    models = [("float", model, state_size_bytes(model))]
    with tempfile.TemporaryDirectory() as tmp:
        for name, pipeline, ctx in [("static int8", "ptq", PassContext(calib_data=calibration)),
                                    ("dynamic int8", "dynamic-int8", PassContext())]:
            graph = lower(model, (next(iter(calibration))[0][:1],))
            run_pipeline(graph, pipeline, ctx)
            out = Path(tmp) / name.replace(" ", "_")
            write_model(graph, out)
            models.append((name, load_model(out), (out / "weights.pt").stat().st_size))
        print(format_table(compare(models, data, threads=1, repeats=50)))


if __name__ == "__main__":
    main()
