"""The verdict at the end of a compile (:mod:`qcompile.verdict`), measured and written to OUT/verdict.json."""

from __future__ import annotations

import sys


def run_verdict(options, result, passes: str, progress):
    """Measure the written model (:mod:`qcompile.verdict`) and write OUT/verdict.json; the verdict."""
    from qcompile.fileio import atomic_write_text
    from qcompile.verdict import judge

    data = None
    try:
        data = options.verdict_data  # read once: an accuracy search scored on the same
        verdict = judge(result.graph, result.float_module, result.out_dir, data, result.check_inputs.tensors,
                        pipeline_text=passes, progress=progress)
    except Exception as exc:  # noqa: BLE001 - the user's model and data run here; the model stands, checked
        text = str(exc).strip().splitlines()
        where = f"running the models on {data.description}" if data is not None else "reading its data"
        print(f"qcompile: verdict: not measured: {where} failed: {type(exc).__name__}: {text[0] if text else ''}",
              file=sys.stderr)
        return None
    atomic_write_text(result.out_dir / "verdict.json", verdict.to_json() + "\n")
    return verdict


def print_verdict(verdict, as_json: bool) -> None:
    """The verdict's lines on stderr; with ``--json`` the verdict as JSON on stdout, for scripts."""
    for line in verdict.lines():
        print(f"qcompile: verdict: {line}", file=sys.stderr)
    if as_json:
        print(verdict.to_json())
