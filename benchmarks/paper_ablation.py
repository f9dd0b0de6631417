"""The paper's ablation, rerun: W8A4 / W4A8 / W4A4 with each method alone and all together.

    python benchmarks/paper_ablation.py [--json out.json]

Models: the real MobileNetV2 (output SQNR and top-1 agreement with float on
held-out photo crops), seed 003's network trained here for one epoch on
Fashion-MNIST, and the ResNet-20 that ships trained on Fashion-MNIST
(``zoo:resnet20_fashion``); both scored by accuracy on 2,000 test images. Everything is simulated
(fake quantization in float), per-channel weights (x86 preset), on the
reference repository's grid.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from qcompile.data import open_data  # noqa: E402
from qcompile.frontend.loaders import load_model  # noqa: E402
from qcompile.frontend.lower import lower  # noqa: E402
from qcompile.interpreter import Interpreter  # noqa: E402
from qcompile.pipeline import PassContext, run_pipeline  # noqa: E402
from qcompile.quant.config import QuantConfig  # noqa: E402
from qcompile.training import fit  # noqa: E402
from tests.seed_models import FashionNet  # noqa: E402

SETTINGS = {"W8A4": (8, 4), "W4A8": (4, 8), "W4A4": (4, 4)}


def pipelines(w: int, a: int) -> dict[str, str]:
    sim = f"simulate{{bits={a} weight-bits={w}"
    rows = {"naive": f"fuse,calibrate,{sim}}}"}
    if a < 8:
        rows["ACIQ"] = f"fuse,calibrate,aciq{{bits={a}}},{sim}}}"
        rows["ACIQ per channel (research)"] = f"fuse,calibrate,aciq{{bits={a} per-channel=true}},{sim}}}"
    if w < 8:
        rows["bit allocation"] = f"fuse,calibrate,bitalloc{{budget={w}}},{sim}}}"
        rows["bias correction"] = f"fuse,calibrate,{sim} bias-correct=mean-std}}"
        rows["empirical bias correction"] = f"fuse,calibrate,bias-correct,{sim}}}"
    methods = (f"bitalloc{{budget={w}}}," if w < 8 else "") + (f"aciq{{bits={a}}}," if a < 8 else "")
    rows["all"] = f"fuse,calibrate,{methods}{sim}" + (" bias-correct=mean-std}" if w < 8 else "}")
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json")
    args = parser.parse_args()
    torch.manual_seed(0)
    config = QuantConfig.from_preset("x86")
    results = []

    mobilenet = load_model("zoo:mobilenet_v2").module
    calib, evaluation = open_data("builtin:photos", batch_size=16).interleaved_split()
    x_eval = torch.cat([b[0] for b in evaluation])
    with torch.no_grad():
        reference = mobilenet(x_eval)

    fashion = lower(FashionNet(), (torch.zeros(1, 1, 28, 28),))
    fit(fashion, open_data("builtin:fashion-train", batch_size=64), epochs=1, lr=0.01)
    fashion_calib = open_data("builtin:fashion-train", limit=512, batch_size=128)
    fashion_test = open_data("builtin:fashion-test", limit=2000, batch_size=500)

    resnet = lower(load_model("zoo:resnet20_fashion").module, (torch.zeros(1, 1, 28, 28),))

    def fashion_accuracy(graph) -> float:
        interpreter = Interpreter(graph)
        return sum(int((interpreter.run(x).argmax(1) == y).sum()) for x, y in fashion_test.labelled()) / 2000

    print(f"float: seed 003 accuracy {fashion_accuracy(fashion):.4f}, ResNet-20 {fashion_accuracy(resnet):.4f}")
    print("| setting | method | MobileNetV2 SQNR dB | MobileNetV2 top-1 agreement | seed 003 accuracy "
          "| ResNet-20 accuracy |")
    print("|---|---|---|---|---|---|")
    for setting, (w, a) in SETTINGS.items():
        for method, pipeline in pipelines(w, a).items():
            graph = lower(mobilenet, (x_eval[:1],))
            run_pipeline(graph, pipeline, PassContext(calib_data=calib, quant_config=config))
            out = Interpreter(graph).run(x_eval)
            sqnr = float(10 * torch.log10(reference.pow(2).mean() / (out - reference).pow(2).mean()))
            agree = float((out.argmax(1) == reference.argmax(1)).float().mean())
            small = fashion.copy()
            run_pipeline(small, pipeline, PassContext(calib_data=fashion_calib, quant_config=config))
            accuracy = fashion_accuracy(small)
            residual = resnet.copy()
            run_pipeline(residual, pipeline, PassContext(calib_data=fashion_calib, quant_config=config))
            resnet_accuracy = fashion_accuracy(residual)
            results.append(dict(setting=setting, method=method, pipeline=pipeline, mobilenet_sqnr=sqnr,
                                mobilenet_agreement=agree, fashion_accuracy=accuracy,
                                resnet20_accuracy=resnet_accuracy))
            print(f"| {setting} | {method} | {sqnr:.1f} | {agree:.3f} | {accuracy:.4f} | {resnet_accuracy:.4f} |",
                  flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
