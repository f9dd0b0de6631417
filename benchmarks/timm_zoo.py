"""timm's architectures through the static int8 pipeline: folding, quantizing, ONNX export, the check.

    python benchmarks/timm_zoo.py                       # every architecture below
    python benchmarks/timm_zoo.py efficientnet_b0 mixnet_s --json timm.json

Each model is ``timm.create_model(name, pretrained=False)`` with seeded random
weights and randomized batch-norm statistics (as the torchvision zoo test),
lowered with torch.fx, compiled with ``ptq`` (``x86`` preset) on two random
batches of two, and scored on eight other random images: the batch norms the model has, those left
after ``fuse`` (a batch norm that reads no conv's sole output, such as a
pre-activation one, cannot fold and is quantized on its own), the
quantize/dequantize pairs (1 when the whole model is one int8 region), the
emitted module's output SQNR against float, torch.ao FX's (``x86`` qconfig
mapping, same data) where FX traces the model, and the ONNX export run in
onnxruntime against the emitted module (share of outputs within 1 LSB) and
against float (SQNR), and what ``--check`` says of it: ``passes`` (within
1 LSB), ``passes (rounding)`` (more than 1 LSB apart, but as close to float
as the module, :mod:`qcompile.onnx.runtime.verdict`) or ``FAILS``. An error
stops only its row.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
import traceback
import warnings
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from qcompile.codegen import load_model, write_model  # noqa: E402
from qcompile.cpu_features import describe_cpu  # noqa: E402
from qcompile.diagnose.metrics import sqnr_db  # noqa: E402
from qcompile.errors import CheckFailed  # noqa: E402
from qcompile.frontend.lower import lower  # noqa: E402
from qcompile.onnx.export import export_onnx  # noqa: E402
from qcompile.onnx.runtime.check import check_onnx, concatenated_outputs, output_scale, output_scales  # noqa: E402
from qcompile.onnx.runtime.session import OnnxModel  # noqa: E402
from qcompile.onnx.runtime.verdict import against_float  # noqa: E402
from qcompile.pipeline import PassContext, run_pipeline  # noqa: E402
from qcompile.quant.config import QuantConfig  # noqa: E402
from tests.models import randomize_batch_norm  # noqa: E402

# one or two per family; the small variants keep the sweep within minutes on two cores
ARCHITECTURES = [
    "resnet18d", "resnet26t", "regnetx_002", "regnety_002", "efficientnet_b0", "tf_efficientnet_lite0",
    "mobilenetv3_small_100", "mobilenetv3_large_100", "ghostnet_100", "mixnet_s", "rexnet_100", "densenet121",
    "dpn48b", "hrnet_w18_small", "cspresnet50", "cspdarknet53", "vovnet39a", "ese_vovnet19b_dw", "repvgg_a0",
    "convnext_atto", "res2net50_14w_8s", "res2next50", "selecsls42b", "resnest14d", "seresnext26d_32x4d",
    "inception_v3", "inception_v4", "xception41", "mnasnet_100", "lcnet_050", "dla34", "gernet_s", "tinynet_a",
    "fbnetc_100", "spnasnet_100", "semnasnet_075", "hardcorenas_a", "mobilenetv2_050", "efficientnet_lite0",
    "skresnet18", "bat_resnext26ts", "darknet17", "resnetblur18", "nf_resnet26", "cs3darknet_s",
]


def _batch_norms(graph) -> int:
    return sum(1 for n in graph.nodes() if n.op.startswith("batch_norm"))


def measure(name: str) -> dict:
    import timm

    torch.manual_seed(0)
    model = randomize_batch_norm(timm.create_model(name, pretrained=False).eval())
    size = model.default_cfg.get("input_size", (3, 224, 224))[-1]
    batches = [torch.randn(2, 3, size, size) for _ in range(2)]
    scored = [(torch.randn(2, 3, size, size),) for _ in range(4)]
    row: dict = {"model": name, "input": size}
    started = time.perf_counter()
    graph = lower(model, (batches[0][:1],))
    row["batch norms"] = _batch_norms(graph)
    config = QuantConfig.from_preset("x86")
    run_pipeline(graph, "fuse", PassContext())
    row["left after fuse"] = _batch_norms(graph)
    run_pipeline(graph, "stubs,observe,calibrate,convert",
                 PassContext(calib_data=[(b,) for b in batches], quant_config=config))
    row["dequantize"] = sum(1 for n in graph.nodes() if n.op == "dequantize")
    with tempfile.TemporaryDirectory() as tmp:
        write_model(graph, Path(tmp) / "int8")
        emitted = load_model(Path(tmp) / "int8")
        with torch.no_grad():
            want, int8 = concatenated_outputs(model, scored)[0], concatenated_outputs(emitted, scored)[0]
        row["SQNR int8 (dB)"] = round(sqnr_db(int8, want), 2)
        row["seconds"] = round(time.perf_counter() - started, 1)
        row["SQNR torch.ao FX (dB)"] = _fx_sqnr(model, batches, scored, want)
        try:
            path = export_onnx(graph, Path(tmp) / "model.onnx")
            got = concatenated_outputs(OnnxModel(path, 2), scored)[0]
            scale = output_scale(graph)
            steps = ((got - int8).abs() / scale).round() if scale else None
            row["ONNX within 1 LSB"] = round(float((steps <= 1).float().mean()), 4) if steps is not None else None
            row["SQNR ONNX (dB)"] = round(sqnr_db(got, want), 2)
            row["--check"] = _check(path, emitted, model, graph, scored)
        except Exception as exc:  # noqa: BLE001 - a row records what stopped it
            row["ONNX"] = f"{type(exc).__name__}: {str(exc).splitlines()[0][:120]}"
    return row


def _check(path, emitted, model, graph, scored) -> str:
    """What ``--check`` concludes of the export on the scored images."""
    try:
        check_onnx(path, emitted, scored, output_scales(graph), graph=graph)
        return "passes"
    except CheckFailed:
        verdicts = against_float(model, path, emitted, scored)
        return "passes (rounding)" if all(v.as_close for v in verdicts) else "FAILS"


def _fx_sqnr(model, batches, scored, want) -> float | str:
    from tests.torchao_reference import fx_quantize

    try:
        reference = fx_quantize(model, [(b,) for b in batches], "x86")
        with torch.no_grad():
            return round(sqnr_db(concatenated_outputs(reference, scored)[0], want), 2)
    except Exception as exc:  # noqa: BLE001 - FX does not trace every model
        return f"FX fails: {type(exc).__name__}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("models", nargs="*", default=ARCHITECTURES)
    parser.add_argument("--json", help="also write the rows as JSON")
    args = parser.parse_args()
    warnings.simplefilter("ignore")
    rows = []
    for name in args.models:
        try:
            row = measure(name)
        except Exception as exc:  # noqa: BLE001 - a row records what stopped it
            traceback.print_exc(limit=2)
            row = {"model": name, "error": f"{type(exc).__name__}: {str(exc).splitlines()[0][:160]}"}
        print(json.dumps(row), file=sys.stderr, flush=True)
        rows.append(row)
    columns = ["model", "batch norms", "left after fuse", "dequantize", "SQNR int8 (dB)", "SQNR torch.ao FX (dB)",
               "ONNX within 1 LSB", "SQNR ONNX (dB)", "--check", "seconds"]
    print(f"CPU: {describe_cpu()}; torch {torch.__version__}\n")
    print("| " + " | ".join(columns) + " |\n|" + "---|" * len(columns))
    for row in rows:
        if "error" in row:
            print(f"| {row['model']} | " + f"error: {row['error']} |" + " |" * (len(columns) - 2))
            continue
        cells = [row.get(c, row.get("ONNX", "-")) if c.startswith(("ONNX", "SQNR ONNX", "--check")) else row.get(c, "-")
                 for c in columns]
        print("| " + " | ".join(str(c) for c in cells) + " |")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
