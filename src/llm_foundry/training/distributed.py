"""Data-parallel training on PyTorch's own distributed engine: ``torchrun`` + DDP or FSDP2.

``torchrun --nproc_per_node N -m llm_foundry train ...`` starts N copies of the same
command; each learns its place from the environment torchrun sets (``RANK``,
``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR``/``MASTER_PORT``). Nothing else changes
for the user: the config states the *global* batch, ``batch_size x grad_accum``, and the
processes split it between them:

* ``grad_accum`` divisible by N: process ``r`` takes micro-batches ``r*k .. r*k+k-1`` of
  the step (``k = grad_accum / N``), the very batches a single process would take;
* else ``batch_size`` divisible by N: every process takes every micro-batch, and of each
  its own ``batch_size / N`` rows. Where a loss counts only some tokens (a chat stage's
  mask), each process's rows then weigh the same, as micro-batches already do under
  ``grad_accum``, rather than by their number of counted tokens: the first split is exact.

Gradients are averaged over the processes (DDP's all-reduce, FSDP2's reduce-scatter), so
one optimizer step sees the gradient of the same global batch as on one process: a run
on 1 and on N processes trains the same thing, up to the order of float additions.

Checkpoints of a run of several processes go through ``torch.distributed.checkpoint``
(DCP): the optimizer moments, the raw weights and the EMA are written by every process
for its own shard into ``checkpoint/state.dcp/``, which DCP can read back into any number
of processes (1 included, without torchrun). The rest of the checkpoint is what every
command reads: rank 0 gathers the whole model and writes the usual consolidated
``model.safetensors`` beside it, and a small ``training_state.pt`` (step, RNG, counters)
that says where the tensors are. The folder is swapped in as one unit, as on one process.

Only rank 0 writes logs, progress, metrics and the model folder; the others stay quiet.
"""

from __future__ import annotations

import atexit
import os
import shutil
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch
import torch.nn as nn

from ..utils.errors import FoundryError
from ..utils.progress import console
from ..utils.signals import StopRequest
from .state import TrainingState, load_state

DCP_DIR = "state.dcp"  # inside checkpoint/: the sharded tensors of the training state
STAGING = ".state.dcp-staging"  # in the run folder: where DCP writes before the swap moves it in


@dataclass(frozen=True)
class Dist:
    """This process's place in a ``torchrun`` launch (rank 0 of 1 without one).

    Attributes:
        rank: global rank; rank 0 writes everything that is written once.
        world: number of processes.
        local_rank: rank on this machine (the GPU a process takes).
        parallel: ``ddp`` or ``fsdp`` (see ``TrainConfig.parallel``).
        group: whether this process is in a process group (started by torchrun, even as its only
            process: ``--nproc_per_node 1`` runs DDP/FSDP on one device, what a benchmark compares).
    """

    rank: int = 0
    world: int = 1
    local_rank: int = 0
    parallel: str = "ddp"
    group: bool = False

    @property
    def active(self) -> bool:
        return self.group

    @property
    def main(self) -> bool:
        return self.rank == 0

    def agree(self, flag: bool) -> bool:
        """Whether ``flag`` holds on any process (a collective: every process must call it).

        A stop request (SIGTERM reaches each process at its own moment) or a spent time budget
        must stop every process at the same step, or the next collective would wait forever.
        """
        if not self.active:
            return flag
        t = torch.tensor([int(flag)], device=_comm_device())
        torch.distributed.all_reduce(t, op=torch.distributed.ReduceOp.MAX)
        return bool(t.item())

    def sum(self, t: torch.Tensor) -> torch.Tensor:
        """``t`` summed over the processes (a copy; collective)."""
        if not self.active:
            return t
        t = t.detach().clone().to(_comm_device())
        torch.distributed.all_reduce(t)
        return t

    def barrier(self) -> None:
        if self.active:
            torch.distributed.barrier()


def _comm_device() -> torch.device:
    """Where collectives' tensors live: the process's GPU under NCCL, else the CPU (gloo)."""
    if torch.distributed.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def world_size() -> int:
    """How many processes the ``torchrun`` launch of this one has (1 without torchrun)."""
    return int(os.environ.get("WORLD_SIZE", "1") or 1)


