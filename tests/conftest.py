"""What the tests share: tiny configs, generated image sets, the CLI run in this process or as one, real servers
on loopback (MLflow, PostgreSQL), processes stopped whatever happens, waits with deadlines, records read back.

Test modules mirror the product's: tests/pipelines/..., tests/sweeper/..., tests/sweeper/cli/test_cli_<command>.py,
tests/benchmarks/, tests/scripts/, tests/docker/. Nothing here is copied into them.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import pickle
import signal
import subprocess
import sys
import tarfile
import threading
import time
import zipfile
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import pytest
from PIL import Image

from pipelines.callbacks import EpochMetrics
from pipelines.config import Config
from pipelines.data import ImageSet, Splits
from pipelines.errors import UserError
from pipelines.result import Result
from sweeper.cli import SERVER_ENV, app, no_phoning_home, quiet_libraries

no_phoning_home(os.environ)  # as the console script does: no telemetry or update check from the tests' imports
quiet_libraries()  # and no INFO lines of Optuna's or MLflow's among what commands run in this process print

CLASSES = ("circle", "cross", "square")
SHARED_CIFAR = Path(__file__).resolve().parents[2] / "shared" / "data" / "cifar10-jpeg.tar.xz"
REPO_ROOT = Path(__file__).resolve().parents[1]
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"

# -- tiny configs: a run of about a second on 2 CPU cores, on the image_folder fixture -----------------------------

TRAIN_IMAGES, TEST_IMAGES = 300, 90  # the image_folder fixture's
TINY_TRAIN = ["model.width=0.125", "train.batch_size=32", "train.device=cpu"]  # `--set` words for one run
VAL_SIZE = 60  # studies hold out 60 of the 300 training images for validation
TINY = [*TINY_TRAIN, f"data.val_size={VAL_SIZE}"]  # `--set` words for a study's trials (add train.epochs=N)
TRIAL_STEPS_PER_EPOCH = (TRAIN_IMAGES - VAL_SIZE) // 32  # a trial's optimizer steps per epoch on the shapes
# A space over four LR policies, each with keys searched only when it is drawn (a conditional space)
POLICY_SPACE = {
    "params": {
        "lr": {"type": "float", "low": 0.05, "high": 0.5, "log": True},
        "schedule.policy": {"type": "categorical", "choices": ["one_cycle", "step", "cosine", "plateau"]},
        "schedule.milestones": {"type": "categorical", "choices": [[1], [1.5]], "when": {"schedule.policy": "step"}},
        "schedule.gamma": {"type": "float", "low": 0.1, "high": 0.5, "when": {"schedule.policy": "step"}},
        "schedule.end_div": {"type": "categorical", "choices": [10, 100], "when": {"schedule.policy": "cosine"}},
        "schedule.patience": {"type": "int", "low": 0, "high": 1, "when": {"schedule.policy": ["plateau"]}},
    }
}


def epoch_metrics(epoch: int = 1, *, val: float | None = 0.5, test: float | None = 0.4, **more: Any) -> EpochMetrics:
    """An epoch's metrics as the loop reports them: ``val`` and ``test`` accuracies (None: not evaluated that
    epoch, and no loss either), the rest fixed unless ``more`` says otherwise."""
    values: dict[str, Any] = {
        "epoch": epoch, "train_loss": 1.0, "train_accuracy": 0.5, "test_loss": 1.1 if test is not None else None,
        "test_accuracy": test, "val_loss": 1.2 if val is not None else None, "val_accuracy": val, "lr": 0.1,
        "epoch_seconds": 1.0, "eval_seconds": 0.1,
    }  # fmt: skip
    return EpochMetrics(**{**values, **more})


def tiny_config(data: Path, out: Path, **overrides: object) -> Config:
    """The recipe shrunk to train on ``data`` in about a second per epoch (3 epochs unless overridden), writing to
    ``out``, caching decoded data beside it."""
    base = {
        "data.path": str(data),
        "data.cache_dir": str(out.parent / "cache"),
        "model.width": 0.125,
        "train.epochs": 3,
        "train.batch_size": 32,
        "train.device": "cpu",
        "train.out_dir": str(out),
    }
    return Config().with_overrides({**base, **overrides})


def synthetic_images(n: int, *, classes: int = 3, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Learnable 32x32 RGB images: class k is a bright shape k at a random place on a noisy background.

    Returns (uint8 (n, 32, 32, 3), int64 (n,)), labels balanced and in class order repeated.
    """
    rng = np.random.default_rng(seed)
    labels = np.arange(n) % classes
    images = rng.integers(0, 90, size=(n, 32, 32, 3), dtype=np.int64)
    yy, xx = np.mgrid[0:32, 0:32]
    for i, label in enumerate(labels):
        cy, cx = rng.integers(10, 22, size=2)
        color = rng.integers(150, 256, size=3)
        if label % 3 == 0:  # disc
            mask = (yy - cy) ** 2 + (xx - cx) ** 2 <= 36
        elif label % 3 == 1:  # cross
            mask = ((abs(yy - cy) <= 1) & (abs(xx - cx) <= 7)) | ((abs(xx - cx) <= 1) & (abs(yy - cy) <= 7))
        else:  # hollow square
            box = (abs(yy - cy) <= 6) & (abs(xx - cx) <= 6)
            mask = box & ~((abs(yy - cy) <= 4) & (abs(xx - cx) <= 4))
        images[i][mask] = color
    return images.astype(np.uint8), labels.astype(np.int64)


