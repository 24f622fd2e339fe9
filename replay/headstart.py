"""A folder's last rank files parsed while the command is still importing its analysis modules.

`replay analyze DIR` spends its first 0.5-0.7 s importing pandas and the analysis on one core, and
the folder's parse waits behind that import; on a machine of two cores the other core sits idle. A
child forked before the import (it loads only numpy and msgspec) parses rank files from the
folder's end, one at a time, into what kineto.read_events returns, and leaves each in a file. The
stage-one workers, which take files from the front, pick up a file already parsed instead of
parsing it. The child claims no new file once stage one has started: from then on the workers use
every core, and a third parser would only add memory.

Who parses a file is decided by whoever creates its claim first (O_EXCL). The child holds an
exclusive lock on its claim until the file's result is written; a worker that finds the child's
claim waits on that lock (released when the child finishes or dies) and parses the file itself
when no result is there. The parse is the same call with the same arguments as the worker's own,
so the tables - and every output - are the same with or without a head start
(tests/test_headstart.py)."""
from __future__ import annotations

import os
import pickle
import shutil
import signal
import tempfile
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

try:
    import fcntl
except ImportError:               # not a POSIX system: no head start
    fcntl = None  # type: ignore[assignment]

MIN_CORES = 2              # one core: nothing is idle during the import


@dataclass
class HeadStart:
    """The forked parser: its folder of claims and results, and its pid."""
    folder: str
    pid: int

    def stop(self) -> None:
        """Claim no new file (stage one is starting: the workers take every core)."""
        _touch(os.path.join(self.folder, "stop"))

    def end(self) -> None:
        """Stop the child, reap it, and remove its folder (every path out of the command)."""
        self.stop()
        try:
            os.kill(self.pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
        try:
            os.waitpid(self.pid, 0)
        except ChildProcessError:
            pass
        shutil.rmtree(self.folder, ignore_errors=True)


def start(files: list[str], cores: int) -> HeadStart | None:
    """Fork the parser for these rank files (in the folder's order), or None where it cannot help."""
    if len(files) < 2 or cores < MIN_CORES or fcntl is None or not hasattr(os, "fork"):
        return None
    try:
        folder = tempfile.mkdtemp(prefix="moe-timeline-headstart-")
    except OSError:
        return None
    try:
        pid = os.fork()
    except OSError:               # no process to spare: the workers parse every file, as without it
        shutil.rmtree(folder, ignore_errors=True)
        return None
    if pid:
        return HeadStart(folder, pid)
    code = 0
    try:                          # the child: never returns, never prints, never runs the parent's exit hooks
        signal.signal(signal.SIGINT, signal.SIG_DFL)
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        _parse_from_end(files, folder)
    except BaseException:         # noqa: BLE001  (a worker parses the file itself and reports any error)
        code = 1
    os._exit(code)


def take(folder: str, index: int) -> tuple[list[dict[str, Any]], dict[str, Any]] | None:
    """In a stage-one worker: the child's parse of file `index`, or None (this worker parses it)."""
    claim = os.path.join(folder, f"{index}.claim")
    try:
        os.close(os.open(claim, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
        return None               # claimed here first: the child never touches it
    except FileExistsError:
        pass
    except OSError:
        return None
    try:
        with open(claim, "rb") as lock:
            fcntl.flock(lock, fcntl.LOCK_SH)          # until the child has written its result (or died)
        with open(os.path.join(folder, f"{index}.parsed"), "rb") as f:
            return pickle.load(f)
    except (OSError, EOFError, pickle.UnpicklingError):
        return None


def _parse_from_end(files: list[str], folder: str) -> None:
    os.environ["REPLAY_WORKERS"] = "1"       # as in a pool worker: the same ranges, the same parts
    from .columns import CPU_OP_CATS, _Columns
    from .kineto import read_events

    for index in range(len(files) - 1, -1, -1):
        if os.path.exists(os.path.join(folder, "stop")):
            return
        lock = _claim(folder, index)
        if lock is None:
            return                # a worker has reached it: every file before it is theirs too
        with lock:
            out = read_events(Path(files[index]), partial(_Columns, files[index], skip_cats=CPU_OP_CATS),
                              lambda n: None)
            tmp = os.path.join(folder, f"{index}.parsed.tmp")
            with open(tmp, "wb") as f:
                pickle.dump(out, f, protocol=pickle.HIGHEST_PROTOCOL)
            os.rename(tmp, os.path.join(folder, f"{index}.parsed"))


def _claim(folder: str, index: int) -> Any:
    """File `index`'s claim, created already locked (linked into place under the lock), or None
    when a worker claimed it first."""
    tmp = os.path.join(folder, f"{index}.claim.child")
    lock = open(tmp, "wb")
    fcntl.flock(lock, fcntl.LOCK_EX)
    try:
        os.link(tmp, os.path.join(folder, f"{index}.claim"))
    except FileExistsError:
        lock.close()
        return None
    return lock


def _touch(path: str) -> None:
    try:
        os.close(os.open(path, os.O_CREAT | os.O_WRONLY))
    except OSError:
        pass


__all__ = ["HeadStart", "start", "take", "MIN_CORES"]
