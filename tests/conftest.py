import importlib.util
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).parent))  # tests/ helpers such as torch_reference


def pytest_collection_modifyitems(config, items):
    # A test that needs torch must run or fail, never skip silently: deselect explicitly with -m "not torch".
    needs_torch = [item.nodeid for item in items if item.get_closest_marker("torch")]
    if needs_torch and importlib.util.find_spec("torch") is None:
        raise pytest.UsageError(
            f"{len(needs_torch)} selected tests need PyTorch, which is not installed. Install the 'convert' extra "
            "(pip install -e '.[convert,test]') or deselect them with -m 'not torch'."
        )


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return ROOT
