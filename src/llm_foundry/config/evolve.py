"""Settings of ``foundry evolve``: local training (:class:`TrainOptions`) and evolution (:class:`EvolveOptions`).

Built with the shared loader (``config/loader.py``) from ``key=value`` overrides and the
command line's flags (``foundry evolve --mode evolve cycles=5 self_tokens=128``), so a bad
key or value is the same one-line error as in any other config.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping

from ..utils.errors import FoundryError
from .loader import fill, parse_override, resolve_key
from .schema import ModelConfig, TrainConfig


@dataclass
class TrainOptions:
    """Options of ``foundry evolve --mode train``.

    Attributes:
        data_dir: a folder of raw text files (``--text``), split once into train/val/test.
        epochs: training epochs.
        config: the model/train preset (name or YAML file) of a new state.
        overrides: ``key=value`` config overrides.
        tokenizer: byte, char or bpe.
        vocab_size: BPE vocabulary size (None = 4096).
        val_fraction, test_fraction: shares of the documents held out.
        steps_per_epoch: optimizer steps per epoch (None = one pass over the data).
        save_every: checkpoint every N epochs.
        log_every: print the batch loss every N batches.
        seed: seed of a new state (None = the preset's train.seed).
        device, precision: where and how the model runs.
        quiet: print only the summary.
    """

    data_dir: str = "data/training_data"
    epochs: int = 10
    config: str = "h2q"
    overrides: list[str] = field(default_factory=list)
    tokenizer: str = "byte"
    vocab_size: int | None = None
    val_fraction: float = 0.05
    test_fraction: float = 0.05
    steps_per_epoch: int | None = None
    save_every: int = 1
    log_every: int = 50
    seed: int | None = None
    device: str = "auto"
    precision: str = "auto"
    quiet: bool = False


@dataclass
class EvolveOptions:
    """Options of ``foundry evolve --mode evolve``.

    Attributes:
        cycles: evolution cycles to run.
        population: candidates per cycle.
        cycle_steps: training steps of each candidate.
        min_improvement: held-out loss gain a candidate needs to replace the champion.
        mine_windows: training windows scored to find the hard ones.
        hard_keep: hardest windows kept per cycle.
        self_samples, self_tokens: self-generated texts per cycle, and their length.
        score_samples, score_tokens: samples (and their length) for the diversity score.
        eval_batches: validation batches (None = the preset's).
        early_reject: drop a candidate whose quick validation loss is already worse.
        diversity_weight: weight of sample diversity in a candidate's score.
        device, precision: where and how the models run.
        quiet: print only the summary.
    """

    cycles: int = 3
    population: int = 3
    cycle_steps: int = 50
    min_improvement: float = 0.001
    mine_windows: int = 256
    hard_keep: int = 64
    self_samples: int = 4
    self_tokens: int = 96
    score_samples: int = 2
    score_tokens: int = 64
    eval_batches: int | None = None
    early_reject: bool = True
    diversity_weight: float = 0.05
    device: str = "auto"
    precision: str = "auto"
    quiet: bool = False


@dataclass
class EvolveTrainConfig(TrainOptions):
    """Everything ``foundry evolve --mode train`` takes as ``key=value``.

    The options themselves are bare keys (``epochs=3``, ``seed=7``: the shallowest field
    wins, so ``seed`` is the option, ``train.seed`` the preset's); the ``model`` and
    ``train`` sections are a new state's config (``model.dim=128``, ``lr=3e-4``).
    """

    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)


def _given(flags: Mapping[str, Any]) -> dict[str, Any]:
    # A flag left out is None, so the key=value (or the dataclass default) below it stands.
    return {k: v for k, v in flags.items() if v is not None}


def train_options(overrides: Iterable[str], flags: Mapping[str, Any]) -> TrainOptions:
    """The options of ``--mode train``: defaults, then ``key=value`` overrides, then the flags given.

    Args:
        overrides: ``key=value`` items of :class:`EvolveTrainConfig`; the model/train ones
            become ``TrainOptions.overrides`` (a new state's config), the rest set options.
        flags: option values from the command line's flags (None = not given); as in every
            command, a flag wins over a ``key=value`` of the same field.

    Raises:
        FoundryError: an unknown key (with a hint) or a bad value.
    """
    opts, config_overrides = TrainOptions(), []
    for item in overrides:
        path, value = _parse(EvolveTrainConfig, item, other=(EvolveOptions, "evolve"))
        if len(path) > 1:
            config_overrides.append(item)
        elif path[0] in ("config", "overrides"):  # the preset and this list are the command's, not settings
            hint = " (the preset is --preset NAME)" if path[0] == "config" else ""
            raise FoundryError(f"unknown config key '{path[0]}'{hint}")
        else:
            setattr(opts, path[0], value)
    fill(opts, _given(flags))
    opts.overrides = config_overrides
    return opts


def evolve_options(overrides: Iterable[str], flags: Mapping[str, Any]) -> EvolveOptions:
    """The options of ``--mode evolve``: defaults, then ``key=value`` overrides, then the flags given (None = not).

    Raises:
        FoundryError: an unknown key (with a hint) or a bad value.
    """
    opts = EvolveOptions()
    for item in overrides:
        path, value = _parse(EvolveOptions, item, other=(EvolveTrainConfig, "train"))
        setattr(opts, path[0], value)
    return fill(opts, _given(flags))


def _parse(root: type, item: str, other: tuple[type, str]) -> tuple[tuple[str, ...], Any]:
    """``parse_override`` in ``root``; a key only the other mode has says which mode it belongs to."""
    key = item.partition("=")[0]
    if "=" in item:
        try:
            resolve_key(root, key)
        except FoundryError as e:
            try:
                resolve_key(other[0], key)
            except FoundryError:
                raise e from None  # unknown in both: the loader's own error, with its hint
            raise FoundryError(f"'{key.strip()}' applies to --mode {other[1]} only") from None
    return parse_override(root, item)
