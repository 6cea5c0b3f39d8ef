"""The memory pipeline: a backbone for the fact world, a memory folder, and its four training stages.

    foundry memory backbone --out B   a small MiniLLM that knows the facts' language (train entities only)
    foundry memory init --backbone B --out MEM   store + memory modules at init + memory_config.json
    foundry memory train MEM --stage router|fusion|joint|memory|all [--resume]

A memory folder ``MEM`` holds, beside the store (``store.py``)::

    memory_config.json           the MemoryConfig it was made (and last trained) with
    memory_modules.safetensors   the gate and fusion weights (``MemoryModel.save``)
    train/<stage>.pt             each stage's TrainingState, with the modules' weights in it

**Training data.** The fact world's *train* and *modules-only* entities (the latter never
reach the backbone, so the modules learn to retrieve and read names it does not know): their
facts form a training bank, with ``world.distractors`` facts about other made-up entities
mixed in, so retrieval has to pick; the questions are every trained phrasing of every such
fact. Memory-only entities never reach a trainable parameter (``eval`` asks about them).

**The stages** (the source design's, with its bugs fixed):

* ``router``: the gate alone, InfoNCE against the gold entry with hard negatives (``stages.py``);
* ``fusion``: the fusion alone (router frozen); each question reads its gold entry first and
  then the routed top-k, and a share ``missing`` of questions read only routed entries;
* ``joint``: every memory parameter, the answer loss (whose gradient reaches the gate through
  the routing weights) plus the retrieval loss over the routed entries and the router's InfoNCE
  against the bank's hard negatives (which keeps the gate's ranking over the whole bank);
* ``memory``: every memory parameter, the answer loss, plain text (the facts' statements)
  read with its own memory, and a KL that keeps text read with *unrelated* memory as the
  backbone predicts it; the router's InfoNCE as in ``joint``.

**Exact resume.** Step ``s`` of a stage draws its batch from a generator seeded by
``(seed, stage, s)`` alone, and the entry vectors it searches are recomputed from the
current weights; a checkpoint (``TrainingState`` with the modules' weights inside, written
atomically) therefore holds everything a continued run needs, and an interrupted stage
resumed ends with the same weights as one that never stopped.
"""

from __future__ import annotations

import random
import tempfile
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import torch
import torch.nn as nn

from .. import kernels
from ..config import TrainConfig
from ..config.memory import STAGE_NAMES, MemoryConfig, StageSettings, memory_config_from_dict
from ..training.loop import run_loop
from ..training.optim import build_optimizers
from ..training.schedule import lr_factor
from ..training.state import TrainingState, load_state
from ..training.step import StepParts, train_step
from ..utils.errors import FoundryError
from ..utils.io import atomic_write_bytes, atomic_write_json, read_json
from ..utils.signals import deferred_signals
from .backbone import Backbone
from .facts import HELDOUT_QUESTIONS, RELATION_BY_NAME, Fact, FactWorld, build_world
from .fusion import Fusion, MemoryBatch, default_fusion_layers
from .gate import MemoryGate, TokenFeatures
from .model import MODULES_FILE, Bank, MemoryModel, default_fusion_heads
from .stages import EntryTokens, RouterData, answer_loss, gold_first, hard_negatives, kl_to_backbone, retrieval_loss, router_loss
from .store import MemoryStore

CONFIG_FILE = "memory_config.json"
TRAIN_DIR = "train"
StepHook = Callable[[int, float], None]


# ----------------------------------------------------------------------------- the fact world's text
def fact_world(cfg: MemoryConfig) -> FactWorld:
    """The built-in fact world of a config."""
    w = cfg.world
    return build_world(w.seed, w.n_train, w.n_memory_only, tuple(w.langs), w.n_modules_only)


def qa_line(question: str, answer: str) -> str:
    """A question and its answer as one line: the layout the backbone learns and ``ask`` prompts with."""
    return f"{question} {answer}"


def trained_questions(world: FactWorld, facts: list[Fact] | None = None) -> list[tuple[str, str, int]]:
    """``(question, answer, fact row)`` for every *trained* phrasing of every fact of ``facts``
    (default: the train split's; the held-out phrasing of each relation is never among them)."""
    out = []
    for i, f in enumerate(world.facts("train") if facts is None else facts):
        templates = RELATION_BY_NAME[f.relation].questions[f.lang]
        for t in templates[:len(templates) - HELDOUT_QUESTIONS]:
            q = t.format(s=f.subject)
            out.append((q[0].upper() + q[1:] if f.lang == "en" else q, f.object, i))
    return out


