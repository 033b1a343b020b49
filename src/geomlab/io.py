"""Atomic file writes: a reader sees the old file or the complete new one, never a fragment.

:func:`atomic_write` is the one writer of geomlab: every artifact, manifest, resume piece,
checkpoint and downloaded file goes through it (a temporary file with a unique name in the same
folder, flushed to disk, then renamed into place).
"""

from __future__ import annotations

import json
import math
import os
import re
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

_UMASK = os.umask(0)
os.umask(_UMASK)

TMP_SUFFIX = ".tmp"
_TMP_NAME = re.compile(r"\..+\.[A-Za-z0-9_]{8}" + re.escape(TMP_SUFFIX))  # mkstemp's names


def _fsync_dir(folder: Path) -> None:
    """Make a rename in ``folder`` durable (a no-op where directories cannot be opened)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:  # pragma: no cover - e.g. Windows
        return
    try:
        os.fsync(fd)
    except OSError:  # pragma: no cover - some file systems refuse fsync on directories
        pass
    finally:
        os.close(fd)


def atomic_write(path: Path, write: Callable[[Path], None]) -> Path:
    """Call ``write(tmp)`` on a temporary file in the same folder, then rename it into place.

    The temporary name is unique (``.<name>.<random>.tmp``), so concurrent writers never share
    one; its data is fsynced before the rename and the folder after it. If ``write`` raises
    (also on Ctrl-C), the temporary file is removed and ``path`` is left as it was.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=TMP_SUFFIX, dir=path.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes 0600; artifacts should be readable
        write(tmp)
        with open(tmp, "rb") as handle:
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)
    return path


def atomic_write_text(path: Path, text: str) -> Path:
    return atomic_write(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))


def atomic_write_bytes(path: Path, data: bytes) -> Path:
    return atomic_write(path, lambda tmp: tmp.write_bytes(data))


def to_jsonable(obj: Any, *, keep_non_finite: bool = False) -> Any:
    """Plain JSON values. Non-finite floats become null (strict JSON has no NaN) unless
    ``keep_non_finite``, for files geomlab reads back itself (resume pieces)."""
    if isinstance(obj, dict):
        return {str(k): to_jsonable(v, keep_non_finite=keep_non_finite) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [to_jsonable(v, keep_non_finite=keep_non_finite) for v in obj]
    if isinstance(obj, Path):
        return str(obj)
    if hasattr(obj, "item") and callable(obj.item) and getattr(obj, "ndim", 0) == 0:
        obj = obj.item()
    if hasattr(obj, "tolist"):
        return to_jsonable(obj.tolist(), keep_non_finite=keep_non_finite)
    if isinstance(obj, float) and not math.isfinite(obj) and not keep_non_finite:
        return None
    return obj


class CorruptFileError(ValueError):
    """A file geomlab wrote cannot be read back (truncated, not JSON); the message names it."""


def write_json(path: Path, obj: Any, *, keep_non_finite: bool = False) -> Path:
    """JSON, atomically. Strict by default (NaN and infinities written as null); with
    ``keep_non_finite`` they are written as ``NaN``/``Infinity`` (Python's JSON extension,
    which :func:`read_json` reads back): for files only geomlab reads, such as resume pieces,
    where a NaN must stay a NaN."""
    value = to_jsonable(obj, keep_non_finite=keep_non_finite)
    text = json.dumps(value, indent=2, allow_nan=keep_non_finite) + "\n"
    return atomic_write_text(path, text)


def read_json(path: Path) -> Any:
    """Parse a JSON file; a truncated or garbled one raises :class:`CorruptFileError` naming
    it (a missing one raises FileNotFoundError as usual)."""
    path = Path(path)
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise CorruptFileError(f"{path} is not valid JSON ({error})") from None


def is_temporary(path: Path) -> bool:
    """Is ``path`` a temporary file of :func:`atomic_write` (``.<name>.<random>.tmp``)?"""
    return bool(_TMP_NAME.fullmatch(Path(path).name))


def remove_orphaned_temporaries(folder: Path, *, recursive: bool = True) -> list[Path]:
    """Delete temporary files :func:`atomic_write` left under ``folder`` when its process was
    killed (``.<name>.<random>.tmp``). Call it only while no one else writes there."""
    removed = []
    pattern = f".*{TMP_SUFFIX}"
    found = Path(folder).rglob(pattern) if recursive else Path(folder).glob(pattern)
    for path in sorted(found):
        if _TMP_NAME.fullmatch(path.name) and path.is_file() and not path.is_symlink():
            path.unlink(missing_ok=True)
            removed.append(path)
    return removed


def write_csv(path: Path, frame: Any) -> Path:
    """Write a pandas DataFrame as CSV (no index)."""
    # pandas writes floats with Python's shortest round-trip repr: exact and readable.
    return atomic_write(path, lambda tmp: frame.to_csv(tmp, index=False))
