"""Output paths: checked before any work (a run must not train for minutes and then fail to write its results),
written whole or not at all, and names that become file names kept inside their folder."""

from __future__ import annotations

import contextlib
import os
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

from pipelines.errors import UserError


def check_writable(path: Path, *, what: str, folder: bool = True) -> None:
    """Raise UserError unless ``path`` (a folder, or a file when ``folder`` is False) can be written: it exists
    as such, or the nearest folder above it that exists takes a new file (tried with a temporary file, removed at
    once: permissions alone do not tell, e.g. for root on /proc or a read-only mount). ``what`` names the setting
    in the message, e.g. ``train.out_dir``."""
    path = Path(path).expanduser()
    if path.exists():
        if folder != path.is_dir():
            kind, wanted = ("file", "folder") if folder else ("folder", "file")
            raise UserError(f"{what} {path} is a {kind}; give a {wanted}")
        if not os.access(path, os.W_OK):
            raise UserError(f"{what} {path} is not writable")
        if not folder:
            return
        probe_in = path
    else:
        probe_in = path.absolute().parent
        while not probe_in.exists():
            probe_in = probe_in.parent
        if not probe_in.is_dir():
            raise UserError(f"{what} {path} cannot be created: {probe_in} is not a folder")
    try:
        with tempfile.TemporaryFile(dir=probe_in):
            pass
    except OSError as err:
        raise UserError(f"{what} {path} cannot be written: {probe_in} takes no new file ({err.strerror})") from err


@contextlib.contextmanager
def atomic_path(path: Path) -> Iterator[Path]:
    """A temporary file beside ``path`` for the block to write (same suffix: writers that go by it still work),
    renamed onto ``path`` when the block ends and removed when it fails: a reader sees the old file or the whole
    new one, never half of it. A write that fails on the file system (a full disk) raises UserError naming
    ``path``; nothing of it is left behind."""
    path = Path(path)
    tmp: str | None = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = str(path.parent / f".{path.name}.{uuid.uuid4().hex[:8]}{path.suffix}")
        os.close(os.open(tmp, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666))  # the umask's mode, as open() gives
        yield Path(tmp)
        os.replace(tmp, path)
        tmp = None
    except OSError as err:
        raise UserError(f"cannot write {path}: {err.strerror or err}") from err
    finally:
        if tmp is not None:
            Path(tmp).unlink(missing_ok=True)


def write_text(path: Path, text: str) -> Path:
    """``text`` into ``path`` whole or not at all (:func:`atomic_path`); returns ``path``."""
    with atomic_path(path) as tmp:
        tmp.write_text(text)
    return Path(path)


NAME_LIMIT = 200  # characters (and UTF-8 bytes) of a name that becomes a file name: 255 (NAME_MAX) leaves room
# for what is added to it ("<study>-trial-<number>", "<study>.db" ...)


def check_name(name: str, *, what: str) -> str:
    """``name`` if it can be one file name in a folder of ours and leave it by no path: not empty, not ``.`` or
    ``..``, no ``/`` or ``\\``, no control character, no quotes or surrounding spaces, at most NAME_LIMIT
    characters and bytes; else UserError naming ``what``."""
    problem = None
    if not name or name.strip() != name:
        problem = "must be non-empty, without surrounding spaces"
    elif name in (".", ".."):
        problem = "cannot be . or .."
    elif any(c in name for c in "/\\"):
        problem = "cannot hold a path separator (/ or \\)"
    elif any(ord(c) < 32 or ord(c) == 127 for c in name):
        problem = "cannot hold control characters (newlines, tabs ...)"
    elif any(c in name for c in "'\"`"):
        problem = "cannot hold quotes"
    elif len(name.encode("utf-8")) > NAME_LIMIT:
        problem = f"must be at most {NAME_LIMIT} bytes (it becomes a file name), got {len(name.encode('utf-8'))}"
    if problem:
        shown = repr(name) if len(name) <= 60 else repr(name[:40]) + "..."
        raise UserError(f"{what} {shown} {problem}")
    return name