def write_image_folder(root: Path, *, n_train: int = 60, n_test: int = 30, classes=CLASSES, seed: int = 0) -> Path:
    """Write ``root/train/<class>/i.png`` and ``root/test/<class>/i.png``; returns root."""
    for split, n, split_seed in (("train", n_train, seed), ("test", n_test, seed + 1)):
        images, labels = synthetic_images(n, classes=len(classes), seed=split_seed)
        for i, (image, label) in enumerate(zip(images, labels, strict=True)):
            folder = root / split / classes[label]
            folder.mkdir(parents=True, exist_ok=True)
            Image.fromarray(image).save(folder / f"{i:05d}.png")
    return root


@pytest.hookimpl(tryfirst=True)  # before pytest-xdist's own hook reads the groups
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


# -- real servers on loopback ----------------------------------------------------------------------------------

PG_ADMIN_URL = "postgresql+psycopg2://postgres@127.0.0.1:5432/test"  # trust auth on this machine and in CI


def wait_for(predicate, timeout: float, what: str) -> None:
    """Poll ``predicate`` every 0.3 s until it holds; fail naming ``what`` after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.3)
    raise AssertionError(f"timed out waiting for {what}")


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def create_database(prefix: str) -> str:
    """A fresh, uniquely named PostgreSQL database; returns its SQLAlchemy URL. Dropped by ``drop_database``."""
    import uuid

    import sqlalchemy

    name = f"{prefix}_{uuid.uuid4().hex[:10]}"
    engine = sqlalchemy.create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
    try:
        with engine.connect() as conn:
            conn.execute(sqlalchemy.text(f'CREATE DATABASE "{name}"'))
    except sqlalchemy.exc.OperationalError as err:
        missing(f"PostgreSQL at 127.0.0.1:5432 is not reachable: {err.orig}")
    finally:
        engine.dispose()
    return PG_ADMIN_URL.rsplit("/", 1)[0] + f"/{name}"


def drop_database(url: str) -> None:
    import sqlalchemy

    name = url.rsplit("/", 1)[1]
    engine = sqlalchemy.create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
    try:
        with engine.connect() as conn:
            conn.execute(sqlalchemy.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    finally:
        engine.dispose()


def _in_ci() -> bool:
    return os.environ.get("CI", "").lower() in ("1", "true", "yes")


def missing(reason: str) -> None:
    """A prerequisite of this machine is absent: skip on a developer's machine, fail in CI (where it must exist)."""
    if _in_ci():
        pytest.fail(f"{reason} (required in CI)")
    pytest.skip(reason)


@pytest.fixture(scope="session")
def shared_cifar() -> Path:
    """The shared CIFAR-10 JPEG copy beside the checkout (CI has it)."""
    if not SHARED_CIFAR.is_file():
        missing(f"shared CIFAR-10 copy missing: {SHARED_CIFAR}")
    return SHARED_CIFAR


