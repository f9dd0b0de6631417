"""Optional MLflow logging of a run: parameters, metrics, and the report as an artifact.

``--mlflow file:./mlruns`` (a local file store) or any tracking URI MLflow
accepts. MLflow is not a dependency of qcompile: ``pip install
'qcompile[mlflow]'`` installs it (the light ``mlflow-skinny``).
"""

from __future__ import annotations

import math
import os
from pathlib import Path

from qcompile.errors import QCompileError


def _mlflow():
    try:
        import mlflow
    except ImportError:
        raise QCompileError("--mlflow needs the mlflow package", hint="pip install 'qcompile[mlflow]'") from None
    return mlflow


def log_run(uri: str, args, pipeline: str, diagnostics, report: Path | None) -> str:
    """Log one compile run; returns the MLflow run id."""
    if uri.startswith("file:") or "://" not in uri:
        # MLflow 3 keeps its file store only on request; a local file store is what --mlflow file:DIR asks for
        os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
    mlflow = _mlflow()
    try:
        return _log(mlflow, uri, args, pipeline, diagnostics, report)
    except mlflow.exceptions.MlflowException as exc:
        raise QCompileError(f"MLflow refused the run at {uri}: {str(exc).splitlines()[0]}",
                            hint="use a local file store (file:./mlruns) or a tracking server URI") from None


def _log(mlflow, uri: str, args, pipeline: str, diagnostics, report: Path | None) -> str:
    mlflow.set_tracking_uri(uri)
    mlflow.set_experiment("qcompile")
    params = {"model": args.model, "pipeline": pipeline, "preset": args.preset or "x86",
              "calib": args.calib or "", "calib_samples": args.calib_samples or "all",
              "diagnose_samples": args.diagnose_samples}
    metrics: dict[str, float] = {}
    for name, seconds, _ in diagnostics.timing.seconds:
        metrics[f"seconds.{name}"] = seconds
    if diagnostics.trace is not None:
        for row in diagnostics.trace.rows:
            if not math.isinf(row.sqnr_db):
                metrics[f"sqnr_db.after.{row.after}"] = row.sqnr_db
            if row.agreement is not None:
                metrics[f"agreement.after.{row.after}"] = row.agreement
        last = diagnostics.trace.rows[-1] if diagnostics.trace.rows else None
        if last is not None and not math.isinf(last.sqnr_db):
            metrics["output_sqnr_db"] = last.sqnr_db
    if diagnostics.findings.layers:
        worst = diagnostics.findings.layers[0]
        if not math.isinf(worst.sqnr_db):
            metrics["worst_layer_sqnr_db"] = worst.sqnr_db
    with mlflow.start_run() as run:
        mlflow.log_params(params)
        mlflow.log_metrics(metrics)
        if report is not None:
            mlflow.log_artifact(str(report))
        return run.info.run_id