def setup(device: str, parallel: str) -> tuple[Dist, str]:
    """Join the process group of a ``torchrun`` launch (once per process); returns this process's
    :class:`Dist` and the device it trains on.

    Without torchrun nothing happens: rank 0 of 1 on ``device``. Under it (``TORCHELASTIC_RUN_ID`` set,
    or a ``WORLD_SIZE`` over 1) each process takes the GPU of its ``LOCAL_RANK`` and talks NCCL; on
    CPUs gloo.

    Raises:
        FoundryError: a device no process group can use (``mps``, or one fixed GPU for all).
    """
    world = world_size()
    if world <= 1 and "TORCHELASTIC_RUN_ID" not in os.environ:
        return Dist(parallel=parallel), device
    rank, local = int(os.environ.get("RANK", "0")), int(os.environ.get("LOCAL_RANK", "0"))
    if device == "mps":
        raise FoundryError("distributed training runs on cuda or cpu, not mps")
    if device.startswith("cuda:"):
        raise FoundryError(f"under torchrun each process takes the GPU of its LOCAL_RANK; "
                           f"use train.device=auto or cuda, not {device}")
    gpu = device == "cuda" or (device == "auto" and torch.cuda.is_available())
    if gpu:
        device = f"cuda:{local}"
        torch.cuda.set_device(local)
    else:
        device = "cpu"
    if not torch.distributed.is_initialized():
        backend = "nccl" if gpu else "gloo"
        torch.distributed.init_process_group(backend, device_id=torch.device(device) if gpu else None)
        atexit.register(_teardown)
    if rank != 0:
        console.quiet = True  # only rank 0 talks: one progress bar, one set of log lines
    return Dist(rank, world, local, parallel, group=True), device


def _teardown() -> None:
    if torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()


class StopOnce(StopRequest):
    """A stop request for a process under ``torchrun``: every further signal is the same request.

    Ctrl-C in a terminal reaches each process and torchrun too, which passes it on: every process
    sees it twice, and the second must not quit it halfway (the checkpoint is a collective).
    Quitting at once is torchrun's to do: it kills its processes some time after it forwarded the
    signal (30 s in torch 2.x), and every checkpoint write is atomic.
    """

    def _handler(self, signum, frame):
        if self.requested:
            return
        self.requested = True
        if not self.quiet:  # not "Ctrl-C again to quit": here that is torchrun's, after its grace period
            console.print("\n[yellow]stopping after this step and saving, all processes at the same step[/]")


def rank_share(batch_size: int, grad_accum: int, dist: Dist) -> tuple[range, slice | None]:
    """This process's share of an optimizer step: the micro-batches (indices within the step)
    and the rows of each (None: all) it trains on. See the module docstring.

    Raises:
        FoundryError: the global batch does not split evenly.
    """
    n, r = dist.world, dist.rank
    if grad_accum % n == 0:
        k = grad_accum // n
        return range(r * k, r * k + k), None
    if batch_size % n == 0:
        b = batch_size // n
        return range(grad_accum), slice(r * b, r * b + b)
    raise FoundryError(f"the global batch (train.batch_size {batch_size} x train.grad_accum {grad_accum}) does not split "
                       f"over {n} processes: make grad_accum or batch_size a multiple of {n}")


# ----------------------------------------------------------------------------- wrapping
def wrap(model: nn.Module, dist: Dist) -> tuple[nn.Module, Callable[[bool], None] | None]:
    """Wrap ``model`` for data-parallel training; returns the module the forward pass goes
    through and a switch of the gradient sync (None on one process).

    DDP keeps ``model`` as it is (the optimizers step its parameters, which DDP's all-reduce
    fills with the averaged gradients) and returns the wrapper. FSDP2 shards ``model`` in
    place, each block its own unit (gathered just before it runs, freed after) and the rest
    in the root unit, so its parameters become DTensors and the optimizers must be built after.

    The switch turns the gradient exchange off for all but the last micro-batch of a step:
    accumulating locally and exchanging once is the same sum, one exchange instead of k.
    """
    if not dist.active:
        return model, None
    if dist.parallel == "fsdp":
        from torch.distributed.fsdp import fully_shard

        for layer in model.layers:
            fully_shard(layer)
        fully_shard(model)
        return model, model.set_requires_gradient_sync
    from torch.nn.parallel import DistributedDataParallel as DDP

    device = next(model.parameters()).device
    ddp = DDP(model, device_ids=[device.index] if device.type == "cuda" else None)

    def sync(on: bool) -> None:
        ddp.require_backward_grad_sync = on  # what DDP.no_sync() toggles

    return ddp, sync