def backbone_corpus(world: FactWorld, repeats: int = 1, seed: int = 0) -> list[str]:
    """Documents of the train entities' text only: each fact's statement and its trained
    question/answer lines, one entity's lines a document, shuffled (``repeats`` times over).

    Memory-only entities are absent: the backbone learns the format and the value
    vocabulary, never their facts.
    """
    by_subject: dict[str, list[str]] = {}
    facts = world.facts("train")
    for f in facts:
        by_subject.setdefault(f.subject, []).append(f.text)
    for q, a, i in trained_questions(world):
        by_subject[facts[i].subject].append(qa_line(q, a))
    rng = random.Random(f"{seed}:backbone-corpus")
    docs = []
    for _ in range(repeats):
        for lines in by_subject.values():
            lines = lines[:]
            rng.shuffle(lines)
            docs.append("\n".join(lines) + "\n")
    rng.shuffle(docs)
    return docs


def train_backbone(out: str | Path, cfg: MemoryConfig, resume: bool = False, quiet: bool = False,
                   on_step: StepHook | None = None) -> dict:
    """Train the small backbone of ``cfg.backbone`` on the fact world's train-entity text with our
    :class:`~llm_foundry.training.trainer.Trainer` (byte tokenizer) into the model folder ``out``.

    The token data is rebuilt (it is a pure function of the config) in a temporary folder.
    """
    from ..data import prepare_dataset
    from ..data.sources import Document
    from ..training.trainer import Trainer

    docs = [Document(t, "memory fact world") for t in backbone_corpus(fact_world(cfg), cfg.backbone.repeats,
                                                                      cfg.world.seed)]
    with tempfile.TemporaryDirectory(prefix="foundry-memory-backbone-") as tmp:
        data = Path(tmp) / "data"
        prepare_dataset(docs, "byte", data, val_fraction=0.05, seed=cfg.world.seed, show_progress=False)
        trainer = Trainer(cfg.backbone.model, cfg.backbone.train, data, out, resume=resume, quiet=quiet)
        return trainer.run(on_step)


# ----------------------------------------------------------------------------- the memory folder
@dataclass
class Memory:
    """An opened memory folder: its config, store, backbone and memory model."""

    path: Path
    cfg: MemoryConfig
    store: MemoryStore
    model: MemoryModel

    def close(self) -> None:
        self.store.close()


def init_memory(backbone_dir: str | Path, mem: str | Path, cfg: MemoryConfig) -> Memory:
    """Create memory folder ``mem`` for the backbone in ``backbone_dir``: an empty store bound to its
    fingerprint, the memory modules at initialisation, and the config.

    Raises:
        FoundryError: ``mem`` exists (and is not an empty folder); a missing or unsupported backbone.
    """
    mem = Path(mem)
    if mem.exists() and (not mem.is_dir() or any(mem.iterdir())):
        raise FoundryError(f"{mem} already exists; choose a new --out for the memory folder")
    backbone = Backbone.load(backbone_dir, device=cfg.device)
    torch.manual_seed(cfg.seed)
    model = build_model(backbone, cfg)
    store = MemoryStore.create(mem, backbone_fingerprint=backbone.fingerprint(),
                               meta={"backbone": str(Path(backbone_dir).resolve())})
    atomic_write_json(mem / CONFIG_FILE, cfg.to_dict())
    model.save(mem)
    return Memory(mem, cfg, store, model)


def build_model(backbone: Backbone, cfg: MemoryConfig) -> MemoryModel:
    """Fresh memory modules of ``cfg.modules``'s shape on ``backbone``."""
    m = cfg.modules
    gate = MemoryGate(backbone, m.read_layer, m.proj_dim, m.max_len)
    layers = m.inject_layers or default_fusion_layers(backbone.n_layers, gate.layer)
    for layer in layers:
        backbone.check_layer(layer)
    return MemoryModel(backbone, gate, Fusion(backbone.dim, layers, m.heads or default_fusion_heads(backbone.dim)))


