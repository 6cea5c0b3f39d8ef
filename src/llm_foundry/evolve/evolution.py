"""The self-evolution engine: population-based training with a real accept/reject gate.

One cycle:

1. score the champion on the fixed validation split (``loss before``);
2. mine the local corpus for the passages the champion predicts worst, and let the
   champion write text that is kept only if it passes novelty and quality filters
   (kept text joins the local knowledge base, ``knowledge/self_generated.jsonl``);
3. start K candidates from the champion, each with mutated hyperparameters
   (learning rate, batch size and so the number of steps, data mix) and the same
   token budget; a candidate no better than the champion at half its budget on a
   quarter of the validation batches is stopped there (early rejection);
4. score the finished candidates on the validation split (loss, plus diversity and
   repetition of their samples) and pick the best;
5. it replaces the champion only if it lowers the validation loss by more than
   ``min_improvement``; otherwise the champion's files are not touched at all.

Every cycle, accepted or not, is recorded in ``evolution_stats.json``. All compute
(training, mining, generation, scoring, including losing candidates) is counted in
token-equivalents (see :class:`~llm_foundry.evolve.local_train.Compute`).
``cycle_state.json`` and ``cycle/`` hold the cycle in progress, so an interrupted
evolution continues in the cycle it was in, with finished candidates kept.
"""

from __future__ import annotations

import math
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from ..config.evolve import EvolveOptions
from ..models.model_dir import load_model_dir
from ..training.optim import build_optimizers
from ..utils.signals import StopRequest
from ..utils.errors import FoundryError
from ..utils.io import append_records, atomic_write_json, read_json, read_log_records
from .corpus import read_split
from .local_train import Compute, EvolveInterrupted, Runtime, run_steps
from .mining import SelfGenFilter, distinct_n, generate_samples, mine_hard_windows, prompts_from, repetition
from .state import StatePaths, load_settings, lock_state, recover_model_dir, weights_digest, write_model_dir
from .stats import load_stats, record_cycle, save_stats

SELF_GEN_FILE = "self_generated.jsonl"


