"""What the three commands (tracegen, replay, viz) share: the parser that reports usage errors
with exit status 2, help that keeps examples and shows defaults, the flags every trace-reading
subcommand takes, and the entry point that turns UserError into one line on stderr."""
from __future__ import annotations

import argparse
import math
import sys
from typing import Any, Callable, NoReturn

from .errors import exit_now, run_cli


class Formatter(argparse.RawDescriptionHelpFormatter, argparse.ArgumentDefaultsHelpFormatter):
    """Examples kept as written; a default appended to an option's help only where it says something:
    not for None / False (nothing set) and not where the help already names its default."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        help_ = action.help or ""
        if "default" in help_ or action.default in (None, False, argparse.SUPPRESS) or action.option_strings == []:
            return help_
        return super()._get_help_string(action)


class Parser(argparse.ArgumentParser):
    """argparse that reports usage errors with exit status 2 and one line (its default)."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def finite(text: str) -> float:
    """argparse type: a finite number (nan and inf would turn into null durations downstream)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"{text!r} is not a finite number")
    return value


def seed(text: str) -> int:
    """argparse type: a random seed (a whole number >= 0, as numpy's generators take)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"{text!r}: a seed is a whole number >= 0")
    return value


def new_parser(prog: str, description: str | None) -> tuple[argparse.ArgumentParser, argparse._SubParsersAction]:
    p = Parser(prog=prog, formatter_class=Formatter, description=description)
    sub = p.add_subparsers(dest="cmd", metavar="COMMAND", parser_class=Parser)
    sub.required = True
    return p, sub


def _native(x: Any) -> Any:
    """numpy scalars and arrays as the JSON types they stand for (an integer stays an integer)."""
    if hasattr(x, "tolist"):          # numpy scalar or array
        return x.tolist()
    raise TypeError(f"not JSON serialisable: {type(x).__name__}")


def clean(x: Any) -> Any:
    """A value as JSON should carry it: floats to 12 significant digits (1.0000000000000002 is 1.0,
    float32 noise from a query goes), NaN and infinities (which JSON has no words for) as null."""
    if isinstance(x, float) or (hasattr(x, "dtype") and getattr(x, "shape", None) == () and x.dtype.kind == "f"):
        v = float(x)
        return float(f"{v:.12g}") if math.isfinite(v) else None
    if isinstance(x, dict):
        return {k: clean(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [clean(v) for v in x]
    if hasattr(x, "tolist") and not isinstance(x, (str, bytes)):
        return clean(x.tolist())
    return x


def print_json(obj: Any, schema: str | None = None) -> None:
    """--json output: one indented JSON document on stdout; `schema` ("<name>/<version>") leads it;
    floats cleaned (clean)."""
    if schema is not None:
        obj = {"schema": schema, **obj}
    # msgspec encodes a large document several times faster than the standard library (issue 30);
    # imported here so that --help does not pay for it (start-up, issue 30)
    import msgspec

    text = msgspec.json.format(msgspec.json.encode(clean(obj), enc_hook=_native), indent=2)
    if hasattr(sys.stdout, "buffer"):
        sys.stdout.flush()
        sys.stdout.buffer.write(text)
    else:                                   # a text-only stream (a caller's StringIO)
        sys.stdout.write(text.decode())
    sys.stdout.write("\n")


def add_reading_args(p: argparse.ArgumentParser, json_help: str = "print one JSON object",
                     stages: bool = False) -> None:
    """--json, --taxonomy, --no-cache (and --stages) for subcommands that read traces."""
    p.add_argument("--json", action="store_true", help=json_help)
    if stages:
        p.add_argument("--stages", metavar="FILE", default=None,
                       help="extra rules mapping observed annotations / kernels to stages (TOML, see "
                            "replay/data/stages.toml)")
    p.add_argument("--taxonomy", metavar="FILE", default=None,
                   help="extra kernel-classification rules (TOML, tried before the built-in ones)")
    p.add_argument("--no-cache", action="store_true",
                   help="parse the files even if their columnar cache exists (cache: $MOE_TIMELINE_CACHE "
                        "or ~/.cache/moe-timeline)")
    p.add_argument("--strict", action="store_true",
                   help="a folder's rank file that cannot be read is an error (default: it is left out, named "
                        "in a warning, and the other ranks are analysed)")


def entry_point(prog: str, build_parser: Callable[[], argparse.ArgumentParser],
                check: Callable[[argparse.Namespace], None] | None = None) -> Callable[[list[str] | None], int]:
    """The console-script `main(argv)`: parse, run the subcommand, map UserError to exit 2."""
    def _main(argv: list[str] | None) -> int:
        args = build_parser().parse_args(argv)
        if check is not None:
            check(args)
        return args.func(args)

    def main(argv: list[str] | None = None) -> int:
        return run_cli(prog, _main, argv)
    return main


def command(main: Callable[[], int]) -> Callable[[], NoReturn]:
    """A CLI's console script: main(), then the process ends without the interpreter's teardown
    (errors.exit_now); main() itself stays callable from Python (tests, scripts)."""
    def console() -> NoReturn:
        exit_now(main())
    return console


def add_command(sub: argparse._SubParsersAction, name: str, func: Callable[[argparse.Namespace], int],
                help: str, description: str | None = None, epilog: str | None = None) -> argparse.ArgumentParser:
    """One subcommand: its parser (help with examples and defaults) bound to the function that runs it."""
    c = sub.add_parser(name, help=help, description=description, epilog=epilog, formatter_class=Formatter)
    c.set_defaults(func=func)
    return c
