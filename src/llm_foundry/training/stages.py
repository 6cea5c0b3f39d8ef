"""Mid-training and SFT: continue a model folder on a conversation mixture into a new one.

Both stages are the same loop with different data (nanochat's ``mid_train.py`` and
``chat_sft.py``):

* **midtrain** teaches the base model the chat layout, the special tokens and tool
  calls, from a large mixture of synthetic conversations plus some pretraining text,
  with the loss on every token (``loss_on="all"``);
* **sft** polishes the chat model on conversations with the loss on the assistant's
  tokens only (``loss_on="assistant"``: the masked loss), usually at a lower rate.

The loop is the :class:`~llm_foundry.training.trainer.Trainer`'s, reused piece by
piece: the same optimizers, schedule, checkpoint files (``training_state.pt`` beside
the weights), metrics log, Ctrl-C handling and exact resume. Only the batches
differ: they come from a :class:`~llm_foundry.data.chat_batches.ChatMixture`, whose
batch ``k`` depends on ``(seed, k)`` alone.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

from .. import __version__
from ..config.stages import DEFAULT_LOSS_ON, DEFAULT_MIXTURES, STAGES, StageConfig, stage_config_from_dict  # noqa: F401  (their home is config/)
from ..tokenizers import load_tokenizer
from ..utils.errors import FoundryError
from ..utils.io import atomic_write_json, read_json
from ..utils.progress import console
from ..data.chat_batches import ChatMixture
from ..models.model_dir import TOKENIZER_FILE, load_model_config
from .trainer import Trainer, check_run_folder

STAGE_CONFIG_FILE = "stage_config.json"
class StageTrainer(Trainer):
    """Train a model folder on a conversation mixture into a new model folder.

    Subclasses :class:`Trainer` for its state handling (``_build``, ``save_checkpoint``,
    ``_load_state``, the metrics log) and replaces only where batches come from.

    Args:
        init_from: the model folder to start from (the previous stage).
        out_dir: the stage's output model folder.
        cfg: the stage settings.
        resume: continue the stage saved in ``out_dir``.
        quiet: no progress bar or log lines.
        on_step: called with ``(step, progress in [0, 1])`` after every optimizer step.
    """

    def __init__(self, init_from: str | Path, out_dir: str | Path, cfg: StageConfig, resume: bool = False,
                 quiet: bool = False, on_step: Callable[[int, float], None] | None = None):
        # Trainer.__init__ reads a token data folder, a stage reads conversations: only the setup
        # they share (`_configure`, `check_run_folder` in stage_source) is reused.
        self.stage_cfg = cfg.validate()
        self.out, self.resume, self.quiet, self.on_step = Path(out_dir), resume, quiet, on_step
        self.init_from = Path(init_from)
        self.data_dir = Path(cfg.text_data) if cfg.text_data else None
        model_cfg, self.tokenizer = stage_source(self.init_from, self.out, resume)
        self._configure(model_cfg, cfg.train)

    def _write_run_config(self) -> None:
        atomic_write_json(self.out / STAGE_CONFIG_FILE, {
            **self.stage_cfg.to_dict(),
            "init_from": str(self.init_from.resolve()),
            "seq_len": self.seq_len,
            "mixture_share": self.train_mix.describe(),
            "llm_foundry_version": __version__,
        })

    def evaluate(self) -> dict[str, float] | None:
        """Mean masked loss on held-out conversations (held-out templates and number ranges)."""
        return {"loss": self._val_loss()} if self.val_batches else None

    def run(self) -> dict:
        """Train until ``max_steps`` or the time budget; returns a summary dict.

        Raises:
            TrainingInterrupted: after Ctrl-C/SIGTERM, with the checkpoint saved.
        """
        sc, cfg = self.stage_cfg, self.cfg
        self.train_mix = ChatMixture(self.tokenizer, sc.mixture, seq_len=self.seq_len, examples_per_task=sc.examples_per_task,
                                     split="train", seed=cfg.seed, lang=sc.lang, loss_on=sc.loss_on,
                                     text_data=sc.text_data, text_len=sc.text_len)
        self.val_batches = []
        val_mix = {k: v for k, v in sc.mixture.items() if k != "text" and not k.endswith(".jsonl")}
        if sc.val_examples and val_mix:
            held = ChatMixture(self.tokenizer, val_mix, seq_len=self.seq_len, examples_per_task=sc.val_examples,
                               split="heldout", seed=cfg.seed + 1, lang=sc.lang, loss_on="assistant")
            self.val_batches = held.fixed_batches(cfg.eval_batches, cfg.batch_size, self.device)
        self.out.mkdir(parents=True, exist_ok=True)
        self._build()
        self._write_run_config()
        if not self.quiet:
            console.print(f"[bold]{sc.stage}[/] from {self.init_from}: {self.model.num_parameters() / 1e6:.2f}M parameters, "
                          f"loss on {sc.loss_on} tokens, batch {cfg.batch_size}x{self.seq_len}x{cfg.grad_accum}, "
                          f"from step {self.step}; mixture " + ", ".join(f"{k} {v['weight']:.2f}" for k, v in self.train_mix.describe().items()))
        last_val = self._train_loop(lambda i: self.train_mix.batch(i, cfg.batch_size, self.device), sc.stage, self.on_step)
        self.save_checkpoint()
        summary = {"stage": sc.stage, "step": self.step, "tokens_seen": self.tokens_seen, "train_time": round(self.train_time, 2)}
        if last_val:
            summary["val_loss"] = round(last_val["loss"], 5)
        return summary

    def _describe_val(self, metrics: dict[str, float]) -> str:
        return f"held-out chat loss {metrics['loss']:.4f}"


def stage_source(init_from: Path, out: Path, resume: bool):
    """``(model config, tokenizer)`` a stage starts from: its saved run in ``out`` when
    resuming, else the previous stage's folder ``init_from``.

    Raises:
        FoundryError: nothing to resume, a run already in ``out``, or ``out`` is ``init_from``.
    """
    check_run_folder(out, resume)
    if out.resolve() == init_from.resolve():
        raise FoundryError("--out must differ from the input model folder (each stage writes its own)")
    source = out if resume else init_from
    return load_model_config(source), load_tokenizer(source / TOKENIZER_FILE)


def run_stage(init_from: str | Path, out_dir: str | Path, cfg: StageConfig, resume: bool = False, quiet: bool = False,
              on_step: Callable[[int, float], None] | None = None) -> dict:
    """Run (or resume) a mid-training or SFT stage; returns its summary."""
    return StageTrainer(init_from, out_dir, cfg, resume=resume, quiet=quiet, on_step=on_step).run()


def load_stage_config(model_dir: str | Path) -> dict | None:
    """The saved ``stage_config.json`` of a stage's model folder, or None."""
    path = Path(model_dir) / STAGE_CONFIG_FILE
    return read_json(path, "stage config") if path.is_file() else None