def open_memory(mem: str | Path, cfg: MemoryConfig | None = None, device: str | None = None,
                backbone: str | Path | None = None) -> Memory:
    """Open memory folder ``mem``: its store, its backbone (where ``init`` found it) and modules.

    Args:
        cfg: use this config instead of the folder's (e.g. ``train --preset``).
        backbone: load this backbone folder instead (``chat MODEL --memory MEM``); refused in one
            line when it is not the one the folder was built for.

    Raises:
        FoundryError: not a memory folder, one ``init`` did not finish, a backbone that moved
            or changed (another fingerprint).
    """
    mem = Path(mem)
    store = MemoryStore.open(mem)
    try:
        if not (mem / CONFIG_FILE).is_file() or not (mem / MODULES_FILE).is_file():
            raise FoundryError(f"{mem} has no memory model yet; make the folder with `foundry memory init`")
        cfg = cfg or memory_config_from_dict(read_json(mem / CONFIG_FILE, "memory config"))
        where = backbone or store.meta.get("backbone")
        if not where:
            raise FoundryError(f"{mem} does not name its backbone; make the folder with `foundry memory init`")
        loaded = Backbone.load(where, device=device or cfg.device)
        store.check_backbone(loaded.fingerprint())
        return Memory(mem, cfg, store, MemoryModel.load(mem, loaded))
    except BaseException:
        store.close()
        raise


# ----------------------------------------------------------------------------- training data
@dataclass
class TrainingData:
    """The train entities' questions, and the training bank (their facts, then distractors).

    Attributes:
        questions, answers: every trained phrasing of every train fact.
        gold: ``(questions,)`` the bank row (= id) of each question's fact.
        texts: the bank's entry texts; the train facts first, in order (row = fact index), then distractors.
        statements: the train facts' texts (the memory stage's plain text).
        router: the token features of every question and entry, read once (the backbone is frozen).
        tokens: the bank's entries' token features (the same tensors as ``router.entries``) by text.
        vectors: the bank's entry vectors as last encoded (:meth:`entry_vectors`), or None.
    """

    questions: list[str]
    answers: list[str]
    gold: torch.Tensor
    texts: list[str]
    statements: list[str]
    router: RouterData
    tokens: EntryTokens
    vectors: torch.Tensor | None = None

    def entry_vectors(self, model: MemoryModel, step: int, every: int | None) -> torch.Tensor:
        """The bank's entry vectors for step ``step``: encoded under the gate's current weights at
        every ``every``-th step and whenever none are kept (``every`` None: only then, for a stage
        whose gate does not train), else those of the last encoding.

        Encoding the whole bank pools every entry's tokens (22k entries in the ``cpu`` preset), far
        more than a step's own work; vectors a few steps old still find the hard negatives and the
        routed entries, and the loss encodes the entries it uses afresh, with autograd. The kept
        vectors travel in the stage's checkpoint, so a resumed stage continues exactly.
        """
        if self.vectors is None or (every is not None and step % every == 0):
            self.vectors = model.gate.embed_all(self.router.entries)
        return self.vectors

    def bank(self, vectors: torch.Tensor) -> Bank:
        """The training bank with entry vectors ``vectors`` (from :meth:`entry_vectors`)."""
        return Bank(range(len(self.texts)), self.texts, vectors)


def training_data(model: MemoryModel, cfg: MemoryConfig) -> TrainingData:
    """Read the fact world's training side through the frozen backbone (once per `train`).

    The questions' token features are kept in bfloat16 (the ``cpu`` preset's 61k questions: 3 GB
    instead of 6); the bank's stay in float32, since the fusion reads them too.
    """
    world = fact_world(cfg)
    facts = world.facts("train") + world.facts("modules_only")
    asked = trained_questions(world, facts)
    texts = [f.text for f in facts] + world.distractors(cfg.world.distractors, seed=1)
    gold = [i for _, _, i in asked]
    questions = [q for q, _, _ in asked]
    if not questions:
        raise FoundryError("the fact world has no training questions")
    tokens = EntryTokens.read(model, texts)
    q = TokenFeatures.read(model.gate, questions, dtype=torch.bfloat16)
    router = RouterData(q, tokens.features, torch.as_tensor(gold, dtype=torch.long, device=q.mask.device))
    return TrainingData(questions, [a for _, a, _ in asked], router.gold.cpu(), texts,
                        [f.text for f in facts], router, tokens)


# ----------------------------------------------------------------------------- the stages
def _generator(cfg: MemoryConfig, stage: str, step: int) -> torch.Generator:
    """Step ``step``'s draws: a pure function of (seed, stage, step), which makes resume exact."""
    return torch.Generator().manual_seed(zlib.crc32(f"{cfg.seed}:{stage}:{step}".encode()))


def _trained_module(model: MemoryModel, stage: str) -> nn.Module:
    """What a stage trains: the gate (router), the fusion (router frozen), or every memory module."""
    return {"router": model.memory["gate"], "fusion": model.memory["fusion"]}.get(stage, model.memory)


