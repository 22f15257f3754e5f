"""Shared fixtures: small generated image sets that a tiny ResNet can learn in a few CPU epochs."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

CLASSES = ("circle", "cross", "square")
SHARED_CIFAR = Path(__file__).resolve().parents[2] / "shared" / "data" / "cifar10-jpeg.tar.xz"


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


@pytest.fixture(scope="session")
def image_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 3-class ImageFolder: 300 train and 90 test PNGs (shared by the session; do not modify)."""
    return write_image_folder(tmp_path_factory.mktemp("synthetic") / "shapes", n_train=300, n_test=90)


@pytest.fixture()
def cache_dir(tmp_path: Path) -> Path:
    return tmp_path / "cache"


@pytest.fixture(autouse=True)
def _isolated_cwd(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every test runs in its own folder, so default outputs (runs/, sweeper.db, mlruns) never leak."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("SWEEPER_CACHE_DIR", str(tmp_path / "cache"))


# -- real servers on loopback ----------------------------------------------------------------------------------

PG_ADMIN_URL = "postgresql+psycopg2://postgres@127.0.0.1:5432/test"  # trust auth on this machine and in CI


def wait_for(predicate, timeout: float, what: str) -> None:
    """Poll ``predicate`` every 0.3 s until it holds; fail naming ``what`` after ``timeout`` seconds."""
    import time

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
    import os

    return os.environ.get("CI", "").lower() in ("1", "true", "yes")


def missing(reason: str) -> None:
    """A prerequisite of this machine is absent: skip on a developer's machine, fail in CI (where it must exist)."""
    if _in_ci():
        pytest.fail(f"{reason} (required in CI)")
    pytest.skip(reason)


@pytest.fixture()
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
        import os
        import subprocess
        import sys
        import time
        import urllib.request

        (self.root / "artifacts").mkdir(parents=True, exist_ok=True)
        log = open(self.root / "mlflow-server.log", "ab")  # noqa: SIM115 - closed with the process
        self.proc = subprocess.Popen(
            [
                sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port",
                str(self.port), "--workers", "1", "--backend-store-uri", self.backend,
                "--artifacts-destination", str(self.root / "artifacts"), "--serve-artifacts",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            # no job-runner consumers: each would hold its own connections to the backend database
            env={**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"},
        )  # fmt: skip
        deadline = time.monotonic() + timeout
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

    def stop(self) -> None:
        import os
        import signal

        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=20)
            except Exception:  # noqa: BLE001
                os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc = None


@pytest.fixture(scope="session")
def mlflow_server(tmp_path_factory: pytest.TempPathFactory) -> object:
    """One tracking server for the whole session (it takes ~13 s to start here)."""
    server = MlflowServer(tmp_path_factory.mktemp("mlflow-server"))
    server.start()
    yield server
    server.stop()
    drop_database(server.backend)
