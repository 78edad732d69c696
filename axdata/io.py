"""Atomic file writes: a reader never sees a half-written artefact, an interrupted writer leaves none."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from axdata.errors import OutputExistsError


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside `path`; on success it replaces `path` in one rename."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        # mkstemp creates 0600 files, and some writers (safetensors) re-create the file 0600: every artefact gets
        # the usual permissions of a new file, set after the writer is done.
        os.chmod(tmp_path, 0o666 & ~_current_umask())
        with open(tmp_path, "rb") as handle:
            os.fsync(handle.fileno())
        os.replace(tmp_path, target)
    finally:
        tmp_path.unlink(missing_ok=True)


def _current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write_text(path: str | Path, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def atomic_write_json(path: str | Path, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, ensure_ascii=False, default=str) + "\n")


def check_new_directory(path: str | Path, *, overwrite: bool, flag: str = "--overwrite") -> None:
    """Writers never clobber: refuse a result folder `path` that exists and holds something, unless `overwrite`.

    Called before any model loads or download starts, so a refusal costs nothing."""
    target = Path(path)
    if not target.exists() and not target.is_symlink():
        return
    if not target.is_dir():
        raise OutputExistsError(f"{target} exists and is not a directory; pass the path of a new directory.")
    if any(target.iterdir()) and not overwrite:
        raise OutputExistsError(f"{target} already exists and is not an empty directory; write to a new directory, "
                                f"or pass {flag} to replace it.")


@contextmanager
def replaced_directory(path: str | Path, *, overwrite: bool, flag: str = "--overwrite") -> Iterator[Path]:
    """Yield an empty staging folder beside `path`; when the block succeeds the staging folder becomes `path`.

    An existing non-empty `path` is refused unless `overwrite` (`check_new_directory`); with it, the old folder is
    swapped out only once the new one is complete, so a failed or killed writer leaves the old result whole and
    readers never see a mix of the two (two renames: for an instant there is no folder at all).
    """
    target = Path(path)
    check_new_directory(target, overwrite=overwrite, flag=flag)
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent))
    # mkdtemp makes a 0700 folder; the result gets the usual permissions of a new folder.
    os.chmod(staging, 0o777 & ~_current_umask())
    try:
        yield staging
        if target.exists() and any(target.iterdir()):
            check_new_directory(target, overwrite=overwrite, flag=flag)  # it may have appeared meanwhile
            retired = target.parent / f".{target.name}.{uuid.uuid4().hex[:8]}.old.tmp"
            os.rename(target, retired)
            try:
                os.rename(staging, target)
            except OSError:
                os.rename(retired, target)  # put the old result back: never leave no result behind
                raise
            shutil.rmtree(retired, ignore_errors=True)
        else:
            os.replace(staging, target)  # replaces an empty folder in one rename
    finally:
        shutil.rmtree(staging, ignore_errors=True)
