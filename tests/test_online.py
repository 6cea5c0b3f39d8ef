"""Online learning (issue 4): replay store, learner, REPL, `foundry online`.

The acceptance tests of the issue are marked in their names: teach, remember,
survive (kill -9 during a pulse) and a real terminal driven through tmux. The rest
pin the pieces they rest on: vocabulary growth reaching the optimizer and the EMA,
torn-record recovery, EMA loaded after the checkpoint, atomic saves, the schedule.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import io
import json
import math
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from helpers import ROOT, SHARED_DATA, chinese_lines
from llm_foundry import CharTokenizer, Generator, MiniLLM, ModelConfig
from llm_foundry.config import TrainConfig
from llm_foundry.online import OnlineLearner, ReplayStore
from llm_foundry.online.learner import VOCAB_CHUNK, vocab_capacity
from llm_foundry.online.replay import HEADER, INDEX_FILE, LOG_FILE, OFFSET, TYPED_FILE
from llm_foundry.online.repl import Repl
from llm_foundry.online.state import StateLock
from llm_foundry.training import EMA, build_optimizers
from llm_foundry.training.optim import replace_parameter
from llm_foundry.utils.errors import FoundryError

TAUGHT = "我的名字叫小明。"
# A small model for everything that is not an acceptance run of the tinygpt preset.
SMALL = ["model.dim=32", "model.n_layers=1", "model.n_heads=2", "model.max_seq_len=64"]


def small_learner(state: Path, *extra: str, **settings) -> OnlineLearner:
    return OnlineLearner.open(state, preset="tiny", overrides=[*SMALL, *extra], settings=settings, device="cpu")


def run_repl(learner: OnlineLearner, *lines: str, **kwargs) -> str:
    out = io.StringIO()
    Repl(learner, stdin=io.StringIO("".join(line + "\n" for line in lines)), stdout=out, interactive=False,
         **kwargs).run()
    return out.getvalue()


def gen_line(output: str, prefix: str) -> str:
    """The line of REPL output that /gen PREFIX printed."""
    lines = [line for line in output.splitlines() if line.startswith(prefix)]
    assert lines, output
    return lines[-1]


# ------------------------------------------------------------------ core helpers
def test_replace_parameter_carries_and_grows_optimizer_state():
    cfg = ModelConfig(vocab_size=8, dim=16, n_layers=1, n_heads=2, max_seq_len=16)
    model = MiniLLM(cfg)
    opts = build_optimizers(model, TrainConfig(optimizer="muon"))
    x = torch.randint(0, 8, (2, 8))
    model(x, x)[1].backward()
    for opt in opts:
        opt.step()
    old = model.tok_embeddings.weight
    adam = opts[0]
    moments = {k: v.clone() for k, v in adam.state[old].items()}
    model.resize_vocab(12)
    new = model.tok_embeddings.weight
    assert replace_parameter(opts, old, new)
    assert any(p is new for g in adam.param_groups for p in g["params"])
    assert not any(p is old for g in adam.param_groups for p in g["params"])
    for key in ("exp_avg", "exp_avg_sq"):
        grown = adam.state[new][key]
        assert grown.shape == (12, 16)
        assert torch.equal(grown[:8], moments[key]) and not grown[8:].any()
    # Muon's momentum grows the same way (any optimizer, any state tensor shaped like the param).
    muon = opts[1]
    w = muon.param_groups[0]["params"][0]
    buf = muon.state[w]["momentum_buffer"].clone()
    bigger = torch.nn.Parameter(torch.cat([w.detach(), torch.zeros(3, w.shape[1])]))
    assert replace_parameter([muon], w, bigger)
    assert torch.equal(muon.state[bigger]["momentum_buffer"][:w.shape[0]], buf)
    with pytest.raises(ValueError):
        replace_parameter([muon], bigger, torch.nn.Parameter(torch.zeros(2, 2)))


def test_ema_follows_a_grown_model():
    model = MiniLLM(ModelConfig(vocab_size=8, dim=16, n_layers=1, n_heads=2, max_seq_len=16))
    ema = EMA(model, 0.9)
    with torch.no_grad():
        model.tok_embeddings.weight.add_(1.0)
    ema.update(model)
    before = ema.shadow["tok_embeddings.weight"].clone()
    model.resize_vocab(10)
    ema.resize_like(model)
    grown = ema.shadow["tok_embeddings.weight"]
    assert grown.shape == (10, 16)
    assert torch.equal(grown[:8], before)
    assert torch.equal(grown[8:], model.tok_embeddings.weight[8:].detach())
    ema.update(model)  # shapes agree, so updating works


def test_generator_never_emits_spare_vocabulary_rows():
    tok = CharTokenizer("ab")
    model = MiniLLM(ModelConfig(vocab_size=64, dim=16, n_layers=1, n_heads=2, max_seq_len=32))
    with torch.no_grad():
        model.tok_embeddings.weight[tok.vocab_size:] *= 100  # spare rows would win every argmax
    out = Generator(model, tok, precision="fp32").generate("ab", max_new_tokens=10, temperature=0)
    assert len(out) == 10 and set(out) <= {"a", "b"}


# ------------------------------------------------------------------ replay store
def test_store_appends_reads_and_reopens(tmp_path):
    texts = [f"line {i} · 第{i}行 🙂" for i in range(300)]
    with ReplayStore(tmp_path / "s", cache_bytes=2000) as store:
        for i, t in enumerate(texts):
            assert store.append(t, typed=i % 3 == 0) == i
        assert len(store) == 300 and store.typed_count == 100
        assert store.cached_bytes <= 2000
        assert store[0] == texts[0] and store[150] == texts[150] and store[-1] == texts[-1]  # disk and cache
        assert store.payload_bytes == sum(len(t.encode()) for t in texts)
        with pytest.raises(FoundryError):
            store.append("")
    with ReplayStore(tmp_path / "s", cache_bytes=2000) as store:
        assert [store[i] for i in range(300)] == texts
        assert list(store.iter_records(290)) == texts[290:]
        assert [store.typed_record(j) for j in range(3)] == [0, 3, 6]
        assert not any(store.recovered.values())


def test_store_memory_is_bounded(tmp_path):
    with ReplayStore(tmp_path / "s", cache_bytes=10_000) as store:
        for i in range(20_000):
            store.append(f"record number {i:06d}")
        assert store.cached_bytes <= 10_000
        assert len(store._cache) <= 2 * (10_000 // 20) + 1100  # the list is compacted as it goes
        assert store[12_345] == "record number 012345"


def test_torn_last_record_is_dropped_and_earlier_ones_survive(tmp_path):
    path = tmp_path / "s"
    with ReplayStore(path) as store:
        for t in ("one", "two", "three"):
            store.append(t, typed=True)
    log = path / LOG_FILE
    good_size = log.stat().st_size
    # A kill in the middle of the fourth record: its header and half its payload.
    payload = "四五六七八九".encode()
    with open(log, "ab") as f:
        f.write(HEADER.pack(len(payload), 12345, 1) + payload[:7])
    with ReplayStore(path) as store:
        assert [store[i] for i in range(len(store))] == ["one", "two", "three"]
        assert store.recovered["truncated_bytes"] == HEADER.size + 7
        assert log.stat().st_size == good_size
        store.append("four")  # appending after the cut works
    with ReplayStore(path) as store:
        assert [store[i] for i in range(len(store))] == ["one", "two", "three", "four"]


def test_index_entry_of_a_torn_record_and_unindexed_records(tmp_path):
    path = tmp_path / "s"
    with ReplayStore(path) as store:
        for t in ("a1", "b2", "c3"):
            store.append(t, typed=True)
    idx, typed, log = path / INDEX_FILE, path / TYPED_FILE, path / LOG_FILE
    idx_bytes, typed_bytes = idx.read_bytes(), typed.read_bytes()
    # Kill between writing the log and the index: the last record is whole but unindexed.
    idx.write_bytes(idx_bytes[:-OFFSET.size])
    typed.write_bytes(typed_bytes[:-OFFSET.size])
    with ReplayStore(path) as store:
        assert len(store) == 3 and store[2] == "c3" and store.typed_count == 3
        assert store.recovered["reindexed_records"] == 1
    # Power loss: the index got an entry, the record it points at is garbage; plus a torn index entry.
    with open(log, "ab") as f:
        f.write(b"\x00" * 5)
    with open(idx, "ab") as f:
        f.write(OFFSET.pack(log.stat().st_size - 5) + b"\x01\x02")
    with open(typed, "ab") as f:
        f.write(OFFSET.pack(3))
    with ReplayStore(path) as store:
        assert [store[i] for i in range(len(store))] == ["a1", "b2", "c3"]
        assert store.typed_count == 3
        assert store.recovered["dropped_index_entries"] == 1 and store.recovered["dropped_typed_entries"] == 1


def test_sampling_mixes_recent_history_and_typed(tmp_path):
    import random

    with ReplayStore(tmp_path / "s") as store:
        for i in range(1000):
            store.append(f"r{i}", typed=i < 5)
        rng = random.Random(0)
        starts = store.sample_starts(20_000, rng, recent_ratio=0.2, recent_records=10)
        recent = sum(s >= 990 for s in starts) / len(starts)
        assert 0.18 < recent < 0.23  # 20% recent + 1% of the uniform draws
        starts = store.sample_starts(20_000, rng, recent_ratio=0.2, recent_records=10, typed_ratio=0.5)
        typed = sum(s < 5 for s in starts) / len(starts)
        assert 0.37 < typed < 0.43  # 80% history x 50% typed
        assert store.sample_starts(3, rng, recent_ratio=0.0) and all(0 <= s < 1000 for s in starts)


# ----------------------------------------------------------------------- learner
@pytest.mark.parametrize("extra", [(), ("optimizer=muon", "model.tie_embeddings=false")], ids=["adamw-tied", "muon-untied"])
def test_character_first_seen_after_growth_learns(tmp_path, extra):
    learner = small_learner(tmp_path / "s", *extra)
    try:
        learner.learn("abc", steps=2)
        assert learner.model.cfg.vocab_size == VOCAB_CHUNK
        learner.learn("".join(chr(0x4E00 + i) for i in range(70)), steps=2)  # 76 ids > 64 rows: grow
        assert learner.model.cfg.vocab_size == vocab_capacity(learner.tokenizer.vocab_size) == 2 * VOCAB_CHUNK
        emb = learner.model.tok_embeddings.weight
        adam = learner.optimizers[0]
        assert any(p is emb for g in adam.param_groups for p in g["params"]), "optimizer holds a stale embedding"
        # A character first seen after the growth (it lands in the headroom: no reallocation).
        learner.observe("🙂")
        assert learner.model.tok_embeddings.weight is emb
        new_id = learner.tokenizer.stoi["🙂"]
        row_before = emb[new_id].detach().clone()
        ema_before = learner.ema.shadow["tok_embeddings.weight"][new_id].clone()
        learner.learn("🙂 a 🙂 b 🙂", steps=5)
        state = adam.state[learner.model.tok_embeddings.weight]
        assert state["exp_avg"][new_id].abs().sum() > 0
        assert state["exp_avg_sq"][new_id].abs().sum() > 0
        assert not torch.equal(learner.model.tok_embeddings.weight[new_id].detach(), row_before)
        assert not torch.equal(learner.ema.shadow["tok_embeddings.weight"][new_id], ema_before)
        if learner.model.cfg.tie_embeddings is False:
            head = learner.model.output.weight
            assert any(p is head for g in adam.param_groups for p in g["params"])
            assert adam.state[head]["exp_avg"][new_id].abs().sum() > 0
    finally:
        learner.close()


def test_batches_never_target_pad(tmp_path):
    learner = small_learner(tmp_path / "s")
    try:
        for t in ("short", "a somewhat longer line of text", "x" * 200):  # one longer than the context
            learner.add(t)
        for _ in range(20):
            x, y = learner.batch()
            assert x.shape == y.shape and x.shape[1] <= learner.seq_len
            assert not (y == learner.pad_id).any() and not (y == learner.unk_id).any()
            assert (y[x == learner.pad_id] == -100).all()
            assert (y != -100).any()
    finally:
        learner.close()


def test_compiled_learner_pads_batches_to_few_widths(tmp_path):
    """With train.compile each new batch width recompiles the blocks: widths are powers of two."""
    learner = small_learner(tmp_path / "s", "train.compile=true")
    try:
        assert learner.compiled
        learner.add("ab")
        assert learner.batch()[0].shape[1] == 32  # at least 32, though the window is 3 wide
        learner.add("x" * 40)
        widths = {learner.batch()[0].shape[1] for _ in range(30)}
        assert widths <= {32, 64} and 64 in widths  # 64 = the context, the cap
    finally:
        learner.close()
    eager = small_learner(tmp_path / "e")
    try:
        assert not eager.compiled
        eager.add("ab")
        assert eager.batch()[0].shape[1] == 3  # eager: the window's own width (separator, a, b)
    finally:
        eager.close()


def test_compiled_learner_without_a_compiler_trains_eagerly(tmp_path, capsys):
    learner = small_learner(tmp_path / "s", "train.compile=true", steps=3)
    try:
        def broken(*args, **kwargs):
            raise RuntimeError("no C++ compiler")

        for layer in learner.model.layers:
            layer._compiled_call_impl = broken  # what a failing compile raises at the first call
        result = learner.learn("hello there")
        assert result.steps == 3 and math.isfinite(result.loss) and learner.step == 3
        assert not learner.compiled
        assert "training uncompiled (RuntimeError: no C++ compiler)" in capsys.readouterr().err
        assert learner.learn("and again").steps == 3  # no second warning, no compile
        assert "uncompiled" not in capsys.readouterr().err
    finally:
        learner.close()


def test_schedule_warms_up_then_stays_and_is_saved(tmp_path):
    learner = small_learner(tmp_path / "s", "warmup_steps=10")
    try:
        factors = [learner.lr_factor(s) for s in range(12)]
        assert factors[:10] == sorted(factors[:10]) and factors[0] < 0.2 and factors[9] == 1.0
        assert learner.lr_factor(10**9) == 1.0  # never decays to a floor
        learner.learn("hello world", steps=15)
        assert learner.step == 15
        learner.save()
    finally:
        learner.close()
    learner = small_learner(tmp_path / "s")
    try:
        assert learner.step == 15 and learner.train_cfg.warmup_steps == 10
        assert learner.optimizers[0].param_groups[0]["lr"] == pytest.approx(learner.train_cfg.lr)  # no new warmup
    finally:
        learner.close()
    with pytest.raises(FoundryError, match="constant"):
        small_learner(tmp_path / "other", "schedule=cosine")


def test_ema_is_loaded_after_the_checkpoint(tmp_path):
    state = tmp_path / "s"
    learner = small_learner(state, temperature=0.0)
    try:
        for line in ("the cat sat on the mat", "the dog sat on the log"):
            learner.learn(line, steps=30)
        text = learner.generate("the ", max_new_tokens=30)
        shadow = {k: v.clone() for k, v in learner.ema.shadow.items()}
        raw = {k: v.clone() for k, v in learner.model.state_dict().items()}
        moments = learner.optimizers[0].state[learner.model.tok_embeddings.weight]["exp_avg"].clone()
        learner.save()
    finally:
        learner.close()
    learner = small_learner(state)
    try:
        assert learner.settings.temperature == 0.0
        for k, v in shadow.items():
            assert torch.equal(learner.ema.shadow[k], v), k
        for k, v in raw.items():
            assert torch.equal(learner.model.state_dict()[k], v), k
        assert not torch.equal(shadow["tok_embeddings.weight"], raw["tok_embeddings.weight"])  # EMA != raw here
        assert torch.equal(learner.optimizers[0].state[learner.model.tok_embeddings.weight]["exp_avg"], moments)
        assert learner.generate("the ", max_new_tokens=30) == text
        # The saved model folder is a normal one, holding the EMA weights.
        from llm_foundry.models import load_model_dir

        bundle = load_model_dir(state / "model")
        assert torch.equal(bundle.model.tok_embeddings.weight, shadow["tok_embeddings.weight"])
    finally:
        learner.close()


def test_save_is_atomic_across_a_crash(tmp_path):
    state = tmp_path / "s"
    learner = small_learner(state)
    try:
        learner.learn("first", steps=2)
        learner.save()
        learner.learn("second", steps=2)
        step2 = learner.step
    finally:
        learner.close()
    # A save killed while writing its new folder: the last whole save is used, the debris removed.
    for debris in (".model.tmp", "model.new"):  # this version's, and the one of the saves before it
        (state / debris).mkdir()
        (state / debris / "config.json").write_text("{trunc")
    learner = small_learner(state)
    try:
        assert learner.step == 2 and not (state / "model.new").exists() and not (state / ".model.tmp").exists()
        learner.learn("second", steps=2)
        learner.save()
        assert sorted(p.name for p in state.iterdir() if "model" in p.name) == ["model"]
    finally:
        learner.close()
    # Killed between the two renames of a swap: a whole new folder and the old one, no model.
    for new, old in ((".model.new", ".model.old"), ("model.new", "model.old")):
        os.replace(state / "model", state / new)
        shutil.copytree(state / new, state / old)
        learner = small_learner(state)
        try:
            assert learner.step == step2 and (state / "model").is_dir()
            assert sorted(p.name for p in state.iterdir() if "model" in p.name) == ["model"]
        finally:
            learner.close()


def test_state_folder_of_the_previous_layout_opens(tmp_path):
    """A state folder saved before the learner used the shared training state and folder swap
    (``training_state.pt`` of its own layout, counters in ``online.json``; a kill between the
    two renames of its save left ``model.new`` and ``model.old``) loads exactly."""
    from safetensors.torch import load_file

    from llm_foundry.models.model_dir import save_model_dir

    state = tmp_path / "s"
    learner = small_learner(state, steps=3)
    try:
        for line in ("the cat sat", "on the mat ω"):
            learner.learn(line)
        ema, model, rng = learner.ema, learner.model, learner.rng
        folder = state / "model.new"  # what the previous save wrote, key by key
        folder.mkdir()
        torch.save({"step": learner.step, "optimizers": [opt.state_dict() for opt in learner.optimizers],
                    "ema": ema.state_dict(), "raw_weights": model.state_dict(),
                    "rng": {"torch": torch.get_rng_state(), "python": list(rng.getstate()[1]),
                            "python_version": rng.getstate()[0]}}, folder / "training_state.pt")
        save_model_dir(folder, model, learner.tokenizer, learner.step,
                       weights={k: ema.shadow.get(k, v) for k, v in model.state_dict().items()})
        (folder / "online.json").write_text(json.dumps({
            "format": "llm_foundry.online", "version": 1, "step": learner.step,
            "train": dataclasses.asdict(learner.train_cfg), "settings": dataclasses.asdict(learner.settings),
            "records_seen": 2, "store_id": learner.store.id, "losses": list(learner.losses), "saved_at": 0.0}))
        shutil.copytree(folder, state / "model.old")  # the save before (here: the same)
        expected = {"step": learner.step, "raw": {k: v.clone() for k, v in model.state_dict().items()},
                    "shadow": {k: v.clone() for k, v in ema.shadow.items()}, "python": rng.getstate(),
                    "torch": torch.get_rng_state(),
                    "moments": learner.optimizers[0].state[model.tok_embeddings.weight]["exp_avg"].clone(),
                    "losses": list(learner.losses)}
        learner.add("stored after that save: ψ")
    finally:
        learner.store.close()
        learner._lock.release()  # killed: no save of this version
    learner = small_learner(state)
    try:
        assert sorted(p.name for p in state.iterdir() if "model" in p.name) == ["model"]
        assert learner.step == expected["step"] == 6 and learner.settings.steps == 3
        assert learner.records_seen == 3 and "ψ" in learner.tokenizer.stoi  # counters from online.json, then caught up
        assert list(learner.losses) == pytest.approx(expected["losses"])
        for k, v in expected["raw"].items():
            assert torch.equal(learner.model.state_dict()[k][:len(v)], v), k
        for k, v in expected["shadow"].items():
            assert torch.equal(learner.ema.shadow[k][:len(v)], v), k
        assert torch.equal(learner.optimizers[0].state[learner.model.tok_embeddings.weight]["exp_avg"][
            :len(expected["moments"])], expected["moments"])
        assert learner.rng.getstate() == expected["python"] and torch.equal(torch.get_rng_state(), expected["torch"])
        learner.learn("and on", steps=2)
        learner.save()  # the new layout from here on
    finally:
        learner.close()
    saved = torch.load(state / "model" / "training_state.pt", weights_only=True)
    assert saved["format"] == 2 and saved["extra"]["records_seen"] == 4
    assert "records_seen" not in json.loads((state / "model" / "online.json").read_text(encoding="utf-8"))
    assert load_file(state / "model" / "model.safetensors")  # a normal model folder
    learner = small_learner(state)
    try:
        assert learner.step == 8 and learner.records_seen == 4
    finally:
        learner.close()


def test_inputs_stored_after_the_last_save_join_the_vocabulary(tmp_path):
    state = tmp_path / "s"
    learner = small_learner(state)
    try:
        learner.learn("abc", steps=1)
        learner.save()
        learner.add("xyzω")  # stored durably, then the process dies before any save
    finally:
        learner.store.close()
        learner._lock.release()
    learner = small_learner(state)
    try:
        assert "ω" in learner.tokenizer.stoi and len(learner.store) == 2
        x, y = learner.batch()
        assert not (x == learner.unk_id).any()
    finally:
        learner.close()


def test_state_folder_is_locked(tmp_path):
    learner = small_learner(tmp_path / "s")
    try:
        with pytest.raises(FoundryError, match="in use"):
            small_learner(tmp_path / "s")
    finally:
        learner.close()
    small_learner(tmp_path / "s").close()  # closing let go of it


LOCK_HOLDER = """
import sys
from pathlib import Path
from llm_foundry.online.state import StateLock
lock = StateLock(Path(sys.argv[1]), sys.argv[2])
print("held", flush=True)
sys.stdin.read()
"""


@pytest.mark.parametrize("kind", [k for k in ("fcntl", "msvcrt", "pidfile")
                                  if k == "pidfile" or importlib.util.find_spec(k)])
def test_lock_keeps_a_second_process_out_until_the_first_dies(tmp_path, kind):
    holder = subprocess.Popen([sys.executable, "-c", LOCK_HOLDER, str(tmp_path), kind], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline() == "held\n"
        with pytest.raises(FoundryError, match="in use by another") as err:
            StateLock(tmp_path, kind)
        assert "\n" not in str(err.value) and (kind == "msvcrt" or f"pid {holder.pid}" in str(err.value))
    finally:
        holder.kill()  # no clean exit: the lock must not outlive its process
        holder.wait()
        holder.stdout.close()
        holder.stdin.close()
    lock = StateLock(tmp_path, kind)  # the pidfile kind takes over the dead pid's file
    assert lock.held
    lock.release()
    assert not lock.held and (kind != "pidfile" or not (tmp_path / "lock").exists())


# -------------------------------------------------------------------------- REPL
def test_repl_bad_input_is_one_line_and_loses_nothing(tmp_path):
    state = tmp_path / "s"
    bad = tmp_path / "bad.txt"
    bad.write_bytes("好".encode("gbk") * 10)
    binary = tmp_path / "bin.txt"
    binary.write_bytes(b"\x7fELF\x00\x00\x01")
    learner = small_learner(state, steps=2)
    out = run_repl(learner, "keep me", "/bogus", "/temp=abc", "/topp=0", "/steps=0", f"/load_txt {bad}",
                   f"/load_txt {binary}", f"/load_txt {tmp_path / 'missing.txt'}", f"/train {tmp_path}", "/load_txt",
                   f"/load {tmp_path}", f"/save {bad}", "/reset", "no", "/stats", "/quit")
    errors = [line for line in out.splitlines() if line.startswith("error:")]
    assert len(errors) == 11, out
    assert any("not UTF-8" in e for e in errors) and any("binary" in e for e in errors)
    assert any("not found" in e for e in errors) and any("unknown command /bogus" in e for e in errors)
    assert "reset cancelled" in out and "stored       1 inputs" in out
    learner = small_learner(state)
    try:
        assert len(learner.store) == 1 and learner.store[0] == "keep me" and learner.step == 2
    finally:
        learner.close()


def test_repl_commands_and_settings_persist(tmp_path):
    state = tmp_path / "s"
    data = tmp_path / "poem.txt"
    data.write_text("床前明月光\n\n疑是地上霜\r\n举头望明月\n低头思故乡\n", encoding="utf-8")
    out = run_repl(small_learner(state), "/steps=3", "/temp=0", "/topp=0.5", "hello", "//slash text",
                   f"/load_txt {data}", f"/save {tmp_path / 'snap'}", "/gen 举头", "/help", "/quit", file_steps=0.5)
    assert "learned 4 lines of poem.txt · 2 steps" in out, out
    assert "/load_txt FILE" in out and gen_line(out, "举头")
    learner = small_learner(state)
    try:
        s = learner.settings
        assert (s.steps, s.temperature, s.top_p) == (3, 0.0, 0.5)
        assert [learner.store[i] for i in range(len(learner.store))] == [
            "hello", "/slash text", "床前明月光", "疑是地上霜", "举头望明月", "低头思故乡"]
        assert learner.store.typed_count == 2 and learner.step == 3 + 3 + 2
        assert (tmp_path / "snap" / "online.json").is_file()
        # /reset wipes, after a yes.
        out = run_repl(learner, "/reset", "yes", "/stats", "/quit")
        assert "reset: empty model, empty store" in out and "stored       0 inputs" in out
    finally:
        learner.close()
    learner = small_learner(state)
    try:
        assert len(learner.store) == 0 and learner.step == 0
        # A snapshot loads into the learner; the store stays, its characters join the vocabulary.
        learner.add("新字")
        learner.load(tmp_path / "snap")
        assert learner.step == 8 and "新" in learner.tokenizer.stoi
    finally:
        learner.close()


# -------------------------------------------------------------- acceptance: teach
@pytest.fixture(scope="module")
def taught_state(tmp_path_factory):
    """Issue 4 'Teach': from an empty tinygpt state, the line typed five times."""
    state = tmp_path_factory.mktemp("online") / "state"
    learner = OnlineLearner.open(state, preset="tinygpt", device="cpu")
    assert learner.step == 0 and learner.tokenizer.vocab_size == 3  # PAD, UNK, line separator
    out = run_repl(learner, *[TAUGHT] * 5, "/temp=0", "/gen 我的名字叫", "/quit")
    return state, out


@pytest.mark.slow
def test_acceptance_teach(taught_state):
    _, out = taught_state
    assert out.count("learned · 20 steps") == 5, out
    assert gen_line(out, "我的名字叫").startswith("我的名字叫小明"), out


@pytest.mark.slow
@pytest.mark.trials  # three minutes: `make test-trials`, with the other long acceptance runs
def test_acceptance_remember(taught_state, tmp_path):
    """Issue 4's acceptance: the taught line survives a whole file of poems. With ``../shared`` it is
    tang300.txt and the bound is the issue's (within 2x the loss before); without it, generated verse
    of as many lines, which is harder than real poems, and the bound is that the line stays known by
    heart (every character > 99% likely)."""
    state, _ = taught_state
    tang = SHARED_DATA / "zh" / "tang300.txt"
    if tang.is_file():
        poems = tang
        lines = [line for line in tang.read_text(encoding="utf-8").splitlines() if line.strip()]
    else:
        lines = chinese_lines(2539)  # as many lines as tang300.txt
        poems = tmp_path / "poems.txt"
        poems.write_text("\n".join(lines) + "\n", encoding="utf-8")
    learner = OnlineLearner.open(state, device="cpu")
    before = learner.text_loss(TAUGHT)
    learner.close()
    # 0.3 steps per line (760 steps over 2,539 lines) keeps this test near a minute;
    # every line is stored and replayed all the same.
    out = run_repl(OnlineLearner.open(state, device="cpu"), "/temp=0", f"/load_txt {poems}", "/gen 我的名字叫", "/quit",
                   file_steps=0.3)
    assert f"learned {len(lines)} lines of {poems.name}" in out, out
    assert gen_line(out, "我的名字叫").startswith("我的名字叫小明"), out
    learner = OnlineLearner.open(state, device="cpu")
    try:
        after = learner.text_loss(TAUGHT)
        print(f"taught line loss: before the file {before:.5f}, after {after:.5f} (x{after / before:.2f}); "
              f"whole line incl. its first character after: {learner.text_loss(TAUGHT, given=0):.4f}")
        if poems == tang:
            assert after <= 2 * before, (before, after)
        else:
            assert after < 0.01, (before, after)
        assert len(learner.store) == 5 + len(lines) and learner.store.typed_count == 5
        assert learner.tokenizer.vocab_size > len(set("".join(lines)))  # every character of the file
    finally:
        learner.close()


# ------------------------------------------------------------ acceptance: survive
class Proc:
    """`foundry online` in a subprocess, fed through a pipe."""

    def __init__(self, state: Path, *args: str):
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        self.p = subprocess.Popen([sys.executable, "-m", "llm_foundry", "online", "--state", str(state), *args, *SMALL],
                                  stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                  encoding="utf-8", env=env, cwd=ROOT)
        self.expect("/help for commands")

    def send(self, line: str) -> None:
        self.p.stdin.write(line + "\n")
        self.p.stdin.flush()

    def expect(self, fragment: str, timeout: float = 60) -> str:
        deadline = time.monotonic() + timeout
        seen = []
        while time.monotonic() < deadline:
            line = self.p.stdout.readline()
            if not line:
                raise AssertionError(f"process ended before {fragment!r}: {''.join(seen)} {self.p.stderr.read()}")
            seen.append(line)
            if fragment in line:
                return line
        raise AssertionError(f"no {fragment!r} within {timeout}s: {''.join(seen)}")

    def finish(self, timeout: float = 60) -> int:
        try:
            return self.p.wait(timeout)
        finally:
            for f in (self.p.stdin, self.p.stdout, self.p.stderr):
                try:
                    f.close()
                except OSError:
                    pass


def wait_for_training(pid: int, cpu_seconds: float = 0.5, timeout: float = 120) -> None:
    """Wait until process ``pid`` has spent ``cpu_seconds`` more CPU time: a pulse is under way
    (the REPL waiting for input spends none). Polls /proc; where it is missing, returns at once."""
    stat = Path(f"/proc/{pid}/stat")
    if not stat.exists():
        return

    def cpu() -> float:
        fields = stat.read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime + stime

    start, deadline = cpu(), time.monotonic() + timeout
    while cpu() - start < cpu_seconds:
        assert time.monotonic() < deadline, "the pulse never started"
        time.sleep(0.05)


def wait_for_records(state: Path, n: int, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while (state / "replay" / INDEX_FILE).stat().st_size < n * OFFSET.size:
        assert time.monotonic() < deadline, "input never reached the store"
        time.sleep(0.05)


@pytest.mark.slow
def test_acceptance_survive_kill_9_during_a_pulse(tmp_path):
    state = tmp_path / "s"
    proc = Proc(state, "--steps", "3")
    returned = ["第一行 alpha", "第二行 beta"]
    proc.send(returned[0])
    proc.expect("learned · 3 steps")
    proc.send("/save")
    proc.expect("saved")
    proc.send(returned[1])
    proc.expect("learned · 3 steps")
    proc.send("/steps=100000")
    proc.expect("100000 steps")
    proc.send("第三行 gamma ω")  # a pulse of 100,000 steps: certainly still running when killed
    wait_for_records(state, 3)
    wait_for_training(proc.p.pid)
    proc.p.kill()  # SIGKILL
    assert proc.finish() == -signal.SIGKILL
    learner = small_learner(state)
    try:
        stored = [learner.store[i] for i in range(len(learner.store))]
        assert stored[:2] == returned  # every input whose prompt came back
        assert stored[2:] == ["第三行 gamma ω"]  # stored before its pulse began
        assert learner.step == 3  # the model of the last save loads
        assert "ω" in learner.tokenizer.stoi  # characters stored after that save are caught up
    finally:
        learner.close()
    proc = Proc(state)
    proc.send("第四行 delta")
    proc.expect("learned · 3 steps")  # training goes on (the settings of the last save)
    proc.send("/quit")
    proc.expect("saved")
    assert proc.finish() == 0
    learner = small_learner(state)
    try:
        assert len(learner.store) == 4 and learner.step == 6
    finally:
        learner.close()


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_signals_save_the_state(tmp_path, sig):
    state = tmp_path / "s"
    proc = Proc(state, "--steps", "2")
    proc.send("before the signal")
    proc.expect("learned · 2 steps")
    if sig == signal.SIGINT:  # during a pulse: it stops at a step boundary, then saves
        proc.send("/steps=100000")
        proc.expect("100000 steps")
        proc.send("during a long pulse")
        wait_for_records(state, 2)
        wait_for_training(proc.p.pid)
    proc.p.send_signal(sig)
    proc.expect("saved")
    assert proc.finish() == 128 + sig
    learner = small_learner(state)
    try:
        assert learner.step >= 2 and len(learner.store) == (2 if sig == signal.SIGINT else 1)
        saved = json.loads((state / "model" / "online.json").read_text(encoding="utf-8"))
        assert saved["step"] == learner.step
    finally:
        learner.close()


# ------------------------------------------------------------ acceptance: terminal
class Tmux:
    def __init__(self, tmp_path: Path):
        self.socket = f"foundry-test-{os.getpid()}-{tmp_path.name}"
        self.session = "online"

    def cmd(self, *args: str) -> str:
        return subprocess.run(["tmux", "-L", self.socket, *args], capture_output=True, text=True, check=True).stdout

    def screen(self) -> str:
        return self.cmd("capture-pane", "-p", "-J", "-S", "-200", "-t", self.session)

    def wait(self, predicate, what: str, timeout: float = 60) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            text = self.screen()
            if predicate(text):
                return text
            time.sleep(0.2)
        raise AssertionError(f"terminal never showed {what}:\n{self.screen()}")

    def type(self, text: str, enter: bool = True) -> None:
        self.cmd("send-keys", "-t", self.session, "-l", text)
        if enter:
            self.cmd("send-keys", "-t", self.session, "Enter")

    def keys(self, *keys: str) -> None:
        self.cmd("send-keys", "-t", self.session, *keys)


@pytest.mark.skipif(shutil.which("tmux") is None, reason="tmux is not installed (apt-get install tmux); "
                    "the real-terminal test drives `foundry online` through it")
@pytest.mark.slow
def test_acceptance_real_terminal_through_tmux(tmp_path):
    state = tmp_path / "s"
    poem = tmp_path / "poem.txt"
    poem.write_text("".join(f"第{i}行 line {i}\n" for i in range(30)), encoding="utf-8")
    tmux = Tmux(tmp_path)
    cmd = " ".join([sys.executable, "-m", "llm_foundry", "online", "--state", str(state), "--steps", "3",
                    "--file-steps", "0.2", *SMALL]) + "; echo FOUNDRY-EXITED-$?; sleep 600"
    env = ["-e", "LANG=C.UTF-8", "-e", "TERM=xterm-256color", "-e", f"HOME={tmp_path}"]
    tmux.cmd("-u", "new-session", "-d", "-s", tmux.session, "-x", "160", "-y", "50", *env, cmd)
    try:
        tmux.wait(lambda s: "/help for commands" in s and re.search(r"(?m)^>( |$)", s), "the banner and prompt")
        tmux.type("hello from a terminal 终端")
        tmux.wait(lambda s: "learned · 3 steps" in s, "a pulse after a typed line")
        # Line editing: type a wrong command, erase it with Ctrl-U, type the right one.
        tmux.type("/wrong command", enter=False)
        tmux.keys("C-u")
        tmux.type("/stats")
        tmux.wait(lambda s: "stored       1 inputs" in s, "/stats")
        assert "unknown command /wrong" not in tmux.screen()
        # History: Up recalls /stats.
        tmux.keys("Up")
        tmux.keys("Enter")
        tmux.wait(lambda s: s.count("stored       1 inputs") == 2, "/stats recalled from history")
        tmux.type(f"/load_txt {poem}")
        tmux.wait(lambda s: "learned 30 lines of poem.txt · 6 steps" in s, "a file learned line by line")
        tmux.type("/temp=0")
        tmux.type("/gen hello")
        tmux.wait(lambda s: "\nhello" in s, "a generation")
        tmux.type("/quit")
        tmux.wait(lambda s: "FOUNDRY-EXITED-0" in s, "a clean exit")
        assert "Traceback" not in tmux.screen()
        assert (state / "history").is_file() and "/stats" in (state / "history").read_text(encoding="utf-8")
    finally:
        subprocess.run(["tmux", "-L", tmux.socket, "kill-server"], capture_output=True)
    learner = small_learner(state)
    try:
        assert len(learner.store) == 31 and learner.step == 3 + 6
    finally:
        learner.close()


def test_cli_rejects_a_new_shape_for_an_existing_state(tmp_path):
    from helpers import run_cli

    learner = small_learner(tmp_path / "s")
    learner.learn("x", steps=1)
    learner.save()
    learner.close()
    proc = run_cli("online", "--state", tmp_path / "s", *SMALL[:-1], "model.max_seq_len=128")
    assert proc.returncode == 1 and proc.stderr.startswith("error:") and "model.max_seq_len" in proc.stderr, proc.stderr
    assert "\n" not in proc.stderr.strip()


def test_cli_second_learner_on_a_state_gets_one_line_until_the_first_exits(tmp_path):
    from helpers import one_line_error, run_cli

    state = tmp_path / "s"
    first = Proc(state)  # a real `foundry online` holding the folder
    try:
        second = run_cli("online", "--state", state, *SMALL, timeout=120)
        one_line_error(second, "in use by another `foundry online`", f"pid {first.p.pid}")
        first.send("/quit")
        assert first.finish() == 0
    finally:
        if first.p.poll() is None:
            first.p.kill()
            first.finish()
    small_learner(state).close()  # the lock went with the process


def test_foundry_online_runs_where_fcntl_is_missing(tmp_path):
    # As on a platform with neither fcntl nor msvcrt: the pid lock file, removed at the end.
    blocked = ("import runpy, sys; sys.modules['fcntl'] = sys.modules['msvcrt'] = None; "
               "sys.argv[0] = 'foundry'; runpy.run_module('llm_foundry', run_name='__main__')")
    proc = subprocess.run([sys.executable, "-c", blocked, "online", "--state", str(tmp_path / "s"), "--steps", "2",
                           "--preset", "tiny", *SMALL], input="hello there\n/quit\n", capture_output=True, text=True,
                          encoding="utf-8", timeout=120, cwd=ROOT)
    assert proc.returncode == 0 and "saved" in proc.stdout, proc.stdout + proc.stderr
    assert not (tmp_path / "s" / "lock").exists()
    learner = small_learner(tmp_path / "s")
    try:
        assert len(learner.store) == 1 and learner.step == 2
    finally:
        learner.close()
