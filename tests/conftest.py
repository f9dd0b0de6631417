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


@pytest.fixture(autouse=True, scope="session")
def _signing_key_home(tmp_path_factory):
    """The signing key of qcompile.provenance in a directory of the test run, not the user's own."""
    import os

    os.environ["XDG_CONFIG_HOME"] = str(tmp_path_factory.mktemp("config"))


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