@pytest.fixture()
def pg_url() -> object:
    """A fresh PostgreSQL database for one test (Optuna storage)."""
    url = create_database("sweeper_test")
    yield url
    drop_database(url)


class MlflowServer:
    """``mlflow server --workers 1`` on a free loopback port, backed by its own PostgreSQL database."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.port = free_port()
        self.uri = f"http://127.0.0.1:{self.port}"
        self.backend = create_database("sweeper_mlflow")
        self.proc = None

    def start(self, timeout: float = 90.0) -> None:
        import sys
        import urllib.request

        (self.root / "artifacts").mkdir(parents=True, exist_ok=True)
        with open(self.root / "mlflow-server.log", "ab") as log:  # the child keeps its own copy
            # its own process group (start_new_session), so that stop() ends its gunicorn/uvicorn workers too; not a
            # start_process: a session's server outlives the test that first asked for it
            self.proc = subprocess.Popen(
                [
                    sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port",
                    str(self.port), "--workers", "1", "--backend-store-uri", self.backend,
                    "--artifacts-destination", str(self.root / "artifacts"), "--serve-artifacts",
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                # no job-runner consumers (each would hold its own connections to the backend database), no telemetry
                env={**os.environ, **SERVER_ENV},
            )  # fmt: skip
        deadline = time.monotonic() + timeout
        try:
            while time.monotonic() < deadline:
                if self.proc.poll() is not None:
                    raise RuntimeError(f"mlflow server exited: {(self.root / 'mlflow-server.log').read_text()[-2000:]}")
                try:
                    with urllib.request.urlopen(f"{self.uri}/health", timeout=2) as resp:
                        if resp.status == 200:
                            return
                except OSError:
                    time.sleep(0.5)
            raise RuntimeError(f"mlflow server did not answer within {timeout}s")
        except BaseException:
            self.stop()  # a server that never answered leaves no process behind either
            raise

    def stop(self) -> None:
        if self.proc is not None:
            stop_process_group(self.proc)
        self.proc = None


@pytest.fixture(scope="session")
def mlflow_server(tmp_path_factory: pytest.TempPathFactory) -> object:
    """One tracking server for the whole session (it takes ~13 s to start here)."""
    server = MlflowServer(tmp_path_factory.mktemp("mlflow-server"))
    server.start()
    yield server
    server.stop()
    drop_database(server.backend)


# -- processes a test starts ---------------------------------------------------------------------------------------

_started: list[subprocess.Popen] = []


def start_process(args: Sequence[Any], **popen: Any) -> subprocess.Popen:
    """``subprocess.Popen`` in a process group of its own; the group (the process and everything it started) is
    stopped when the test ends, whether it passed or not."""
    proc = subprocess.Popen([str(a) for a in args], start_new_session=True, **popen)
    _started.append(proc)
    return proc


@pytest.fixture(autouse=True)
def _no_process_left() -> Iterator[None]:
    yield
    while _started:
        stop_process_group(_started.pop())


def stop_process_group(proc: subprocess.Popen, *, grace: float = 20.0) -> None:
    """SIGTERM to the process group ``proc`` leads (it was started with start_new_session), up to ``grace``
    seconds for every member to exit, then SIGKILL to what is left. Returns when none is left."""
    for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 10.0)):
        if proc.poll() is not None and not _group_members(proc.pid):
            return
        with contextlib.suppress(ProcessLookupError):  # the group is empty, the leader a zombie: only reaping left
            os.killpg(proc.pid, sig)
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            if proc.poll() is not None and not _group_members(proc.pid):
                return
            time.sleep(0.1)
    raise AssertionError(f"process group {proc.pid} survived SIGKILL: {_group_members(proc.pid)}")


def _group_members(pgid: int) -> list[int]:
    """The processes of group ``pgid`` that still run (zombies excluded: an orphan waits for PID 1 to reap it)."""
    members = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            text = stat.read_text()
        except OSError:  # it exited while we looked
            continue
        state, _ppid, pgrp = text.rsplit(")", 1)[1].split()[:3]  # after "pid (comm)": comm may hold ") "
        if int(pgrp) == pgid and state != "Z":
            members.append(int(stat.parent.name))
    return members


# -- the storage proxy -----------------------------------------------------------------------------------------


class StorageProxy:
    """`sweeper storage serve` over a database on a free loopback port, its output in ``log``; stopped (SIGTERM to
    its group) when the test ends, if the test has not stopped it."""

    def __init__(self, database: str, log: Path, *, env: dict[str, str], port: int = 0, args: Sequence[str] = ()):
        import re
        import sys

        self.log = log
        self.proc = start_process(
            [sys.executable, "-m", "sweeper", "storage", "serve", "--storage", database, "--port", port, *args],
            env={**os.environ, **env},
            stdout=open(log, "ab"),  # noqa: SIM115 - the child keeps its own descriptor
            stderr=subprocess.STDOUT,
        )
        found: list[str] = []

        def ready() -> bool:
            if self.proc.poll() is not None:
                raise AssertionError(f"storage serve exited {self.proc.returncode}: {log.read_text()[-2000:]}")
            found[:] = re.findall(r"ready at (grpc://\S+)", log.read_text())
            return bool(found)

        wait_for(ready, 60, "storage serve's ready line")
        self.url = found[-1]

    def stop(self) -> int:
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout=30)


# -- the CLI, in this process (typer's CliRunner) -------------------------------------------------------------------


def invoke(*args: object, env: Mapping[str, str] | None = None, catch_exceptions: bool = True) -> Any:
    """``sweeper ARGS...`` in this process; the result has exit_code, stdout and stderr apart."""
    from typer.testing import CliRunner

    return CliRunner().invoke(app, [str(a) for a in args], env=env, catch_exceptions=catch_exceptions)


def study_init(name: str, data: Path, storage: str, *extra: str, tracking: str = "sqlite:///mlflow.db") -> None:
    """``sweeper study init NAME`` on the shapes with TINY trials (random sampler, no pruner), in this process;
    ``extra``: more ``--set`` words (e.g. train.epochs=4)."""
    result = invoke(
        "study", "init", name, "--data", data, "--storage", storage, "--tracking-uri", tracking,
        "--sampler", "random", "--pruner", "none", "--set", *TINY, *extra, catch_exceptions=False,
    )  # fmt: skip
    assert result.exit_code == 0, result.output


def strict_json(text: str) -> Any:
    """json.loads that refuses NaN and Infinity, which other JSON readers (jq, JavaScript) reject."""

    def reject(constant: str) -> None:
        raise ValueError(f"not JSON: {constant}")

    return json.loads(text, parse_constant=reject)


def assert_user_error(result: Any, *fragments: str) -> None:
    """Exit 2, one stderr line ``error: ...`` naming each fragment, no traceback, nothing on stdout."""
    assert result.exit_code == 2, (result.output, result.exception)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: ")
    for fragment in fragments:
        assert fragment in lines[0]
    assert "Traceback" not in result.output
    assert result.stdout == ""


def assert_png(path: Path) -> None:
    """A real PNG file, not an empty one."""
    assert path.is_file(), path
    assert path.read_bytes()[:8] == PNG_SIGNATURE, path
    assert path.stat().st_size > 1024, path


class ScriptRun(NamedTuple):
    """What the console script did: its exit code and what it printed."""

    code: int
    stdout: str
    stderr: str

    @property
    def output(self) -> str:
        return self.stdout + self.stderr


@pytest.fixture()
def console_script(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> Callable[..., ScriptRun]:
    """The console script's entry point (sweeper.cli.main: masked streams, logging, signal handlers, then the
    command) run in this process: ``console_script(*args)`` -> ScriptRun. What main() sets up
    for the process is undone after each call, and pytest's log handlers step aside so that its logging.basicConfig
    writes log lines to the masked stderr, as in a process of its own."""
    import logging

    from sweeper import cli

    def run(*args: object) -> ScriptRun:
        root = logging.getLogger()
        saved = (sys.stdout, sys.stderr, sys.unraisablehook, root.handlers[:], root.level)
        handlers = {signum: signal.getsignal(signum) for signum in (signal.SIGINT, signal.SIGTERM)}
        monkeypatch.setattr(sys, "argv", ["sweeper", *map(str, args)])
        capsys.readouterr()
        root.handlers.clear()
        try:
            cli.main()
            code = 0
        except SystemExit as done:
            code = done.code if isinstance(done.code, int) else 1
        finally:
            sys.stdout, sys.stderr, sys.unraisablehook = saved[:3]
            root.handlers[:] = saved[3]
            root.setLevel(saved[4])
            for signum, handler in handlers.items():
                signal.signal(signum, handler)
        captured = capsys.readouterr()
        return ScriptRun(code, captured.out, captured.err)

    return run


@pytest.fixture()
def drawn(monkeypatch: pytest.MonkeyPatch) -> list[tuple[Any, Path]]:
    """Every figure pipelines.plots writes during the test, as (Figure, path), in order: what a command drew."""
    from pipelines import plots

    seen: list[tuple[Any, Path]] = []
    save = plots.save_figure

    def recording(fig: Any, path: Path) -> Path:
        seen.append((fig, Path(path)))
        return save(fig, path)

    monkeypatch.setattr(plots, "save_figure", recording)
    return seen


# -- the CLI as users run it: its own process ----------------------------------------------------------------------


def sweeper_command(*args: object) -> list[str]:
    return [sys.executable, "-m", "sweeper", *map(str, args)]


def run_sweeper(
    *args: object, cwd: Path | None = None, env: Mapping[str, str] | None = None, timeout: float = 300
) -> subprocess.CompletedProcess[str]:
    """``python -m sweeper ARGS...`` to its end; ``env`` is added to this process's environment."""
    return subprocess.run(
        sweeper_command(*args), cwd=cwd, capture_output=True, text=True, timeout=timeout,
        env={**os.environ, **(env or {})},
    )  # fmt: skip


