"""What the tests share: the hooks and autouse fixtures, data sources, training runs on the shapes, and every helper
of the modules beside it, re-exported so that test modules import them all with `from conftest import X`:

- tiny.py: the tiny configs (``TINY``, ``tiny_config``) and the shapes they train on (``write_image_folder``);
- servers.py: real servers on loopback (PostgreSQL databases, the session's MLflow server, outages, the storage
  proxy), processes stopped whatever happens, waits with deadlines;
- commands.py: the CLI run in this process or as one, and what the stores hold (records read back).

Fixtures defined there are seen by pytest because they are imported here. Those modules never import this one.

Test modules mirror the product's: tests/pipelines/..., tests/sweeper/..., tests/sweeper/cli/test_cli_<command>.py,
tests/benchmarks/, tests/scripts/, tests/docker/. Nothing here is copied into them.
"""

from __future__ import annotations

import errno
import os
import pickle
import subprocess
import tarfile
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from commands import (
    PNG_SIGNATURE,
    ScriptRun,
    artifacts,
    assert_png,
    assert_user_error,
    console_script,
    count_lines,
    drawn,
    heartbeat_env,
    invoke,
    kill_a_worker_mid_trial,
    load_trials,
    reported_epoch,
    run_sweeper,
    start_sweeper,
    strict_json,
    study_init,
    sweeper_command,
    wait_until_stale,
)
from pipelines.config import Config
from pipelines.data import ImageSet, Splits
from pipelines.errors import UserError
from pipelines.result import Result
from servers import (
    PG_ADMIN_URL,
    MlflowServer,
    Outage,
    StorageProxy,
    _started,
    create_database,
    drop_database,
    free_port,
    missing,
    mlflow_server,
    pg_url,
    start_process,
    stop_process_group,
    wait_for,
)
from sweeper.cli import no_phoning_home, quiet_libraries
from tiny import (
    CLASSES,
    POLICY_SPACE,
    TEST_IMAGES,
    TINY,
    TINY_TRAIN,
    TRAIN_IMAGES,
    TRIAL_STEPS_PER_EPOCH,
    VAL_SIZE,
    epoch_metrics,
    synthetic_images,
    tiny_config,
    write_image_folder,
)

no_phoning_home(os.environ)  # as the console script does: no telemetry or update check from the tests' imports
quiet_libraries()  # and no INFO lines of Optuna's or MLflow's among what commands run in this process print

# Re-exported: what the helper modules hold, for `from conftest import X`; their fixtures, for pytest to see
__all__ = [
    "CLASSES",
    "PG_ADMIN_URL",
    "PNG_SIGNATURE",
    "POLICY_SPACE",
    "TEST_IMAGES",
    "TINY",
    "TINY_TRAIN",
    "TRAIN_IMAGES",
    "TRIAL_STEPS_PER_EPOCH",
    "VAL_SIZE",
    "MlflowServer",
    "Outage",
    "ScriptRun",
    "StorageProxy",
    "artifacts",
    "assert_png",
    "assert_user_error",
    "console_script",
    "count_lines",
    "create_database",
    "drawn",
    "drop_database",
    "epoch_metrics",
    "free_port",
    "heartbeat_env",
    "invoke",
    "kill_a_worker_mid_trial",
    "load_trials",
    "missing",
    "mlflow_server",
    "pg_url",
    "reported_epoch",
    "run_sweeper",
    "start_process",
    "start_sweeper",
    "stop_process_group",
    "strict_json",
    "study_init",
    "sweeper_command",
    "synthetic_images",
    "tiny_config",
    "wait_for",
    "wait_until_stale",
    "write_image_folder",
]

SHARED_CIFAR = Path(__file__).resolve().parents[2] / "shared" / "data" / "cifar10-jpeg.tar.xz"
REPO_ROOT = Path(__file__).resolve().parents[1]


