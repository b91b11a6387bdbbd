from pathlib import Path

import pytest

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"


@pytest.fixture
def shared_data():
    if not SHARED.is_dir():
        pytest.skip("../shared/data is absent (a user's clone has none); CI has it")
    return SHARED


@pytest.fixture(scope="session")
def demo(tmp_path_factory):
    from napari_histoexpr.data.synthetic import make_demo

    return make_demo(tmp_path_factory.mktemp("demo"), size=1536, seed=1)


@pytest.fixture
def shared_data_or_none():
    """../shared/data when present, else None (for tests that only add checks when it exists)."""
    return SHARED if SHARED.is_dir() else None