@dataclass
class Genome:
    """The hyperparameters a candidate mutates; the champion's are inherited by the next cycle."""

    lr: float
    batch_size: int
    hard_frac: float = 0.25
    self_frac: float = 0.1

    def mutate(self, rng: np.random.Generator, direction: int) -> "Genome":
        """A mutated copy; ``direction`` (+1/-1) pushes the learning rate up or down (antithetic pairs)."""
        factor = math.exp(direction * (0.4 + 0.4 * abs(rng.normal())))
        bs = int(rng.choice([self.batch_size // 2, self.batch_size, self.batch_size * 2], p=[0.25, 0.5, 0.25]))
        return Genome(lr=float(min(max(self.lr * factor, 1e-6), 0.05)), batch_size=min(max(bs, 2), 64),
                      hard_frac=float(np.clip(self.hard_frac + rng.normal(0, 0.15), 0.0, 0.9)),
                      self_frac=float(np.clip(self.self_frac + rng.normal(0, 0.08), 0.0, 0.5)))

    def rounded(self) -> dict:
        return {"lr": float(f"{self.lr:.4g}"), "batch_size": self.batch_size,
                "hard_frac": round(self.hard_frac, 3), "self_frac": round(self.self_frac, 3)}


class MixBatches:
    """Training batches mixing hard passages, self-generated text and random windows.

    Batch ``k`` depends only on ``(seed, k)``, like :class:`~llm_foundry.data.WindowLoader`.
    A hard row is a window near a mined hard window (shifted by up to half a window),
    so the candidate learns the passage, not one fixed string.
    """

    def __init__(self, train: np.ndarray, hard: np.ndarray, selfgen: np.ndarray | None, genome: Genome,
                 seq_len: int, seed: int, device: torch.device):
        self.train, self.hard, self.selfgen = train, hard, selfgen
        self.g, self.t, self.seed, self.device = genome, seq_len, seed, device
        if self.selfgen is not None and len(self.selfgen) <= seq_len + 1:
            self.selfgen = None

    def __call__(self, step: int) -> tuple[torch.Tensor, torch.Tensor]:
        rng = np.random.default_rng([self.seed, step])
        t, n = self.t, len(self.train)
        rows = np.empty((self.g.batch_size, t + 1), dtype=np.int64)
        for r in range(self.g.batch_size):
            u = rng.random()
            if u < self.g.hard_frac and len(self.hard):
                base = int(self.hard[rng.integers(len(self.hard))]) + int(rng.integers(-(t // 2), t // 2 + 1))
                off = min(max(base, 0), n - t - 1)
                rows[r] = self.train[off:off + t + 1]
            elif u < self.g.hard_frac + self.g.self_frac and self.selfgen is not None:
                off = int(rng.integers(0, len(self.selfgen) - t - 1))
                rows[r] = self.selfgen[off:off + t + 1]
            else:
                off = int(rng.integers(0, n - t - 1))
                rows[r] = self.train[off:off + t + 1]
        data = torch.from_numpy(rows).to(self.device)
        return data[:, :-1], data[:, 1:]


class Evolution:
    """Runs evolution cycles on a state folder made by ``--mode train``.

    Holds the state folder's lock from construction until :meth:`run` ends (or :meth:`close`).

    Args:
        state_dir: the state folder.
        opts: evolution options.
        say: where progress lines go.
    """

    def __init__(self, state_dir: str | Path, opts: EvolveOptions, say: Callable[[str], None] = print):
        self.paths = StatePaths(state_dir)
        self.opts = opts
        self.say = (lambda *_: None) if opts.quiet else say
        if opts.population < 1 or opts.cycle_steps < 1:
            raise FoundryError("--population and --cycle-steps must be >= 1")
        if not self.paths.has_split():
            raise FoundryError(f"no training data split in {self.paths.root}; run `foundry evolve --mode train` first")
        # Held until run() ends (or close()): recovery and every write below are this process's alone.
        self._lock = lock_state(self.paths, "evolve")
        try:
            self._open(opts)
        except BaseException:
            self.close()
            raise

    def _open(self, opts: EvolveOptions) -> None:
        self.paths.require_champion()
        self.model_cfg, self.train_cfg, self.settings = load_settings(self.paths)
        self.seed = int(self.settings["seed"])
        self.seq_len = min(self.train_cfg.seq_len or self.model_cfg.max_seq_len, self.model_cfg.max_seq_len)
        eval_batches = opts.eval_batches or self.train_cfg.eval_batches
        self.rt = Runtime.open(self.paths, self.seq_len, self.train_cfg.batch_size, eval_batches, opts.device,
                               opts.precision, self.model_cfg.dim)
        self.tokenizer = self.rt.dataset.tokenizer
        self.train_tokens = np.concatenate([np.asarray(s) for s in self.rt.dataset.split("train")]).astype(np.int64)
        self.budget_tokens = opts.cycle_steps * self.train_cfg.batch_size * self.seq_len
        self.score_prompts = prompts_from(self.train_tokens, self.tokenizer, opts.score_samples, 48, self.seed)
        self.corpus_text: str | None = None

    def close(self) -> None:
        """Let go of the state folder's lock (idempotent; run() does it when it ends)."""
        if self._lock is not None:
            self._lock.release()
            self._lock = None

    # ------------------------------------------------------------------ pieces
    def _champion(self):
        recover_model_dir(self.paths.champion)
        return load_model_dir(self.paths.champion, self.rt.device, with_tokenizer=False).model

    def _sample_stats(self, model, compute: Compute) -> dict:
        texts = generate_samples(model, self.tokenizer, self.score_prompts, self.opts.score_tokens, 0.8, self.seed)
        compute.forward_tokens += len(texts) * self.opts.score_tokens
        joined = [t for t in texts if t.strip()] or [""]
        return {"diversity": round(float(np.mean([distinct_n(t, 2) for t in joined])), 4),
                "repetition": round(float(np.mean([repetition(t, 4) for t in joined])), 4),
                "sample": texts[0][:120] if texts else ""}

    def _self_generate(self, model, cycle_seed: int, compute: Compute) -> dict:
        """Generate, filter, and append the kept samples to the knowledge base."""
        if self.opts.self_samples <= 0:
            return {"generated": 0, "kept": 0, "rejected": {}}
        if self.corpus_text is None:
            self.corpus_text = self.tokenizer.decode(self.train_tokens.tolist())
        path = self.paths.knowledge / SELF_GEN_FILE
        kept_texts = [r["text"] for r in read_log_records(path)]
        prompts = prompts_from(self.train_tokens, self.tokenizer, self.opts.self_samples, 48, cycle_seed)
        texts = generate_samples(model, self.tokenizer, prompts, self.opts.self_tokens, 0.9, cycle_seed)
        compute.forward_tokens += len(texts) * self.opts.self_tokens
        flt, rejected, new = SelfGenFilter(), {}, []
        for p, t in zip(prompts, texts):
            why = flt.check(t, self.corpus_text, kept_texts + new)
            if why:
                rejected[why] = rejected.get(why, 0) + 1
            else:
                new.append(t.strip())
        if new:
            torn = append_records(path, [{"cycle_seed": cycle_seed, "text": t} for t in new])
            if torn:
                self.say(f"  note: dropped a torn record ({torn} bytes) at the end of {path}: "
                         "a run was killed while writing it")
        return {"generated": len(texts), "kept": len(new), "rejected": rejected}

    def _self_pool(self) -> np.ndarray | None:
        texts = [r["text"] for r in read_log_records(self.paths.knowledge / SELF_GEN_FILE)]
        if not texts:
            return None
        eos = getattr(self.tokenizer, "eos_id", None)
        ids: list[int] = []
        for t in texts:
            ids.extend(self.tokenizer.encode(t))
            if eos is not None:
                ids.append(eos)
        return np.asarray(ids, dtype=np.int64)

    def _train_candidate(self, base_state: dict, genome: Genome, hard: np.ndarray, selfgen, seed: int,
                         loss_quick_before: float, stop: StopRequest, compute: Compute):
        model = self._champion()
        model.load_state_dict(base_state)
        cfg = self.train_cfg.__class__(**{**asdict(self.train_cfg), "lr": genome.lr, "batch_size": genome.batch_size})
        optimizers = build_optimizers(model, cfg)
        steps = max(1, self.budget_tokens // (genome.batch_size * self.seq_len))
        batches = MixBatches(self.train_tokens, hard, selfgen, genome, self.seq_len, seed, self.rt.device)
        half = steps // 2 if self.opts.early_reject and steps >= 2 else steps
        done = run_steps(model, optimizers, batches, cfg, 0, half, steps, self.rt.amp_dtype, stop=stop, compute=compute)
        if done < half:
            raise EvolveInterrupted("evolution interrupted; finished candidates are kept; run the same command to continue")
        if half < steps:
            quick = self.rt.val_loss(model, compute, self.rt.quick_batches)
            if quick >= loss_quick_before:
                return model, steps, half, quick
            done = run_steps(model, optimizers, batches, cfg, half, steps, steps, self.rt.amp_dtype, stop=stop, compute=compute)
            if done < steps:
                raise EvolveInterrupted("evolution interrupted; finished candidates are kept; run the same command to continue")
        return model, steps, steps, None

    # ------------------------------------------------------------------- cycle
    def run(self) -> dict:
        """Run the cycles asked for (or finish an interrupted run); returns the stats."""
        if self._lock is None:
            raise FoundryError("this Evolution is closed; make a new one")
        try:
            return self._run()
        finally:
            self.close()

    def _run(self) -> dict:
        stats = load_stats(self.paths.stats)
        cs = read_json(self.paths.cycle_state, "cycle state") if self.paths.cycle_state.is_file() else None
        if cs is not None and any(h["cycle"] == cs["cycle"] for h in stats["history"]):
            # Killed after the cycle was recorded, before its leftovers were removed: it is done.
            self.paths.cycle_state.unlink(missing_ok=True)
            shutil.rmtree(self.paths.cycle, ignore_errors=True)
            cs = None
        if cs is not None and cs.get("decision") is None and \
                cs.get("champion_digest") != weights_digest(self.paths.champion):
            # `--mode train` changed the champion meanwhile: candidates of the old one must not be judged against it.
            self.say(f"note: the champion changed since cycle {cs['cycle']} started; that cycle starts anew")
            cs = {"cycle": cs["cycle"], "target": cs["target"], "candidates": {}, "decision": None,
                  "champion_digest": weights_digest(self.paths.champion)}
            shutil.rmtree(self.paths.cycle, ignore_errors=True)
            atomic_write_json(self.paths.cycle_state, cs)
        if cs is not None:
            target = cs["target"]
            self.say(f"resuming the interrupted evolution at cycle {cs['cycle']} (of {target})")
        else:
            if self.opts.cycles < 1:
                raise FoundryError("--cycles must be >= 1")
            target = stats["total_evolutions"] + self.opts.cycles
        from ..utils.progress import progress_bar

        with StopRequest(self.opts.quiet) as stop, progress_bar(not self.opts.quiet) as bar:
            self.bar = bar
            self.task = bar.add_task("evolution", total=target - stats["total_evolutions"])
            while True:
                stats = load_stats(self.paths.stats)
                cycle = stats["total_evolutions"] + 1
                if cycle > target:
                    break
                if cs is None or cs["cycle"] != cycle:
                    cs = {"cycle": cycle, "target": target, "candidates": {}, "decision": None,
                          "champion_digest": weights_digest(self.paths.champion)}
                    shutil.rmtree(self.paths.cycle, ignore_errors=True)
                    atomic_write_json(self.paths.cycle_state, cs)
                bar.update(self.task, description=f"cycle {cycle}/{target}")
                self._cycle(cs, stats, stop)
                bar.advance(self.task)
                cs = None
        return load_stats(self.paths.stats)

    def _cycle(self, cs: dict, stats: dict, stop: StopRequest) -> None:
        opts, paths = self.opts, self.paths
        k = cs["cycle"]
        t0 = time.perf_counter()
        cycle_seed = self.seed * 1000 + k
        compute = Compute(**cs.get("compute", {}))

        def save_cs() -> None:
            cs["compute"] = {"train_tokens": compute.train_tokens, "forward_tokens": compute.forward_tokens}
            atomic_write_json(paths.cycle_state, cs)

        self.say(f"\ncycle {k}/{cs['target']}")
        champion = self._champion()
        base_state = {n: v.detach().clone() for n, v in champion.state_dict().items()}
        if "loss_before" not in cs:
            digest = weights_digest(paths.champion)
            if digest == stats.get("champion_digest") and stats.get("champion_quick_loss") is not None:
                # Scored at the end of the last cycle and unchanged since: no need to pay for it again.
                cs["loss_before"], cs["quick_before"] = stats["champion_val_loss"], stats["champion_quick_loss"]
            else:
                cs["loss_before"], cs["quick_before"] = self.rt.val_losses(champion, compute)
            n_scored = min(opts.mine_windows, max(1, len(self.train_tokens) - self.seq_len - 1))
            hard, hard_losses = mine_hard_windows(champion, self.train_tokens, self.seq_len, n_scored,
                                                  opts.hard_keep, cycle_seed, self.rt.amp_dtype)
            compute.forward_tokens += n_scored * self.seq_len
            cs["hard_offsets"] = [int(o) for o in hard]
            cs["hard_mean_loss"] = round(float(hard_losses.mean()), 4)
            cs["selfgen"] = self._self_generate(champion, cycle_seed, compute)
            save_cs()
        loss_before = cs["loss_before"]
        self.say(f"  champion held-out loss {loss_before:.4f}; hard passages: {len(cs['hard_offsets'])} "
                 f"(mean loss {cs['hard_mean_loss']:.3f}); self-generated: {cs['selfgen']['kept']}/{cs['selfgen']['generated']} kept")
        genome = Genome(**(stats["champion_hparams"] or {"lr": self.train_cfg.lr, "batch_size": self.train_cfg.batch_size}))
        hard = np.asarray(cs["hard_offsets"], dtype=np.int64)
        selfgen = self._self_pool()
        if cs.get("decision") is None:
            for i in range(opts.population):
                if str(i) in cs["candidates"]:
                    continue
                rng = np.random.default_rng([cycle_seed, i])
                g = genome if i == 0 else genome.mutate(rng, 1 if i % 2 else -1)
                model, steps, done, quick = self._train_candidate(base_state, g, hard, selfgen, cycle_seed * 10 + i,
                                                                  cs["quick_before"], stop, compute)
                result = {"id": i, "hparams": g.rounded(), "steps": steps, "steps_done": done,
                          "train_tokens": done * g.batch_size * self.seq_len}
                if quick is not None:
                    result.update(early_stopped=True, quick_loss=round(quick, 5), val_loss=None, score=None)
                    self.say(f"  candidate {i}: lr {g.lr:.2e} batch {g.batch_size} hard {g.hard_frac:.2f} "
                             f"self {g.self_frac:.2f} | stopped early at step {done}/{steps} (quick loss {quick:.4f})")
                else:
                    loss, quick_end = self.rt.val_losses(model, compute)
                    result.update(early_stopped=False, val_loss=round(loss, 5), quick_loss=round(quick_end, 5),
                                  **self._sample_stats(model, compute))
                    result["score"] = round(loss + opts.diversity_weight * (result["repetition"] - result["diversity"]), 5)
                    write_model_dir(paths.cycle / f"cand_{i}", model, self.tokenizer, done)
                    self.say(f"  candidate {i}: lr {g.lr:.2e} batch {g.batch_size} hard {g.hard_frac:.2f} "
                             f"self {g.self_frac:.2f} | held-out loss {loss:.4f} | diversity {result['diversity']:.3f} "
                             f"| repetition {result['repetition']:.3f}")
                cs["candidates"][str(i)] = result
                save_cs()
            finished = [c for c in cs["candidates"].values() if not c["early_stopped"]]
            best = min(finished, key=lambda c: c["score"]) if finished else None
            improvement = loss_before - best["val_loss"] if best else 0.0
            accepted = best is not None and improvement > opts.min_improvement
            cs["decision"] = {"accepted": accepted, "best": best["id"] if best else None,
                              "improvement": round(improvement, 6)}
            save_cs()
        d = cs["decision"]
        if d["accepted"]:
            bundle = load_model_dir(paths.cycle / f"cand_{d['best']}", self.rt.device, with_tokenizer=False)
            write_model_dir(paths.champion, bundle.model, self.tokenizer, bundle.step)
        best = cs["candidates"][str(d["best"])] if d["best"] is not None else None
        after = best["val_loss"] if d["accepted"] else loss_before
        quick_after = best["quick_loss"] if d["accepted"] else cs["quick_before"]
        new_genome = Genome(**best["hparams"]) if d["accepted"] else genome
        entry = {"cycle": k, "decision": "accepted" if d["accepted"] else "rejected",
                 "champion_loss_before": round(loss_before, 5), "champion_loss_after": round(after, 5),
                 "champion_quick_after": quick_after, "champion_digest": weights_digest(paths.champion),
                 "improvement": d["improvement"] if d["accepted"] else 0.0, "best_candidate": d["best"],
                 "best_improvement": d["improvement"], "min_improvement": opts.min_improvement,
                 "champion_hparams_before": genome.rounded(), "champion_hparams_after": new_genome.rounded(),
                 "candidates": [cs["candidates"][str(i)] for i in sorted(map(int, cs["candidates"]))],
                 "hard_passages": len(cs["hard_offsets"]), "hard_mean_loss": cs["hard_mean_loss"],
                 "self_generated": cs["selfgen"], "budget_tokens_per_candidate": self.budget_tokens,
                 "compute": compute.as_dict(), "time": round(time.perf_counter() - t0, 2),
                 "finished_at": time.strftime("%Y-%m-%dT%H:%M:%S")}
        save_stats(paths.stats, record_cycle(load_stats(paths.stats), entry))
        paths.cycle_state.unlink(missing_ok=True)
        shutil.rmtree(paths.cycle, ignore_errors=True)
        verdict = (f"accepted candidate {d['best']}: held-out loss {loss_before:.4f} -> {after:.4f}" if d["accepted"]
                   else f"rejected (best improvement {d['improvement']:+.4f} <= {opts.min_improvement}); champion kept")
        self.say(f"  cycle {k}: {verdict}")


def heldout_report(state_dir: str | Path, device: str = "auto", precision: str = "auto") -> dict:
    """Validation and test loss of the champion (test is never used for a decision)."""
    from ..eval.metrics import evaluate_text
    from .corpus import read_test_text

    paths = StatePaths(state_dir)
    model_cfg, train_cfg, _ = load_settings(paths)
    seq_len = min(train_cfg.seq_len or model_cfg.max_seq_len, model_cfg.max_seq_len)
    rt = Runtime.open(paths, seq_len, train_cfg.batch_size, train_cfg.eval_batches, device, precision, model_cfg.dim)
    bundle = load_model_dir(paths.require_champion(), rt.device)
    out = {"val_loss": rt.val_loss(bundle.model), "split": read_split(paths.data)["tokens"]}
    test = read_test_text(paths.data)
    if test:
        out["test_loss"] = evaluate_text(bundle.model, bundle.tokenizer, test, seq_len=seq_len, amp_dtype=rt.amp_dtype)["loss"]
    return out