@pytest.hookimpl(tryfirst=True)  # before pytest-xdist's own hook reads the groups
def pytest_configure(config: pytest.Config) -> None:
    """Under pytest-xdist each worker, and every process it starts, trains on its share of the cores (one each
    for `make test`'s two workers on two cores): torch's default of a thread per core in every worker made the
    threads contend, and the suite took over half again as long in about twice the CPU time."""
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "0"))
    if workers:
        import torch

        threads = max(1, (os.cpu_count() or 1) // workers)
        os.environ["OMP_NUM_THREADS"] = str(threads)
        torch.set_num_threads(threads)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """With pytest-xdist (``-n 2 --dist loadgroup``, as `make test` runs), the tests that share a costly session
    fixture run on one worker, so that it is made once: one MLflow server, one decoded copy of CIFAR-10."""
    for item in items:
        for fixture, group in (("mlflow_server", "mlflow-server"), ("decoded_cifar", "cifar")):
            if fixture in getattr(item, "fixturenames", ()):
                item.add_marker(pytest.mark.xdist_group(group))


@pytest.fixture(scope="session")
def image_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 3-class ImageFolder: 300 train and 90 test PNGs (shared by the session; do not modify)."""
    return write_image_folder(tmp_path_factory.mktemp("synthetic") / "shapes", n_train=300, n_test=90)


@pytest.fixture()
def cache_dir(tmp_path: Path) -> Path:
    return tmp_path / "cache"


# How long the tests' commands wait for a database that refuses connections: a refused connection at start is
# waited for like any outage (SWEEPER_DB_OUTAGE_SECONDS, 120 s by default), which a test of bad input need not sit out
TEST_PATIENCE = {"SWEEPER_DB_OUTAGE_SECONDS": "3", "SWEEPER_RETRY_DELAY": "0.2", "SWEEPER_RETRY_MAX_DELAY": "0.5"}


@pytest.fixture(autouse=True)
def _isolated_cwd(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every test runs in its own folder, so default outputs (runs/, sweeper.db, mlruns) never leak; a database
    that does not answer is waited for seconds, not the default two minutes (a test of outages sets its own)."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("SWEEPER_CACHE_DIR", str(tmp_path / "cache"))
    for name, value in TEST_PATIENCE.items():
        monkeypatch.setenv(name, value)


@pytest.fixture(autouse=True)
def _no_process_left() -> Iterator[None]:
    yield
    while _started:
        stop_process_group(_started.pop())


# -- data sources ----------------------------------------------------------------------------------------------

CIFAR_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")


def make_archive(folder: Path, dest: Path, *, top_folder: bool = True) -> Path:
    """Pack ``folder`` as ``dest`` (.tar, .tar.gz, .tgz, .tar.xz or .zip), under its own name unless not top_folder."""
    prefix = folder.name if top_folder else ""
    files = sorted(p for p in folder.rglob("*"))
    if dest.name.endswith(".zip"):
        with zipfile.ZipFile(dest, "w", compression=zipfile.ZIP_DEFLATED) as zf:
            for path in files:
                zf.write(path, "/".join(filter(None, (prefix, path.relative_to(folder).as_posix()))))
        return dest
    mode = {".tar": "w", ".gz": "w:gz", ".tgz": "w:gz", ".xz": "w:xz"}[dest.suffix]
    with tarfile.open(dest, mode) as tar:
        for child in sorted(folder.iterdir()):
            tar.add(child, arcname="/".join(filter(None, (prefix, child.name))))
    return dest


def small_folder(tmp_path: Path, name: str = "shapes", *, n_train: int = 12, n_test: int = 6) -> Path:
    return write_image_folder(tmp_path / name, n_train=n_train, n_test=n_test)


def assert_same_sets(a: ImageSet, b: ImageSet) -> None:
    assert a.images.dtype == b.images.dtype == np.uint8
    np.testing.assert_array_equal(a.images, b.images)
    np.testing.assert_array_equal(a.labels, b.labels)


def fake_cifar_batches(folder: Path, *, per_batch: int = 4, n_test: int = 6, seed: int = 0) -> dict[str, np.ndarray]:
    """Write a tiny cifar-10-batches-py folder with the official pickle layout; returns the raw rows and labels."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True)
    rows, labels = {}, {}
    for name, n in [(f"data_batch_{i}", per_batch) for i in range(1, 6)] + [("test_batch", n_test)]:
        rows[name] = rng.integers(0, 256, size=(n, 3072), dtype=np.uint8)
        labels[name] = rng.integers(0, 10, size=n).tolist()
        batch = {b"batch_label": name.encode(), b"labels": labels[name], b"data": rows[name], b"filenames": [b"x"] * n}
        (folder / name).write_bytes(pickle.dumps(batch, protocol=2))
    meta = {b"num_cases_per_batch": per_batch, b"label_names": [c.encode() for c in CIFAR_CLASSES], b"num_vis": 3072}
    (folder / "batches.meta").write_bytes(pickle.dumps(meta, protocol=2))
    train_rows = np.concatenate([rows[f"data_batch_{i}"] for i in range(1, 6)])
    train_labels = [label for i in range(1, 6) for label in labels[f"data_batch_{i}"]]
    return {
        "train_rows": train_rows,
        "train_labels": np.array(train_labels),
        "test_rows": rows["test_batch"],
        "test_labels": np.array(labels["test_batch"]),
    }


@pytest.fixture()
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 256 KiB file system (tmpfs) to fill up; where mounting is not permitted, skipped locally and failed in CI
    (its stand-in, a writer that fails with ENOSPC, is tested without a mount)."""
    mount = tmp_path / "small"
    mount.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(mount)], capture_output=True)
    if done.returncode != 0:
        missing(f"cannot mount a tmpfs here: {done.stderr.decode().strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def grow(disk: Path, size: str = "64m") -> None:
    """Free space on a ``small_disk``: remount it larger, its files kept."""
    subprocess.run(["mount", "-o", f"remount,size={size}", str(disk)], check=True)


def fill(folder: Path) -> None:
    """Write zeros into ``folder/filler`` until its file system is full."""
    fd = os.open(folder / "filler", os.O_WRONLY | os.O_CREAT, 0o644)
    try:
        while os.write(fd, b"\0" * 4096) > 0:
            pass
    except OSError as err:
        assert err.errno == errno.ENOSPC, err
    finally:
        os.close(fd)


def load_source(
    path: str, *, cache_dir: Path | str, progress: Any = None
) -> tuple[ImageSet, ImageSet, tuple[str, ...]]:
    """The full train set, the full test set and the class names of the data source ``path``, as ``load_splits``
    reads them with no limit and no validation split."""
    from pipelines.config import DataConfig
    from pipelines.data import load_splits

    splits = load_splits(DataConfig(path=path, cache_dir=str(cache_dir)), progress=progress)
    return splits.train, splits.test, splits.classes


def error_of(path: Path | str, cache_dir: Path) -> str:
    """The one-line UserError loading ``path`` raises."""

    with pytest.raises(UserError) as info:
        load_source(str(path), cache_dir=cache_dir)
    message = str(info.value)
    assert "\n" not in message
    return message


@pytest.fixture(scope="session")
def decoded_cifar(tmp_path_factory: pytest.TempPathFactory, shared_cifar: Path) -> tuple[Path, Splits]:
    """The shared CIFAR-10 copy decoded once per session: (its cache folder, the splits of the first load)."""
    from pipelines.config import DataConfig
    from pipelines.data import load_splits

    cache = tmp_path_factory.mktemp("cifar-cache")
    return cache, load_splits(DataConfig(path=str(shared_cifar), cache_dir=str(cache)))


@pytest.fixture(scope="session")
def shared_cifar() -> Path:
    """The shared CIFAR-10 JPEG copy beside the checkout (CI has it)."""
    if not SHARED_CIFAR.is_file():
        missing(f"shared CIFAR-10 copy missing: {SHARED_CIFAR}")
    return SHARED_CIFAR


# -- training runs on the shapes -----------------------------------------------------------------------------------

STEPS_PER_EPOCH = TRAIN_IMAGES // 32  # tiny_config's batches of 32, the last partial batch dropped
RUN_FILES = {
    "config.yaml",
    "metrics.json",
    "model.pt",
    "plots/lr_schedule.png",
    "plots/curves.png",
    "plots/misclassified.png",
}


@pytest.fixture(scope="session")
def splits(image_folder: Path, tmp_path_factory: pytest.TempPathFactory) -> Splits:
    """The shapes as tiny_config loads them: 300 training, 90 test images, no validation split (do not modify)."""
    from pipelines.data import load_splits

    return load_splits(tiny_config(image_folder, tmp_path_factory.mktemp("splits") / "out").data)


@pytest.fixture(scope="session")
def held_out_splits(image_folder: Path, tmp_path_factory: pytest.TempPathFactory) -> Splits:
    """The shapes with 30 of the training images held out for validation (do not modify)."""
    from pipelines.data import load_splits

    out = tmp_path_factory.mktemp("held-out-splits") / "out"
    return load_splits(tiny_config(image_folder, out, **{"data.val_size": 30}).data)


@pytest.fixture(scope="session")
def trained(image_folder: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Config, Result]:
    """The recipe, shrunk: 3 epochs, loading the data from the ImageFolder like a user would, outputs written."""
    from pipelines.train import run

    cfg = tiny_config(image_folder, tmp_path_factory.mktemp("trained") / "run")
    return cfg, run(cfg)


def losses(result: Result) -> list[tuple[float, float]]:
    return [(m.train_loss, m.test_loss) for m in result.history]
