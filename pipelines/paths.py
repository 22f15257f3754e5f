"""Output paths, checked before any work: a run must not train for minutes and then fail to write its results."""

from __future__ import annotations

import os
import tempfile
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