def _routed(model: MemoryModel, data: TrainingData, rows: torch.Tensor, s: StageSettings, k: int,
            gen: torch.Generator, grad: bool, bank: Bank) -> tuple[list[str], list[str], MemoryBatch, torch.Tensor, torch.Tensor]:
    """A batch of questions with their entries (gold first, routed top-k from ``bank``, a share with
    the gold left out): ``(questions, answers, memory, routing logits, gold column)``."""
    qs = [data.questions[i] for i in rows.tolist()]
    ans = [data.answers[i] for i in rows.tolist()]
    k = min(k, len(data.texts) - 1)
    with torch.set_grad_enabled(grad):
        q = model.gate.embed_queries(data.router.questions.rows(rows))
    texts, gold_col = gold_first(model, qs, data.gold[rows].tolist(), bank, k, s.missing, gen,
                                 query_vecs=q.detach())
    with torch.set_grad_enabled(grad):
        route, memory = model.route(q, texts, data.tokens.take([t for row in texts for t in row]))
    return qs, ans, memory, route, gold_col


def _router_loss(model: MemoryModel, data: TrainingData, rows: torch.Tensor, s: StageSettings,
                 entry_vecs: torch.Tensor | None = None) -> torch.Tensor:
    """The router's InfoNCE for questions ``rows``, with ``s.hard_negatives`` mined over the bank."""
    rows = rows.to(data.router.gold.device)
    negatives = hard_negatives(model, data.router, rows, s.hard_negatives, entry_vecs) if s.hard_negatives else None
    return router_loss(model, data.router, rows, negatives)


def stage_loss(model: MemoryModel, data: TrainingData, cfg: MemoryConfig, stage: str, step: int) -> torch.Tensor:
    """The loss of ``stage``'s step ``step`` (its batch drawn from :func:`_generator`)."""
    s = cfg.stage(stage)
    gen = _generator(cfg, stage, step)
    rows = torch.randperm(len(data.questions), generator=gen)[:s.batch_size]
    vectors = data.entry_vectors(model, step, None if stage == "fusion" else s.refresh)  # fusion: gate frozen
    if stage == "router":
        return _router_loss(model, data, rows, s, vectors)
    bank = data.bank(vectors)
    qs, ans, memory, route, gold_col = _routed(model, data, rows, s, cfg.modules.k, gen, stage != "fusion", bank)
    loss = answer_loss(model, qs, ans, memory)
    if stage in ("joint", "memory"):
        # The gate trains here too (the answer loss reaches it through the routing weights), and a
        # loss over the k routed entries alone let its ranking over the whole bank drift: retrieval@1
        # fell from 92.7% after the router stage to 87.0%. The router's InfoNCE against the bank's
        # hard negatives keeps the whole ranking in place.
        loss = loss + s.retrieval_weight * _router_loss(model, data, rows, s, bank.index.vectors)
    if stage == "joint":
        loss = loss + s.retrieval_weight * retrieval_loss(route, gold_col)
    elif stage == "memory":
        # Plain text read with its own memory: each question's fact statement, every token trained.
        facts = data.gold[rows].tolist()
        statements = [data.statements[f] for f in facts]
        ids, targets = _text_batch(model, statements)
        loss = loss + s.text_weight * kernels.cross_entropy(model(ids, memory), targets)
        # The same text read with another row's memory (unrelated to it) must stay as the backbone predicts it.
        if len(rows) > 1:
            unrelated = MemoryBatch(memory.states.roll(1, 0), memory.mask.roll(1, 0),
                                    None if memory.bias is None else memory.bias.roll(1, 0))
            loss = loss + s.kl_weight * kl_to_backbone(model, ids, unrelated)
    return loss