def start_sweeper(
    *args: object, log: Path | None = None, env: Mapping[str, str] | None = None, stdout: bool = True
) -> subprocess.Popen:
    """``python -m sweeper ARGS...`` started (see start_process): stderr, and stdout unless ``stdout`` is False,
    appended to ``log``."""
    out = open(log, "ab") if log is not None else subprocess.DEVNULL  # noqa: SIM115 - the child keeps its own copy
    try:
        return start_process(
            sweeper_command(*args), env={**os.environ, **(env or {})},
            stdout=out if stdout else subprocess.DEVNULL, stderr=out,
        )  # fmt: skip
    finally:
        if log is not None:
            out.close()


def kill_a_worker_mid_trial(
    common: Sequence[object], *, data: Path, database: str, log: Path, env: Mapping[str, str], name: str = "killed"
) -> None:
    """`study run NAME` on ``common`` (--storage ... --tracking-uri ...), SIGKILLed once its trial reported an
    epoch (read from the database at ``database``): a worker dead mid-trial, its trial left RUNNING."""
    victim = start_sweeper(
        "study", "run", name, "--data", data, "--n-trials", 1, "--pruner", "none", *common,
        "--set", *TINY, "train.epochs=40", log=log, env=env,
    )  # fmt: skip
    wait_for(lambda: reported_epoch(database, name), 120, "the victim's trial to report an epoch")
    victim.send_signal(signal.SIGKILL)
    victim.wait()


