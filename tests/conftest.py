import importlib.util
import os
import sys
from pathlib import Path

# Every test session sees 4 simulated CPU devices, so sharding code is always exercised; a test that wants
# one device builds its mesh from jax.devices()[:1]. Must happen before jax is imported anywhere.
if "xla_force_host_platform_device_count" not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=4").strip()

# The jsr commands cache compiled programs in ~/.cache/jsr/xla by default; the suite keeps the user's cache out of
# its results (every test compiles afresh). tests/test_compile_cache.py turns it on for its own commands.
os.environ["JSR_NO_COMPILE_CACHE"] = "1"

import pytest  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).parent))  # tests/ helpers such as torch_reference


def pytest_xdist_auto_num_workers(config):
    """``-n auto`` (pyproject's addopts): a worker per core, at most 4 (each simulates 4 devices and may hold a few
    GB). On 2 cores two workers overlap one's compilation with the other's execution."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, min(4, cores))


def pytest_runtest_setup(item):
    # A test that needs torch must run or fail, never skip silently: deselect explicitly with -m "not torch".
    # (Per test, not at collection: under pytest-xdist a worker's collection error loses its message.)
    if item.get_closest_marker("torch") and importlib.util.find_spec("torch") is None:
        pytest.fail(
            "needs PyTorch, which is not installed. Install the 'convert' extra (pip install -e '.[convert,test]') "
            "or deselect the PyTorch tests with -m 'not torch'.",
            pytrace=False,
        )


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return ROOT


REFEREE = ROOT.parent / "shared" / "referee"


@pytest.fixture(scope="session")
def referee() -> Path:
    """../shared/referee (checkpoints and images made by others): required in CI, skipped with the reason elsewhere."""
    if not (REFEREE / "MANIFEST.md").is_file():
        if os.environ.get("CI") == "true":
            pytest.fail(f"CI=true but the referee folder {REFEREE} is missing: CI must lay ../shared beside the clone")
        pytest.skip(f"needs the referee material at {REFEREE} (absent here)")
    return REFEREE
