"""The `foundry` command: thin wrappers over the library, one module per stage.

One vocabulary across commands (docs/*/configuration.md has the table):

* ``MODEL``        a model folder (positional); ``--init-from MODEL`` where a command starts from one;
* ``--data DIR``   a prepared data folder (made by ``foundry prepare``);
* ``--text PATH``  raw text: files or folders of .txt (``prepare`` takes them positionally);
* ``--preset``     a preset name or a YAML file (``--config`` is kept as a hidden alias);
* ``--max-new-tokens``, ``--device``, ``--precision``, ``--seed`` mean the same everywhere;
* anything else is a config field, written ``key=value``.
"""

import argparse
from typing import Iterable


def add_compile_option(p: argparse.ArgumentParser) -> None:
    """``--compile`` for the commands that decode (generate, chat, eval-chat, serve)."""
    p.add_argument("--compile", action="store_true",
                   help="compile the decoding models: waits for the compiler at first (again when the batch "
                        "size first changes), then decodes faster on a CPU")


def add_no_tools_option(p: argparse.ArgumentParser) -> None:
    """``--no-tools`` for the commands that run the chat engine (chat, eval-chat, serve)."""
    p.add_argument("--no-tools", action="store_true", help="do not run the calculator on the model's python blocks")


def add_alias(p: argparse.ArgumentParser, action: argparse.Action, *flags: str) -> None:
    """Old spellings of ``action``'s option: parsed as that option (``required`` included), not shown in ``--help``."""
    for flag in flags:
        if flag in p._option_string_actions:
            raise ValueError(f"{flag} is already an option")
        p._option_string_actions[flag] = action  # argparse has no public "hidden alias"; this is its lookup table


def add_preset_option(p: argparse.ArgumentParser, default: str | None, help: str, dest: str = "config") -> None:
    """``--preset NAME|FILE.yaml`` (old spelling ``--config``, hidden)."""
    add_alias(p, p.add_argument("--preset", dest=dest, default=default, metavar="PRESET|FILE.yaml", help=help), "--config")


def add_text_option(p: argparse.ArgumentParser, help: str, **kwargs) -> None:
    """``--text PATH``: raw text (old spelling ``--data``, hidden), stored as ``args.text``."""
    add_alias(p, p.add_argument("--text", metavar="PATH", help=help, **kwargs), "--data")


def add_run_options(p: argparse.ArgumentParser, *, seed_help: str, from_config: bool = False) -> None:
    """``--device``, ``--precision``, ``--seed`` for a command that runs a model (every such command calls this).

    Args:
        seed_help: what ``--seed`` seeds in this command.
        from_config: the command's config holds these fields: the flags default to None
            ("as the preset says") and the command maps them onto the config.
    """
    note = " (default: the preset's)" if from_config else " (default: auto)"
    p.add_argument("--device", default=None if from_config else "auto", help="auto, cpu, cuda, cuda:N or mps" + note)
    p.add_argument("--precision", default=None if from_config else "auto", choices=["auto", "bf16", "fp16", "fp32"],
                   help="auto (bf16 where the hardware is fast at it), bf16, fp16 or fp32" + note)
    p.add_argument("--seed", type=int, metavar="N", help=seed_help)


def run_option_overrides(args: argparse.Namespace, prefixes: Iterable[str]) -> list[str]:
    """``key=value`` overrides for the ``--device``/``--precision``/``--seed`` given, under each path prefix."""
    out = []
    for name in ("device", "precision", "seed"):
        value = getattr(args, name, None)
        if value is not None:
            out += [f"{prefix}{name}={value}" for prefix in prefixes]
    return out


def check_tasks(tasks: Iterable[str], what: str) -> None:
    """Raise a one-line error for a name that is not a built-in task (before hours of training, not after)."""
    from ..data.synthetic import TASKS
    from ..utils.errors import FoundryError

    bad = [t for t in tasks if t not in TASKS]
    if bad:
        raise FoundryError(f"{what}: unknown task(s) {', '.join(bad)} (built-in tasks: {', '.join(TASKS)})")


def summary_line(out: str, summary: dict) -> str:
    """``saved OUT: {...}`` with figures rounded for people."""
    import json

    from ..utils.progress import rounded

    return f"saved {out}: " + json.dumps(rounded(summary), ensure_ascii=False)
