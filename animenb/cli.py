"""`animenb` command line: one entry point, one module per subcommand in animenb/commands/.

Each module in animenb.commands defines `HELP` (one line), `add_arguments(parser)` and
`run(args) -> int`. Errors a user can fix (`UsageError`, `ValueError`, `FileNotFoundError`)
print as one readable line and exit 2; `--traceback` shows the full stack.
"""

from __future__ import annotations

import argparse
import importlib
import pkgutil
import sys

from . import commands


class UsageError(Exception):
    """A mistake the user can fix; printed as one line."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="animenb", description="Anime production research toolkit.")
    parser.add_argument("--traceback", action="store_true", help="show full tracebacks on errors")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for info in sorted(pkgutil.iter_modules(commands.__path__), key=lambda m: m.name):
        if info.name.startswith("_"):
            continue
        module = importlib.import_module(f"{commands.__name__}.{info.name}")
        name = getattr(module, "NAME", info.name)
        command = sub.add_parser(name, help=module.HELP, description=module.HELP)
        module.add_arguments(command)
        command.set_defaults(_run=module.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args._run(args) or 0)
    except KeyboardInterrupt:
        print("animenb: interrupted", file=sys.stderr)
        return 130
    except (UsageError, ValueError, FileNotFoundError, ConnectionError) as exc:
        if args.traceback:
            raise
        print(f"animenb {args.command}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
