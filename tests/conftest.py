"""Shared fixtures and options for the qcompile test suite."""

from __future__ import annotations

import pytest
import torch


def pytest_addoption(parser):
    parser.addoption("--update-golden", action="store_true", default=False,
                     help="rewrite the golden .qir files from the current output")


@pytest.fixture
def update_golden(request) -> bool:
    return request.config.getoption("--update-golden")


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