def is_sharded(t: torch.Tensor) -> bool:
    """Whether ``t`` is a DTensor (a parameter, gradient or state of an FSDP2 model)."""
    from torch.distributed.tensor import DTensor

    return isinstance(t, DTensor)


class ShardedMuon(torch.optim.Muon):
    """Muon for the parameters of an FSDP2 model: the orthogonalisation sees the whole matrix.

    Newton-Schulz orthogonalises a matrix as a whole, so a shard cannot be orthogonalised by itself.
    PyTorch's Muon does run on DTensors, but its bf16 matmuls then add partial products across the
    processes in bf16, and a tall matrix's update comes out a few percent off the one-process update.
    Here each process gathers the (momentum) update of each matrix, orthogonalises the whole of it
    exactly as one process would, and applies its own shard of the result: one all-gather of the hidden
    matrices a step, and every process repeats the Newton-Schulz work (cheap next to the forward and
    backward at these sizes). The state (``momentum_buffer``, sharded like its parameter) and the
    hyperparameters are Muon's own, so a checkpoint moves between DDP, FSDP and one process.
    """

    @torch.no_grad()
    def step(self, closure=None):
        from torch.distributed.tensor import distribute_tensor
        from torch.optim._muon import _adjust_lr, _zeropower_via_newtonschulz

        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            params, grads, bufs = [], [], []
            self._init_group(group, params, grads, bufs)
            for p, grad, buf in zip(params, grads, bufs):
                buf.lerp_(grad, 1 - group["momentum"])
                update = grad.lerp(buf, group["momentum"]) if group["nesterov"] else buf
                whole = update.full_tensor() if is_sharded(update) else update
                ortho = _zeropower_via_newtonschulz(whole, group["ns_coefficients"], group["ns_steps"], group["eps"])
                if is_sharded(p):  # every process holds the whole result: each takes its shard, no traffic
                    ortho = distribute_tensor(ortho, p.device_mesh, p.placements, src_data_rank=None)
                p.mul_(1 - group["lr"] * group["weight_decay"])
                p.add_(ortho, alpha=-_adjust_lr(group["lr"], group["adjust_lr_fn"], p.shape))
        return loss


