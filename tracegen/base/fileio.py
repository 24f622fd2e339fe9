"""Output files are written whole or not at all: into a temporary file beside the target, then
renamed over it, so an error never leaves a half-written file."""
from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

from .errors import UserError


def atomic_write(path: str | Path, data: bytes | str) -> Path:
    path = Path(path)
    parent = path.parent if str(path.parent) else Path(".")
    if not parent.is_dir():
        raise UserError(f"cannot write {path}: folder {parent} does not exist")
    if path.is_dir():
        raise UserError(f"cannot write {path}: it is a folder")
    raw = data.encode("utf-8") if isinstance(data, str) else data
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=parent)
    except OSError as exc:      # a read-only or special folder (/proc, /sys), a full disk
        raise UserError(f"cannot write {path}: folder {parent} is not writable ({exc.strerror or exc})") from None
    try:
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        with os.fdopen(fd, "wb") as f:
            f.write(raw)
        os.replace(tmp, path)
    except OSError as exc:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise UserError(f"cannot write {path}: {exc.strerror or exc}") from None
    return path


def atomic_parquet(path: str | Path, frame: Any, compression: str = "snappy") -> Path:
    """A DataFrame as a Parquet file, written whole or not at all."""
    import pyarrow as pa
    import pyarrow.parquet as pq
    sink = pa.BufferOutputStream()
    pq.write_table(pa.Table.from_pandas(frame, preserve_index=False), sink, compression=compression)
    return atomic_write(path, sink.getvalue().to_pybytes())
