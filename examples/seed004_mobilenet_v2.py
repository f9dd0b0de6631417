"""Seed 004, end to end: the real MobileNetV2 (ImageNet weights), torch.ao's presets and qcompile's.

    python examples/seed004_mobilenet_v2.py [--json results.json]

The seed quantizes MobileNetV2 by hand and sees low accuracy with the
per-tensor min/max config, better with fbgemm's histogram + per-channel one.
No ImageNet ships offline, so each variant is scored by agreement with the
float model's top-1 prediction (and output SQNR) on the natural photos that
ship in scikit-image / scikit-learn / matplotlib and crops of them
(calibration and evaluation use different images).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from qcompile.codegen import load_model, write_model  # noqa: E402
from qcompile.compare import compare, format_table, state_size_bytes, write_json  # noqa: E402
from qcompile.data import open_data  # noqa: E402
from qcompile.frontend.loaders import load_model as load_user_model  # noqa: E402
from qcompile.frontend.lower import lower  # noqa: E402
from qcompile.pipeline import PassContext, run_pipeline  # noqa: E402
from qcompile.quant.config import QuantConfig  # noqa: E402

# ptq-torchao reproduces torch.ao FX (same fusions; with the default preset the
# int8 outputs are identical, see tests/test_quant_static.py); ptq also fuses ReLU6.
VARIANTS = [
    ("ptq-torchao, preset default", "default", "ptq-torchao"),
    ("ptq-torchao, preset x86", "x86", "ptq-torchao"),
    ("ptq, preset default", "default", "ptq"),
    ("ptq, preset x86", "x86", "ptq"),
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json")
    args = parser.parse_args()
    model = load_user_model("zoo:mobilenet_v2").module
    # odd crops calibrate, even crops evaluate: no image is in both sets
    calib, evaluation = open_data("builtin:photos", batch_size=16).interleaved_split()
    models = [("float", model, state_size_bytes(model))]
    with tempfile.TemporaryDirectory() as tmp:
        for name, preset, pipeline in VARIANTS:
            graph = lower(model, (torch.randn(1, 3, 224, 224),))
            run_pipeline(graph, pipeline, PassContext(calib_data=calib, quant_config=QuantConfig.from_preset(preset)))
            out = Path(tmp) / f"v{len(models)}"
            write_model(graph, out)
            models.append((name, load_model(out), (out / "weights.pt").stat().st_size))
        rows = compare(models, evaluation, threads=1, repeats=20)
    print(f"{evaluation.num_samples} evaluation images, {calib.num_samples} calibration images")
    print(format_table(rows))
    if args.json:
        write_json(rows, args.json, calibration=calib.num_samples, evaluation=evaluation.num_samples)


if __name__ == "__main__":
    main()