def heartbeat_env(*, heartbeat: int = 1, grace: int = 4, **more: object) -> dict[str, str]:
    """Environment for workers whose dead trials are found in seconds: a heartbeat every ``heartbeat`` s, stale after
    ``grace`` s; ``more``: further SWEEPER_* variables by lower-case suffix (outage_seconds=3 ->
    SWEEPER_DB_OUTAGE_SECONDS, retry_max_delay=0.5 -> SWEEPER_RETRY_MAX_DELAY). Unless given, the outage a worker
    waits for is the longest the grace period leaves (with the tests' back-off of at most 0.5 s)."""
    names = {"outage_seconds": "SWEEPER_DB_OUTAGE_SECONDS"}
    env = {"SWEEPER_HEARTBEAT_SECONDS": str(heartbeat), "SWEEPER_GRACE_SECONDS": str(grace)}
    env["SWEEPER_DB_OUTAGE_SECONDS"] = str(max(1, grace - heartbeat - 2))
    env.update({names.get(key, f"SWEEPER_{key.upper()}"): str(value) for key, value in more.items()})
    return env


# -- what the stores hold ------------------------------------------------------------------------------------------


def load_trials(storage: str, name: str) -> list[Any]:
    """The trials of study ``name`` in ``storage``, or [] while the study (or the storage's tables) is not made.

    Optuna makes the tables of a storage it opens; a test that polls one a command is making must not race it to
    that, so the storage is opened only once its schema is stamped."""
    import optuna
    import sqlalchemy

    url = storage
    if storage.startswith("sqlite:///"):  # read-only: connecting must not make the file
        path = storage.removeprefix("sqlite:///")
        if not Path(path).exists():
            return []
        url = f"sqlite:///file:{path}?mode=ro&uri=true"
    engine = sqlalchemy.create_engine(url, poolclass=sqlalchemy.pool.NullPool)
    try:
        with engine.connect() as conn:
            if conn.execute(sqlalchemy.text("SELECT version_num FROM alembic_version")).first() is None:
                return []
    except sqlalchemy.exc.SQLAlchemyError:  # no database file or table yet
        return []
    finally:
        engine.dispose()
    try:
        return optuna.load_study(study_name=name, storage=storage).trials
    except (KeyError, RuntimeError, optuna.exceptions.StorageInternalError):
        return []


