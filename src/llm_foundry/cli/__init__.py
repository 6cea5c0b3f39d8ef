"""The `foundry` command: thin wrappers over the library, one module per stage."""

import argparse


def add_compile_option(p: argparse.ArgumentParser) -> None:
    """``--compile`` for the commands that decode (generate, chat, eval-chat, serve)."""
    p.add_argument("--compile", action="store_true",
                   help="compile the decoding models: waits ~20 s (again when the batch size first changes), "
                        "then decodes about 2x faster on a CPU")