def _text_batch(model: MemoryModel, texts: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-padded token ids of ``texts`` and next-token targets (-100 on padding)."""
    tok = model.backbone.tokenizer
    rows = [tok.encode(t)[:model.backbone.context] for t in texts]
    longest = max(len(r) for r in rows)
    ids = torch.zeros(len(rows), longest, dtype=torch.long)
    targets = torch.full((len(rows), longest), -100, dtype=torch.long)
    for r, t in enumerate(rows):
        ids[r, :len(t)] = torch.tensor(t)
        targets[r, :len(t) - 1] = torch.tensor(t[1:])
    return ids.to(model.backbone.device), targets.to(model.backbone.device)


def state_file(mem: str | Path, stage: str) -> Path:
    """Where ``stage``'s training state lives in a memory folder."""
    return Path(mem) / TRAIN_DIR / f"{stage}.pt"



def train_stage(memory: Memory, stage: str, data: TrainingData, resume: bool = False, quiet: bool = False,
                on_step: StepHook | None = None) -> dict:
    """Run one stage on an opened memory folder, checkpointing into it; returns ``{"stage", "step", "loss"}``.

    Args:
        resume: continue the stage's checkpoint (a finished stage is skipped); without it the
            stage starts over from the current modules.
        on_step: ``(step, progress)`` after every step.

    Raises:
        TrainingInterrupted: Ctrl-C/SIGTERM; the checkpoint is saved (continue with ``resume``).
    """
    cfg, model = memory.cfg, memory.model
    s = cfg.stage(stage)
    module = _trained_module(model, stage)
    tc = TrainConfig(lr=s.lr, weight_decay=0.0, grad_clip=1.0, optimizer="adamw")
    parts = StepParts(module, build_optimizers(module, tc), grad_clip=1.0)
    file = state_file(memory.path, stage)
    step, last = 0, float("nan")
    data.vectors = None  # another stage's, or another run's
    if resume and file.is_file():
        state = load_state(file)
        if state.extra.get("stage") != stage:
            raise FoundryError(f"{file} is not a {stage} stage's state")
        if state.extra.get("done"):
            return {"stage": stage, "step": state.step, "loss": state.extra.get("loss"), "skipped": True}
        state.restore(model.memory, parts.optimizers, base_lrs=[s.lr])
        step, last = state.step, state.extra.get("loss", last)
        data.vectors = state.extra.get("entry_vectors")

    def save(done: bool = False) -> None:
        extra = {"stage": stage, "done": done, "loss": last, "entry_vectors": data.vectors}
        state = TrainingState.capture(step, model.memory, parts.optimizers, extra=extra)
        state.raw_weights = {k: v.detach().cpu().clone() for k, v in model.memory.state_dict().items()}
        with deferred_signals():
            # The state (with the weights inside) first: a kill between the two files leaves a state
            # whose weights a resume uses, never weights without the optimizer moments that made them.
            atomic_write_bytes(file, state.to_bytes())
            model.save(memory.path)

    def one_step() -> None:
        nonlocal step, last
        factor = lr_factor(step, step / max(s.steps, 1), s.schedule, s.warmup_steps, 0.0)
        last = float(train_step(parts, factor, 1, lambda _: stage_loss(model, data, cfg, stage, step)))
        step += 1

    def after_step(now: int, view) -> None:
        view.show(now, now / max(s.steps, 1), f"loss {last:.4f}")

    file.parent.mkdir(parents=True, exist_ok=True)
    run_loop(label=f"memory {stage}", max_steps=s.steps, step=lambda: step, train_step=one_step,
             progress=lambda: step / max(s.steps, 1), save=save, quiet=quiet,
             checkpoint_interval=s.checkpoint_interval, after_step=after_step, on_step=on_step)
    save(done=True)
    return {"stage": stage, "step": step, "loss": last}


def train_memory(mem: str | Path, stages: Sequence[str], cfg: MemoryConfig | None = None, resume: bool = False,
                 quiet: bool = False, on_step: StepHook | None = None) -> list[dict]:
    """Train ``stages`` of memory folder ``mem`` in order (``cfg``: instead of the folder's config,
    which it then replaces). Returns each stage's summary."""
    for stage in stages:
        if stage not in STAGE_NAMES:
            raise FoundryError(f"unknown memory stage {stage!r} (stages: {', '.join(STAGE_NAMES)}, all)")
    memory = open_memory(mem, cfg)
    try:
        saved = memory_config_from_dict(read_json(memory.path / CONFIG_FILE, "memory config"))
        if cfg is not None and cfg.modules != saved.modules:
            raise FoundryError("the memory modules' shape (the config's modules section) is fixed by `init`; "
                               "train with the folder's modules settings, or init a new folder")
        if cfg is not None:
            atomic_write_json(memory.path / CONFIG_FILE, cfg.to_dict())
        if not quiet:
            from ..utils.progress import console

            console.print(f"reading the fact world's train entities through the backbone ({memory.model.backbone.source})")
        data = training_data(memory.model, memory.cfg)
        if not quiet:
            console.print(f"{len(data.questions):,} questions, a training bank of {len(data.texts):,} entries")
        out = []
        for stage in stages:
            out.append(train_stage(memory, stage, data, resume=resume, quiet=quiet, on_step=on_step))
        return out
    finally:
        memory.close()

