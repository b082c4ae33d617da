"""Shared test setup: the `--runslow` switch and paths to the read-only shared data.

`pytest` runs the quick tests; `pytest --runslow` runs everything, as CI does.
"""
import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # the scripts are flat top-level modules: `import model`
SHARED = Path(os.environ.get("RVM_SHARED", ROOT.parent / "shared"))


def pytest_addoption(parser):
    parser.addoption("--runslow", action="store_true", help="also run tests marked slow")


def pytest_configure(config):
    config.addinivalue_line("markers", "slow: takes more than ~20 s; runs with --runslow (and in CI)")


def pytest_collection_modifyitems(config, items):
    if config.getoption("--runslow"):
        return
    skip = pytest.mark.skip(reason="slow: run with --runslow")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def shared():
    if not SHARED.is_dir():
        pytest.skip(f"shared data folder not found at {SHARED} (set RVM_SHARED)")
    return SHARED