def reported_epoch(storage: str, name: str) -> bool:
    """A trial of ``name`` runs, has its MLflow run and has reported an epoch."""
    from optuna.trial import TrialState

    return any(
        t.state == TrialState.RUNNING and t.intermediate_values and "mlflow_run_id" in t.user_attrs
        for t in load_trials(storage, name)
    )


def wait_until_stale(storage: str, name: str, *, grace: float, timeout: float = 60) -> None:
    """Until a running trial of ``name`` has had no heartbeat for ``grace`` seconds, as the next worker will judge
    it (Optuna's own query, read-only)."""
    import optuna

    reader = optuna.storages.RDBStorage(storage, heartbeat_interval=1, grace_period=int(grace))
    try:
        study_id = reader.get_study_id_from_name(name)
        wait_for(lambda: bool(reader._get_stale_trial_ids(study_id)), timeout, f"a stale trial of {name}")
    finally:
        reader.engine.dispose()


def artifacts(client: Any, run_id: str, path: str | None = None) -> set[str]:
    """Every artifact path of an MLflow run, folders walked."""
    out: set[str] = set()
    for info in client.list_artifacts(run_id, path):
        out |= artifacts(client, run_id, info.path) if info.is_dir else {info.path}
    return out


class Outage:
    """Every connection to the PostgreSQL database at ``url`` is cut every ``every`` seconds and, with ``refuse``,
    new ones are refused, from ``start()`` (or entering the block) until ``end()``; ``cuts`` counts those cut."""

    def __init__(self, url: str, *, refuse: bool = True, every: float = 0.2) -> None:
        import sqlalchemy

        self.name = url.rsplit("/", 1)[1]
        self.refuse, self.every = refuse, every
        self.admin = sqlalchemy.create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
        self.stop = threading.Event()
        self.cuts = 0
        self.thread = threading.Thread(target=self._cut, daemon=True)

    def _allow(self, allowed: bool) -> None:
        import sqlalchemy

        with self.admin.connect() as conn:
            conn.execute(sqlalchemy.text(f'ALTER DATABASE "{self.name}" ALLOW_CONNECTIONS {str(allowed).lower()}'))

    def start(self) -> Outage:
        if self.refuse:
            self._allow(False)
        self.thread.start()
        return self

    def _cut(self) -> None:
        import sqlalchemy

        while not self.stop.is_set():
            with self.admin.connect() as conn:
                rows = conn.execute(
                    sqlalchemy.text(
                        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                        "WHERE datname = :db AND pid <> pg_backend_pid()"
                    ),
                    {"db": self.name},
                ).fetchall()
            self.cuts += sum(1 for (ok,) in rows if ok)
            self.stop.wait(self.every)

    def end(self) -> None:
        self.stop.set()
        if self.thread.is_alive():
            self.thread.join()
        if self.refuse:
            self._allow(True)
        self.admin.dispose()

    def __enter__(self) -> Outage:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.end()


def count_lines(path: Path, text: str) -> Callable[[], int]:
    """How many lines of the file ``path`` (a worker's log) hold ``text``, read anew at each call."""

    def count() -> int:
        return sum(text in line for line in path.read_text(errors="replace").splitlines()) if path.exists() else 0

    return count
