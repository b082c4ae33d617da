"""Shared test setup: the `--runslow` switch, the authors' reference vectors, the DAVIS test data.

`pytest` runs the quick tests; `pytest --runslow` runs everything, as CI does.
"""
import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # the scripts are flat top-level modules: `import model`
# the authors' reference vectors (tests/reference/README.md)
REFERENCE = ROOT / "tests" / "reference"
DATA = Path(os.environ.get("RVM_DATA", ROOT.parent / "shared" / "data"))


def pytest_addoption(parser):
    parser.addoption("--runslow", action="store_true", help="also run tests marked slow")


def pytest_configure(config):
    config.addinivalue_line("markers",
                            "slow: takes more than ~20 s; runs with --runslow (and in CI)")


def pytest_collection_modifyitems(config, items):
    if config.getoption("--runslow"):
        return
    skip = pytest.mark.skip(reason="slow: run with --runslow")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def davis():
    """The folder holding real DAVIS-2017 sequences for the tests: davis2017-mini/ (blackswan,
    car-shadow, dog) and, for the toolkit checks, davis2017-more/ and osvos-davis2017/."""
    if not (DATA / "davis2017-mini" / "JPEGImages").is_dir():
        pytest.skip(f"no DAVIS test data in {DATA}. Set RVM_DATA to a folder holding "
                    "davis2017-mini/ in the DAVIS-2017 layout (JPEGImages/480p/<seq>, "
                    "Annotations/480p/<seq>, ImageSets/2017/val.txt; from "
                    "https://davischallenge.org, e.g. the sequences blackswan, car-shadow, dog)")
    return DATA