# ----------------------------------------------------------------------------- checkpoints
def consolidated_weights(parts) -> dict[str, torch.Tensor]:
    """The whole model's weights to save (the EMA's where there is one), gathered onto rank 0
    (the other ranks get an empty dict). A collective: every process calls it."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    full = get_model_state_dict(parts.model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    if parts.ema is not None:
        shadow = {k: v.full_tensor() if is_sharded(v) else v for k, v in parts.ema.shadow.items()}
        full = {k: shadow.get(k, v).cpu() for k, v in full.items()} if full else {}
    return full if torch.distributed.get_rank() == 0 else {}


def _dcp_state(parts) -> dict[str, Any]:
    """The tensors of the training state keyed by parameter name (so any sharding can read them)."""
    from torch.distributed.checkpoint.state_dict import get_state_dict

    model_sd, optim_sd = get_state_dict(parts.model, parts.optimizers)
    state = {"model": model_sd, "optim": optim_sd}
    if parts.ema is not None:
        state["ema"] = parts.ema.shadow
    return state


def save_checkpoint(out: Path, parts, tokenizer, step: int, extra: dict[str, Any], dist: Dist) -> None:
    """Write the run folder's checkpoint from every process (a collective).

    Every process writes its shard of the state with DCP into a staging folder; rank 0 then
    writes the consolidated model folder and ``training_state.pt`` and moves the staging
    folder in: ``checkpoint/`` is replaced as one unit, so a kill leaves the old or the new one.
    With several machines the run folder must be on a file system they share.
    """
    import torch.distributed.checkpoint as dcp

    from ..models.model_dir import save_checkpoint_dir

    staging = out / STAGING
    if dist.main:
        shutil.rmtree(staging, ignore_errors=True)  # a kill's leftover
    dist.barrier()
    dcp.save(_dcp_state(parts), checkpoint_id=staging)
    weights = consolidated_weights(parts)
    if dist.main:
        rng = {"torch": torch.get_rng_state(),
               "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None}
        ema = ({"decay": parts.ema.decay, "updates": parts.ema.updates, "shadow": {}}
               if parts.ema is not None else None)
        scaler = parts.scaler.state_dict() if parts.scaler is not None and parts.scaler.is_enabled() else None
        state = TrainingState(step=step, optimizers=[], ema=ema, scaler=scaler, rng=rng,
                              extra={**extra, "sharded": DCP_DIR, "world_size": dist.world, "parallel": dist.parallel})
        save_checkpoint_dir(out, parts.model, tokenizer, step, weights=weights, state_bytes=state.to_bytes(),
                            extra_dirs={DCP_DIR: staging})
    dist.barrier()


def resume_checkpoint(out: Path, parts, weights_step: int, base_lrs: list[float], dist: Dist) -> TrainingState:
    """Load ``out``'s training state into ``parts``, whatever number of processes wrote it and reads it.

    A state of several processes (DCP) is resharded onto this run's processes; a one-process
    ``training_state.pt`` is loaded whole into every process (DDP: every process holds the
    whole model) or scattered into the shards (FSDP).

    Raises:
        FoundryError: a damaged state, or weights and state of different steps.
    """
    from ..models.model_dir import CHECKPOINT_DIR, STATE_FILE
    from .state import resume_checkpoint as resume_plain

    sharded = load_state(out / STATE_FILE, "cpu").extra.get("sharded")
    if not sharded and not (dist.active and dist.parallel == "fsdp"):
        return resume_plain(out, parts, weights_step, base_lrs)  # one process's state, or replicated (DDP)
    device = next(parts.model.parameters()).device
    state = load_state(out / STATE_FILE, device)
    if state.step != weights_step:
        raise FoundryError(f"{out} holds weights of step {weights_step} but training state of step {state.step}: "
                           f"they come from different saves")
    if sharded:
        _load_dcp(out / CHECKPOINT_DIR / sharded, parts)
    else:
        _load_full_into_shards(state, parts)
    for opt, lr in zip(parts.optimizers, base_lrs):
        for g in opt.param_groups:
            g["base_lr"] = lr
    if parts.ema is not None and state.ema is not None:
        parts.ema.decay, parts.ema.updates = state.ema["decay"], state.ema.get("updates", 0)
    if parts.scaler is not None and state.scaler:
        parts.scaler.load_state_dict(state.scaler)
    state.restore_rng()
    for key in ("sharded", "world_size", "parallel"):
        state.extra.pop(key, None)
    return state


def _load_dcp(folder: Path, parts) -> None:
    """Read a DCP training state into ``parts`` (any sharding, or none: one process without torchrun)."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import set_state_dict

    if not folder.is_dir():
        raise FoundryError(f"training state is corrupt: {folder} is missing")
    # get_state_dict gives fresh optimizers their (zero) moments first, so DCP has tensors to fill.
    state = _dcp_state(parts)
    try:
        with warnings.catch_warnings():  # one process reading without torchrun is meant: no warning
            warnings.filterwarnings("ignore", message=".*assuming the intent is to load in a single process")
            dcp.load(state, checkpoint_id=folder)
    except Exception as e:
        raise FoundryError(f"training state is corrupt: {folder} ({str(e).splitlines()[0][:100]})") from None
    set_state_dict(parts.model, parts.optimizers, model_state_dict=state["model"], optim_state_dict=state["optim"])


def _load_full_into_shards(state: TrainingState, parts) -> None:
    """Scatter a one-process ``training_state.pt`` (whole tensors, optimizer state keyed by position)
    into an FSDP model's shards: the positions become parameter names, which DCP's state-dict
    functions understand."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_state_dict
    from torch.distributed.tensor import distribute_tensor

    if len(state.optimizers) != len(parts.optimizers):
        raise FoundryError("saved optimizer state does not match train.optimizer; resume with the same optimizer")
    names = {id(p): n for n, p in parts.model.named_parameters()}
    merged: dict[str, Any] = {"state": {}, "param_groups": []}
    for opt, saved in zip(parts.optimizers, state.optimizers):
        for group, saved_group in zip(opt.param_groups, saved["param_groups"]):
            fqns = [names[id(p)] for p in group["params"]]
            merged["param_groups"].append({**saved_group, "params": fqns})
            merged["state"].update({fqn: saved["state"][i] for fqn, i in zip(fqns, saved_group["params"])
                                    if i in saved["state"]})
    options = StateDictOptions(full_state_dict=True)
    set_state_dict(parts.model, parts.optimizers, model_state_dict=state.raw_weights or {},
                   optim_state_dict=merged, options=options)
    if parts.ema is not None and state.ema is not None:
        for k, v in state.ema["shadow"].items():
            mine = parts.ema.shadow.get(k)
            if mine is not None:
                mine.copy_(distribute_tensor(v.float(), mine.device_mesh, mine.placements) if is_sharded(mine) else v)
