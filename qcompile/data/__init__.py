"""Calibration and evaluation data: sources, built-in real sets, preprocessing, batching."""

from qcompile.data.sources import DataSource, calibration_samples, first_samples, open_data

__all__ = ["DataSource", "calibration_samples", "first_samples", "open_data"]
