"""`foundry config show|copy`: a preset resolved to every field, printed or written to edit.

Both kinds of preset work: model/train presets (``tiny``, ``tinygpt``, ... for ``train``,
``online``, ``evolve``) and speedrun presets (``cpu``, ``demo``, also the defaults of
``midtrain``/``sft``/``rl``). The written file loads back with ``--preset FILE.yaml``.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from ..utils.errors import FoundryError


def add_parser(sub) -> None:
    from ..config import list_presets
    from ..config.speedrun import list_speedrun_presets

    presets = f"model/train presets: {', '.join(list_presets())}; speedrun presets: {', '.join(list_speedrun_presets())}"
    p = sub.add_parser("config", help="print a preset with every field resolved, or copy one to edit",
                       description="Print a preset (or a YAML file) with every field resolved, overrides applied; "
                                   "or write it to a YAML file to edit and load with --preset FILE.yaml.",
                       epilog=f"Presets: {presets}. A speedrun preset may be written speedrun/NAME.")
    actions = p.add_subparsers(dest="action", metavar="ACTION", required=True)
    show = actions.add_parser("show", help="print the resolved preset as YAML",
                              description="Print a preset with every field resolved, key=value overrides applied.")
    show.add_argument("preset", metavar="PRESET|FILE.yaml", help="a preset name or a YAML file")
    show.add_argument("overrides", nargs="*", metavar="key=value", help="overrides, as the commands take them")
    show.set_defaults(func=run_show)
    copy = actions.add_parser("copy", help="write the resolved preset to a YAML file to edit",
                              description="Write a preset with every field resolved to FILE.yaml; "
                                          "then train/speedrun/... --preset FILE.yaml loads it.")
    copy.add_argument("preset", metavar="PRESET|FILE.yaml", help="a preset name or a YAML file")
    copy.add_argument("file", metavar="FILE.yaml", help="where to write it")
    copy.add_argument("overrides", nargs="*", metavar="key=value", help="overrides, as the commands take them")
    copy.add_argument("--force", action="store_true", help="replace FILE.yaml if it exists")
    copy.set_defaults(func=run_copy)


def resolved_preset(name: str, overrides: list[str]) -> tuple[str, dict]:
    """``(kind, data)`` of a preset with every field: kind is ``train`` or ``speedrun``."""
    from ..config import config_to_dict, list_presets, load_config
    from ..config.presets import read_yaml
    from ..config.speedrun import check_speedrun_config, list_speedrun_presets, load_speedrun_config

    if name.startswith("speedrun/") and not Path(name).exists():
        name, kind = name.split("/", 1)[1], "speedrun"
    elif Path(name).suffix or Path(name).exists():
        path = Path(name)
        if not path.is_file():
            raise FoundryError(f"config file not found: {path}")
        kind = "train" if set(read_yaml(path)) <= {"model", "train"} else "speedrun"
    elif name in list_presets():
        kind = "train"
    elif name in list_speedrun_presets():
        kind = "speedrun"
    else:
        raise FoundryError(f"unknown preset '{name}' (model/train: {', '.join(list_presets())}; "
                           f"speedrun: {', '.join(list_speedrun_presets())})")
    if kind == "speedrun":
        return kind, check_speedrun_config(load_speedrun_config(name, overrides)).to_dict()
    return kind, config_to_dict(*load_config(name, overrides))


def run_show(args: argparse.Namespace) -> int:
    from ..config.presets import resolved_yaml

    _, data = resolved_preset(args.preset, args.overrides)
    print(resolved_yaml(data), end="")
    return 0


def run_copy(args: argparse.Namespace) -> int:
    from ..config.presets import resolved_yaml
    from ..utils.io import atomic_write_text

    kind, data = resolved_preset(args.preset, args.overrides)
    out = Path(args.file)
    if out.exists() and not args.force:
        raise FoundryError(f"{out} exists; add --force to replace it")
    if out.exists() and not out.is_file():
        raise FoundryError(f"{out} is not a file")
    header = f"# {kind} preset resolved from '{args.preset}'" + (f" with {' '.join(args.overrides)}" if args.overrides else "")
    use = "foundry speedrun --preset" if kind == "speedrun" else "foundry train --preset"
    atomic_write_text(out, f"{header}\n# edit, then: {use} {out}\n{resolved_yaml(data)}")
    print(f"wrote {out}")
    return 0
