import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def shared_data_dir() -> Path:
    """../shared/data beside the project, or $QCNN_TEST_DATA."""
    return Path(os.environ.get("QCNN_TEST_DATA", ROOT.parent / "shared" / "data"))


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The real weights and images; tests that need them skip cleanly where they are absent."""
    d = shared_data_dir()
    if not (d / "squeezenet1.1").is_dir():
        pytest.skip(f"real weights and images not found at {d} (set QCNN_TEST_DATA)")
    return d
