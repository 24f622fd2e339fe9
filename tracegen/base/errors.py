"""One error type for everything a user can get wrong, and the CLI wrapper that turns it into
one line on stderr and exit status 2 (never a traceback)."""
from __future__ import annotations

import sys
from typing import Callable, NoReturn


class UserError(Exception):
    """Bad input from the user: a wrong name, a malformed file, an impossible plan."""


def run_cli(prog: str, main: Callable[[list[str] | None], int], argv: list[str] | None = None) -> int:
    """Run a CLI entry point: UserError -> one line + exit 2; Ctrl-C -> exit 130; broken pipe -> quiet."""
    try:
        return main(argv)
    except UserError as exc:
        print(f"{prog}: error: {exc}", file=sys.stderr)
        return 2
    except SystemExit as exc:   # argparse: usage errors (2) and --help (0), as a return code
        return exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 2)
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:     # output piped into `head`: stop quietly
        sys.stdout = None  # type: ignore[assignment]
        return 0


def exit_now(rc: int) -> NoReturn:
    """End a command's process at once: exit handlers run and the standard streams are flushed, but
    the interpreter is not torn down object by object (after an analysis that holds pandas tables
    and has pandas, pyarrow and numpy loaded, that teardown is about a tenth of a second of nothing
    the user asked for). Every output file is already written whole (atomic writes) by then."""
    import atexit
    import os
    try:
        atexit._run_exitfuncs()            # what a normal exit runs first: logging, pools, Dask clients
    finally:
        for stream in (sys.stdout, sys.stderr):
            try:
                if stream is not None:
                    stream.flush()
            except (OSError, ValueError):   # a closed pipe (`| head`) or a closed stream: nothing to keep
                pass
        os._exit(rc)
