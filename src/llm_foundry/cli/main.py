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
    ("importer", ("import",)),
    ("online", ("online",)),
    ("bench", ("bench",)),
    ("demo", ("demo",)),
    ("serve", ("serve",)),
    ("chat", ("chat", "eval-chat")),
    ("evolve", ("evolve",)),
    ("stages", ("midtrain", "sft", "rl", "dpo", "merge-lora")),
    ("report", ("report",)),
    ("speedrun", ("speedrun",)),
    ("config", ("config",)),
    ("memory", ("memory",)),
    ("lab", ("lab",)),
)
COMMANDS = tuple(name for _, names in COMMAND_MODULES for name in names)

# `foundry --help` lists the commands by workflow, in the order a newcomer meets them.
WORKFLOWS = (
    ("build", ("demo", "prepare", "train", "midtrain", "sft", "rl", "dpo", "speedrun")),
    ("chat", ("chat", "generate", "eval-chat")),
    ("serve", ("serve",)),
    ("online", ("online",)),
    ("evolve", ("evolve",)),
    ("tools", ("config", "eval", "report", "import", "export", "merge-lora", "bench", "memory")),
    ("learn", ("lab",)),
)


def _command_list(sub: argparse._SubParsersAction) -> str:
    helps = {a.dest: a.help for a in sub._choices_actions}
    width = max(len(name) for name in helps) + 2
    lines = []
    for group, names in WORKFLOWS:
        lines.append(f"\n{group}:" if lines else f"{group}:")
        lines += [f"  {name:<{width}}{helps[name]}" for name in names]
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="foundry",
        description="Build, train, study and talk to small language models on your own machine, offline.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"llm-foundry {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", help=argparse.SUPPRESS)
    for module_name, _ in COMMAND_MODULES:
        importlib.import_module(f"{__package__}.{module_name}").add_parser(sub)
    for p in sub.choices.values():
        p.allow_abbrev = False  # an old spelling or a prefix must not turn into another option
    parser.epilog = (_command_list(sub) + "\n\nRun `foundry COMMAND --help` for a command's options. "
                     "Set FOUNDRY_DEBUG=1 to see tracebacks.")
    return parser


def _unknown_options(parser: argparse.ArgumentParser, args: argparse.Namespace, extra: list[str], argv: list[str]) -> int:
    """Answer options the command does not have, from the command's own usage; exits 2.

    An option named like a config field gets the one line that says how to set it.
    """
    from ..config.loader import matching_paths, resolve_key
    from ..utils.errors import FoundryError

    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    command = sub.choices.get(getattr(args, "command", None) or "", parser)
    flag = next((e for e in extra if e.startswith("--")), None)
    root = getattr(args, "config_root", None)
    if flag and root is not None:
        name, sep, value = flag[2:].partition("=")
        if not sep:
            i = argv.index(flag) if flag in argv else -1
            value = argv[i + 1] if 0 <= i < len(argv) - 1 and not argv[i + 1].startswith("-") else "VALUE"
        try:
            key = name.replace("-", "_") if resolve_key(root, name) else None
        except FoundryError:  # not a field, or a bare name several sections have: show the first path
            key = next((".".join(p) for p in matching_paths(root, name)), None)
        if key:
            print(f"error: unknown option --{name}; config fields are key=value, e.g. {key}={value}", file=sys.stderr)
            return 2
    if flag and flag.split("=")[0] == "--data" and "--text" in command._option_string_actions:
        command.error("unknown option --data: --data is a prepared data folder; raw text is --text PATH")
    command.error(f"unrecognized arguments: {' '.join(extra)}")
    return 2


def main(argv: list[str] | None = None) -> int:
    """Run the CLI; returns the process exit code."""
    from ..utils.errors import FoundryError, TrainingInterrupted

    parser = build_parser()
    argv = sys.argv[1:] if argv is None else [str(a) for a in argv]
    args, extra = parser.parse_known_args(argv)
    # `key=value` overrides may stand anywhere on a command line that takes them, even between options.
    if extra and hasattr(args, "overrides") and all("=" in e and not e.startswith("-") for e in extra):
        args.overrides = [*args.overrides, *extra]
    elif extra:
        return _unknown_options(parser, args, extra, argv)
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
