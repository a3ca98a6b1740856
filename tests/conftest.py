"""Shared test set-up: CPU-only environment knobs (docs/REFERENCE.md §10) and small synthetic data fixtures."""
import os
import tempfile

os.environ.setdefault("DS_ACCELERATOR", "cpu")
os.environ.setdefault("TRITON_INTERPRET", "1")
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
os.environ.setdefault("MLFLOW_SERVER_ENABLE_JOB_EXECUTION", "false")
os.environ.setdefault("WDS_SECURE", "1")
# The suite's numbers must not depend on a timing: the ConvGRU arrangement comes from the table, not a
# measurement (tests/test_cpu_tuning.py measures on purpose), and no test writes the user's cache.
os.environ.setdefault("DIAS_CPU_CHOICES", "table")
os.environ.setdefault("DIAS_CACHE_DIR", tempfile.mkdtemp(prefix="dias-test-cache-"))

import pytest  # noqa: E402
import torch  # noqa: E402


def pytest_collection_modifyitems(config, items):
    """GPU tests are skipped where there is no CUDA device; they never fail for lack of one."""
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def tiny_shards(tmp_path_factory):
    """A 64×64 synthetic DIAS release (4 train / 2 val / 2 test / 2 unlabeled) packed into shards.

    Returns the shard folder (holds manifest.json); its release-layout source is ``<dir>.parent / "src"``.
    """
    from dias_dist.data.phantom_cli import write_phantom_dataset
    from dias_dist.data.shards import write_shards

    root = tmp_path_factory.mktemp("tiny_dias")
    write_phantom_dataset(root / "src", size=64, train=4, val=2, test=2, unlabeled=2, seed=3, preview=False)
    write_shards(root / "src", root / "shards", min_shards=2)
    return root / "shards"
