"""Calibration and evaluation data: sources, built-in real sets, preprocessing, batching."""

from qcompile.data.sources import DataSource, open_data

__all__ = ["DataSource", "open_data"]
