"""`foundry` entry point: parses arguments, dispatches, turns errors into one line."""

from __future__ import annotations

import argparse
import importlib
import os
import sys

from .. import __version__

# One line per module under llm_foundry.cli: (module, the subcommands its `add_parser(sub)` registers).
COMMAND_MODULES = (
    ("prepare", ("prepare",)),
    ("train", ("train",)),
    ("generate", ("generate",)),
    ("evaluate", ("eval",)),
    ("export", ("export",)),
    ("online", ("online",)),
    ("bench", ("bench",)),
    ("demo", ("demo",)),
    ("serve", ("serve",)),
    ("chat", ("chat", "eval-chat")),
    ("evolve", ("evolve",)),
    ("stages", ("midtrain", "sft", "rl")),
    ("report", ("report",)),
    ("speedrun", ("speedrun",)),
)
COMMANDS = tuple(name for _, names in COMMAND_MODULES for name in names)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="foundry",
        description="Build, train, study and talk to small language models on your own machine, offline.",
        epilog="Run `foundry COMMAND --help` for a command's options. Set FOUNDRY_DEBUG=1 to see tracebacks.",
    )
    parser.add_argument("--version", action="version", version=f"llm-foundry {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for module_name, _ in COMMAND_MODULES:
        importlib.import_module(f"{__package__}.{module_name}").add_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run the CLI; returns the process exit code."""
    from ..utils.errors import FoundryError, TrainingInterrupted

    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    # `key=value` overrides may stand anywhere on a command line that takes them, even between options.
    if extra and hasattr(args, "overrides") and all("=" in e and not e.startswith("-") for e in extra):
        args.overrides = [*args.overrides, *extra]
    elif extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except FoundryError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    except TrainingInterrupted as e:
        print(f"interrupted: {e}; continue with --resume", file=sys.stderr)
        return 130
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        # `foundry generate ... | head`: the reader left; that is not an error.
        try:
            sys.stdout = open(os.devnull, "w")
        except OSError:
            pass
        return 0
    except Exception as e:  # the last resort: still one line, unless debugging
        if os.environ.get("FOUNDRY_DEBUG"):
            raise
        print(f"error: unexpected {type(e).__name__}: {e} (set FOUNDRY_DEBUG=1 for the traceback)", file=sys.stderr)
        return 1
