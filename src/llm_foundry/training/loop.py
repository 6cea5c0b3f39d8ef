"""The loop every trainer runs: step until done, with stop requests, progress, checkpoints.

A trainer supplies what differs (its step, its logging, how it saves) and the loop
does the rest the same way everywhere:

* Ctrl-C/SIGTERM become a stop request, honoured between steps: the checkpoint is
  saved and :class:`~llm_foundry.utils.errors.TrainingInterrupted` raised, so the same
  command with ``--resume`` continues exactly;
* an optional time budget ends the loop early;
* a checkpoint every ``checkpoint_interval`` steps (the final one is the caller's);
* ``on_step(step, progress)`` after every step (pipelines drive their own display with it).

The metrics log (``metrics.jsonl``, one JSON record a line, append-only) is here too.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from ..utils.errors import FoundryError, TrainingInterrupted
from ..utils.io import atomic_write_text
from ..utils.progress import progress_bar
from ..utils.signals import StopRequest


@dataclass
class LoopView:
    """The loop's progress bar, as the trainer's logging sees it."""

    bar: object
    task: object
    label: str

    def show(self, step: int, progress: float, status: str = "") -> None:
        """Move the bar to ``progress`` (0..1) with a status line."""
        self.bar.update(self.task, completed=int(1000 * progress), description=f"{self.label} step {step}", status=status)

    def print(self, line: str) -> None:
        """A log line above the bar."""
        self.bar.console.print(line)


def run_loop(*, label: str, max_steps: int, step: Callable[[], int], train_step: Callable[[], None],
             progress: Callable[[], float], save: Callable[[], None], quiet: bool = False,
             checkpoint_interval: int = 0, out_of_time: Callable[[], bool] | None = None,
             after_step: Callable[[int, LoopView], None] | None = None,
             on_step: Callable[[int, float], None] | None = None,
             after_loop: Callable[[LoopView], None] | None = None, stop: StopRequest | None = None,
             agree: Callable[[bool], bool] | None = None) -> None:
    """Call ``train_step`` until ``step()`` reaches ``max_steps`` (or ``out_of_time()``).

    Args:
        label: the progress bar's name.
        step: the number of steps taken so far.
        train_step: one optimizer step (advances ``step()``).
        progress: the run's progress in [0, 1] (steps or time, whichever is further).
        save: write a checkpoint.
        checkpoint_interval: steps between checkpoints (0 = none inside the loop).
        after_step: the trainer's logging and evaluation after each step.
        on_step: ``(step, progress)`` after each step, for callers outside the trainer.
        after_loop: the trainer's last words (e.g. a final evaluation), with the bar still up.
        stop: a :class:`StopRequest` the caller already holds (one that spans several loops);
            None: the loop turns Ctrl-C/SIGTERM into one of its own.
        agree: the processes of a distributed run agree on a stop (``Dist.agree``: true if on
            any): each gets the signal, or runs out of time, at its own moment, yet all must stop
            at the same step.

    Raises:
        TrainingInterrupted: Ctrl-C/SIGTERM was pressed; the checkpoint is saved.
    """
    import contextlib

    from rich.progress import TextColumn

    requests = contextlib.nullcontext(stop) if stop is not None else StopRequest(quiet)
    with requests as stop, progress_bar(not quiet, TextColumn("{task.fields[status]}")) as bar:
        view = LoopView(bar, bar.add_task(label, total=1000, status=""), label)
        view.show(step(), progress())
        same = agree or (lambda flag: flag)
        while step() < max_steps:
            if same(stop.requested):
                save()
                raise TrainingInterrupted(step())
            if out_of_time is not None and same(out_of_time()):
                break
            train_step()
            now = step()
            if after_step is not None:
                after_step(now, view)
            if on_step is not None:
                on_step(now, progress())
            if checkpoint_interval and now % checkpoint_interval == 0 and now < max_steps:
                save()
        if after_loop is not None:
            after_loop(view)
        bar.update(view.task, completed=1000)


class MetricsLog:
    """``metrics.jsonl`` of a run folder: one JSON record a line, appended after steps and evals."""

    def __init__(self, path: str | Path):
        self.path = Path(path)

    def append(self, record: dict) -> None:
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(json.dumps(record) + "\n")

    def trim(self, step: int) -> None:
        """Drop the records after ``step``: a resumed run logs them again."""
        if not self.path.is_file():
            return
        keep = []
        for line in self.path.read_text(encoding="utf-8").splitlines():
            try:
                if json.loads(line).get("step", 0) <= step:
                    keep.append(line)
            except json.JSONDecodeError:
                continue  # a torn last line from a kill
        atomic_write_text(self.path, "".join(line + "\n" for line in keep))


class TensorBoardLog:
    """The same records as TensorBoard scalars in ``RUN/tensorboard/`` (``train.tensorboard``).

    Args:
        folder: where the event files go.
        start_step: the step a resumed run continues from (its checkpoint's): TensorBoard drops
            the events an earlier run wrote after it, since they are logged again.

    Raises:
        FoundryError: the ``tensorboard`` package is not installed.
    """

    TAGS = {"loss": "train/loss", "lr": "train/lr", "tok_per_s": "train/tokens_per_s", "grad_norm": "train/grad_norm"}

    def __init__(self, folder: str | Path, start_step: int = 0):
        self.writer = self.writer_class()(str(folder), purge_step=start_step + 1 if start_step else None)

    @staticmethod
    def writer_class() -> type:
        """``torch.utils.tensorboard.SummaryWriter``; checked by every process of a run, so that all stop.

        Raises:
            FoundryError: the ``tensorboard`` package is not installed.
        """
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            raise FoundryError("train.tensorboard needs the tensorboard package: "
                               "pip install 'llm-foundry[track]'") from None
        return SummaryWriter

    def append(self, record: dict) -> None:
        """Write the record's scalars at its step: train/* for the training line, val/* for an eval."""
        for key, value in record.items():
            tag = self.TAGS.get(key) or (f"val/{key[4:]}" if key.startswith("val_") else None)
            if tag is not None and isinstance(value, (int, float)):
                self.writer.add_scalar(tag, value, record["step"])
        self.writer.flush()  # a killed run keeps what it logged, as metrics.jsonl does

    def close(self) -> None:
        self.writer.close()
