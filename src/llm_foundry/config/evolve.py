"""Settings of ``foundry evolve``: local training (:class:`TrainOptions`) and evolution (:class:`EvolveOptions`).

Built from the command line's flags with the shared loader (``config/loader.py``), so a
bad value is the same one-line error as in any other config.
"""

from __future__ import annotations

from dataclasses import dataclass, field


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
