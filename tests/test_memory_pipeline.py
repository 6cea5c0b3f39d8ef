"""The memory pipeline end to end on a tiny config: backbone, init, the four stages (exact resume),
ask (edits visible at once), eval; bad input is one line; the backbone's weights never change.

Everything is tiny (a 4-block width-64 backbone, a few steps per stage): these tests check that
the commands work and keep their promises, not the quality figures (the lead runs the cpu preset).
"""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
from pathlib import Path

import pytest
import torch

from helpers import one_line_error, run_cli, run_main
from llm_foundry.utils.errors import FoundryError, TrainingInterrupted

TINY = """
world: {seed: 0, n_train: 4, n_memory_only: 3, n_modules_only: 2, langs: [en, zh], distractors: 20}
backbone:
  model: {dim: 64, n_layers: 4, n_heads: 4, max_seq_len: 128}
  train: {max_steps: 6, batch_size: 4, lr: 3.0e-3, warmup_steps: 2, eval_interval: 0, checkpoint_interval: 3,
          device: cpu, precision: fp32}
modules: {k: 2, proj_dim: 32, max_len: 32}
router: {steps: 4, batch_size: 8, checkpoint_interval: 2, refresh: 2}  # re-encodes its bank at steps 0 and 2
fusion: {steps: 4, batch_size: 4, checkpoint_interval: 2}
joint: {steps: 4, batch_size: 4, checkpoint_interval: 2}
memory: {steps: 4, batch_size: 4, checkpoint_interval: 2}
eval: {store_size: 60, questions: 6, edits: 3, max_tokens: 8}
"""


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def build_tiny(root: Path) -> dict[str, Path]:
    """In ``root``: a tiny preset file, a backbone trained with it (`foundry memory backbone`) and a fresh
    memory folder for that backbone."""
    from llm_foundry.config.memory import load_memory_config
    from llm_foundry.memory.pipeline import init_memory, train_backbone

    preset = root / "tiny.yaml"
    preset.write_text(TINY)
    cfg = load_memory_config(str(preset))
    train_backbone(root / "backbone", cfg, quiet=True)
    init_memory(root / "backbone", root / "fresh", cfg).close()
    return {"root": root, "preset": preset, "backbone": root / "backbone", "fresh": root / "fresh"}


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> dict[str, Path]:
    return build_tiny(tmp_path_factory.mktemp("mempipe"))


def fresh_copy(tiny, name: str) -> Path:
    dst = tiny["root"] / name
    shutil.rmtree(dst, ignore_errors=True)
    shutil.copytree(tiny["fresh"], dst)
    return dst


# ---------------------------------------------------------------- config
def test_presets_load_and_bad_keys_are_one_line():
    from llm_foundry.config.memory import list_memory_presets, load_memory_config

    assert {"cpu", "gpu"} <= set(list_memory_presets())
    cfg = load_memory_config("cpu", ["router.steps=7", "world.n_train=5"])
    assert cfg.router.steps == 7 and cfg.world.n_train == 5 and cfg.device == "cpu"
    assert load_memory_config("gpu").device == "cuda"
    with pytest.raises(FoundryError, match="did you mean 'router.steps'"):
        load_memory_config("cpu", ["router.stepz=7"])
    with pytest.raises(FoundryError, match="fusion.missing"):
        load_memory_config("cpu", ["fusion.missing=1.5"])
    with pytest.raises(FoundryError, match="joint.schedule must be cosine or constant"):
        load_memory_config("cpu", ["joint.schedule=linear"])
    assert load_memory_config("cpu", ["router.schedule=constant"]).router.schedule == "constant"
    with pytest.raises(FoundryError, match="unknown memory preset"):
        load_memory_config("nope")


# ---------------------------------------------------------------- backbone
def test_backbone_corpus_holds_train_entities_only():
    from llm_foundry.memory.facts import build_world
    from llm_foundry.memory.pipeline import backbone_corpus

    world = build_world(0, 5, 5, n_modules_only=5)
    text = "".join(backbone_corpus(world))
    assert all(f.text in text for f in world.facts("train"))
    assert not any(f.subject in text for s in ("memory_only", "modules_only") for f in world.facts(s))
    # The held-out question phrasings never appear: "held-out phrasings" measures something new.
    held = world.questions("train", phrasing="heldout")
    assert held and not any(q.question in text for q in held)


def test_backbone_command_makes_a_model_folder(tiny, capsys):
    from llm_foundry.memory.backbone import Backbone

    backbone = Backbone.load(tiny["backbone"])
    assert backbone.n_layers == 4 and backbone.dim == 64
    again = run_main(capsys, "memory", "backbone", "--out", tiny["backbone"], "--preset", tiny["preset"])
    assert again.returncode == 1 and "already holds a run" in again.stderr


# ---------------------------------------------------------------- init
def test_init_refuses_bad_input_in_one_line(tiny, tmp_path):
    one_line_error(run_cli("memory", "init", "--backbone", tiny["backbone"], "--out", tiny["fresh"],
                           "--preset", tiny["preset"]), "already exists")
    one_line_error(run_cli("memory", "init", "--backbone", tmp_path / "missing", "--out", tmp_path / "m"),
                   "backbone folder not found")
    gpt2 = tmp_path / "gpt2"
    gpt2.mkdir()
    (gpt2 / "config.json").write_text(json.dumps({"model_type": "gpt2"}))
    one_line_error(run_cli("memory", "init", "--backbone", gpt2, "--out", tmp_path / "m"), "unsupported")
    assert not (tmp_path / "m").exists()


def test_init_starts_as_the_backbone(tiny):
    from llm_foundry.memory.model import MODULES_FILE
    from llm_foundry.memory.pipeline import CONFIG_FILE, open_memory

    assert (tiny["fresh"] / MODULES_FILE).is_file() and (tiny["fresh"] / CONFIG_FILE).is_file()
    memory = open_memory(tiny["fresh"])
    try:
        model = memory.model
        ids = torch.tensor([model.backbone.tokenizer.encode("Where was Vel born? ")])
        found = model.read([["Vel was born in Oslo.", "Ana lives in Lima."]])
        assert torch.equal(model(ids, found), model(ids))  # the fusion's output projection starts at zero
    finally:
        memory.close()


# ---------------------------------------------------------------- train
def test_train_all_leaves_the_backbone_unchanged(tiny, capsys):
    mem = fresh_copy(tiny, "all")
    before = digest(tiny["backbone"] / "model.safetensors")
    modules = digest(mem / "memory_modules.safetensors")
    proc = run_main(capsys, "memory", "train", mem, "--stage", "all", "--json")
    assert proc.returncode == 0, proc.stderr
    results = [json.loads(line) for line in proc.stdout.splitlines()]
    assert [r["stage"] for r in results] == ["router", "fusion", "joint", "memory"]
    assert all(r["step"] == 4 for r in results)
    assert digest(tiny["backbone"] / "model.safetensors") == before
    assert digest(mem / "memory_modules.safetensors") != modules
    again = run_main(capsys, "memory", "train", mem, "--resume", "--json")  # everything finished: nothing to do
    assert again.returncode == 0 and all(json.loads(line)["skipped"] for line in again.stdout.splitlines())


@pytest.mark.parametrize("stage", ["router", "fusion", "joint", "memory"])
def test_stage_resumes_exactly(tiny, stage):
    import os
    import signal

    from llm_foundry.memory.model import MODULES_FILE
    from llm_foundry.memory.pipeline import train_memory

    full, cut = fresh_copy(tiny, f"full-{stage}"), fresh_copy(tiny, f"cut-{stage}")
    train_memory(full, [stage], quiet=True)

    def interrupt(step: int, _progress: float) -> None:
        if step == 3:  # after the checkpoint at step 2: the resume must replay step 3 as it was
            os.kill(os.getpid(), signal.SIGINT)

    with pytest.raises(TrainingInterrupted):
        train_memory(cut, [stage], quiet=True, on_step=interrupt)
    train_memory(cut, [stage], resume=True, quiet=True)
    from safetensors.torch import load_file

    a, b = load_file(full / MODULES_FILE), load_file(cut / MODULES_FILE)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_train_bad_input_is_one_line(tiny, tmp_path):
    one_line_error(run_cli("memory", "train", tmp_path / "nowhere"), "not found")
    mem = fresh_copy(tiny, "bad-train")
    one_line_error(run_cli("memory", "train", mem, "--preset", tiny["preset"], "router.stepz=3"), "router.steps")


# ---------------------------------------------------------------- ask
def test_ask_json_and_an_edit_is_visible_to_the_next_question(tiny, capsys):
    from llm_foundry.memory.ask import live_bank
    from llm_foundry.memory.pipeline import open_memory

    mem = fresh_copy(tiny, "ask")
    assert run_main(capsys, "memory", "add", mem, "--text", "Velmora Quist was born in Oslo.",
                    "--text", "Tarsk Works makes kites.").returncode == 0
    proc = run_main(capsys, "memory", "ask", mem, "--question", "Where was Velmora Quist born?",
                    "--question", "What does Tarsk Works make?", "--json")
    assert proc.returncode == 0, proc.stderr
    rows = [json.loads(line) for line in proc.stdout.splitlines()]
    assert [set(r) for r in rows] == [{"question", "answer", "retrieved"}] * 2
    assert all(len(r["retrieved"]) == 2 and "\n" not in r["answer"] for r in rows)
    # Edit, then the next question reads the new text (the cached vectors were refreshed for it).
    assert run_main(capsys, "memory", "update", mem, "1", "--text", "Velmora Quist was born in Lima.").returncode == 0
    memory = open_memory(mem)
    try:
        bank = live_bank(memory.model, memory.store)
        row = bank.row_of[1]
        assert bank.texts[row] == "Velmora Quist was born in Lima."
        fresh = memory.model.gate.encode_entries(["Velmora Quist was born in Lima."])[0]
        assert torch.allclose(bank.index.vectors[row], fresh, atol=1e-6)
    finally:
        memory.close()
    assert run_main(capsys, "memory", "delete", mem, "1").returncode == 0
    proc = run_main(capsys, "memory", "ask", mem, "--question", "Where was Velmora Quist born?", "--json")
    assert json.loads(proc.stdout)["retrieved"] == [2]  # the deleted entry is never read again


def test_ask_without_memory_is_the_backbone(tiny, capsys):
    mem = fresh_copy(tiny, "ask-off")
    run_main(capsys, "memory", "add", mem, "--text", "Velmora Quist was born in Oslo.")
    q = "Where was Velmora Quist born?"
    off = run_main(capsys, "memory", "ask", mem, "--question", q, "--no-memory", "--json")
    assert json.loads(off.stdout)["retrieved"] == []
    from llm_foundry.memory.ask import Answerer
    from llm_foundry.memory.pipeline import open_memory

    memory = open_memory(mem)
    try:  # an untrained fusion adds exactly zero: the answer read with memory is the backbone's
        assert Answerer(memory.model, 8).generate(q + " ", None) == json.loads(off.stdout)["answer"]
    finally:
        memory.close()


def test_ask_bad_input_is_one_line(tiny, tmp_path, capsys):
    mem = fresh_copy(tiny, "ask-bad")
    empty = tmp_path / "q.jsonl"
    empty.write_text("")
    bare = tmp_path / "bare"
    assert run_main(capsys, "memory", "create", bare).returncode == 0  # a store without a model
    for args, fragment in (((mem, "--file", empty), "q.jsonl"), ((mem, "--question", " "), "empty"),
                           ((bare, "--question", "hi?"), "no memory model yet"),
                           ((tmp_path / "none", "--question", "hi?"), "not found"),
                           ((mem, "--question", "hi?", "--hybrid", "2"), "--hybrid")):
        proc = run_main(capsys, "memory", "ask", *args)
        assert proc.returncode == 1 and proc.stderr.startswith("error:") and fragment in proc.stderr, proc.stderr


# ---------------------------------------------------------------- eval
def test_eval_writes_the_table(tiny, capsys):
    mem = fresh_copy(tiny, "eval")
    proc = run_main(capsys, "memory", "eval", mem, "--store-size", "60", "--max-questions", "4", "--json")
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    names = [r["row"] for r in out["rows"]]
    for want in ("backbone alone", "memory (dense)", "oracle (gold entry given)", "in-context RAG (same retriever)",
                 "edit: new value", "edit: old value", "locality (untouched, before edits)", "locality (untouched, after edits)",
                 "delete: original value", "delete: original value, backbone alone",
                 "held-out phrasings", "held-out phrasings (hybrid 0.3)", "unseen relations (hybrid 0.3)"):
        assert want in names
    assert all(0 <= r["exact_match"] <= 1 for r in out["rows"])
    assert out["rows"][0]["exact_match"] <= 0.25  # memory-only entities: the backbone alone is at chance
    assert "| memory (dense) |" in (mem / "eval.md").read_text()
    small = run_main(capsys, "memory", "eval", mem, "--store-size", "5")
    assert small.returncode == 1 and "memory-only facts" in small.stderr


def test_a_changed_backbone_is_refused_in_one_line(tiny, capsys):
    """A memory folder built for one backbone refuses another (here: the same folder, weights changed)."""
    from safetensors.torch import load_file, save_file

    from llm_foundry.memory.store import MemoryStore

    mem = fresh_copy(tiny, "other-backbone")
    other = tiny["root"] / "other-backbone-model"
    shutil.rmtree(other, ignore_errors=True)
    shutil.copytree(tiny["backbone"], other)
    weights = load_file(other / "model.safetensors")
    weights = {k: v + 0.01 for k, v in weights.items()}
    save_file(weights, other / "model.safetensors", metadata={"format": "pt"})
    with MemoryStore.open(mem) as store:
        store.set_meta(backbone=str(other))
    proc = run_main(capsys, "memory", "ask", mem, "--question", "hi?")
    assert proc.returncode == 1 and "another backbone" in proc.stderr and "\n" not in proc.stderr.strip()


def test_train_refuses_another_module_shape(tiny, capsys):
    mem = fresh_copy(tiny, "reshape")
    proc = run_main(capsys, "memory", "train", mem, "--preset", tiny["preset"], "modules.proj_dim=16")
    assert proc.returncode == 1 and "fixed by `init`" in proc.stderr


@pytest.mark.slow
def test_backbone_knows_the_format_but_not_memory_only_facts(tmp_path):
    """A short real backbone run (about 2 minutes on 2 cores): its answers to memory-only questions are values of the asked
    relation (it learned the layout and the vocabulary) but right only at about chance."""
    from llm_foundry.config.memory import load_memory_config
    from llm_foundry.memory.ask import Answerer
    from llm_foundry.memory.backbone import Backbone
    from llm_foundry.memory.facts import RELATION_BY_NAME
    from llm_foundry.memory.model import MemoryModel
    from llm_foundry.memory.pipeline import fact_world, train_backbone

    cfg = load_memory_config("cpu", ["world.n_train=30", "world.n_memory_only=10", "backbone.model.dim=96",
                                     "backbone.model.n_layers=4", "backbone.model.n_heads=4",
                                     "backbone.model.max_seq_len=128", "backbone.train.max_steps=400",
                                     "backbone.train.batch_size=16", "backbone.train.precision=fp32"])
    train_backbone(tmp_path / "bb", cfg, quiet=True)
    answerer = Answerer(MemoryModel(Backbone.load(tmp_path / "bb")), 24)
    asked = fact_world(cfg).questions("memory_only")
    got = [a.answer for a in answerer.ask([q.question for q in asked], None, 1)]
    in_vocab = sum(a in RELATION_BY_NAME[q.relation].values[q.lang] for a, q in zip(got, asked)) / len(asked)
    exact = sum(a == q.answer for a, q in zip(got, asked)) / len(asked)
    assert in_vocab >= 0.4, got[:10]  # (about 0.6 in this run; a random string is never a value)
    assert exact <= 0.2  # chance is 1/4 to 1/70 per relation; about 1/10 on average


def test_ctrl_c_saves_and_exits_cleanly(tiny):
    """A real `foundry memory train` process gets SIGINT mid-stage: it saves, says how to resume, exits 130."""
    import os
    import signal
    import sys
    import time

    from llm_foundry.training.state import load_state

    mem = fresh_copy(tiny, "ctrl-c")
    proc = subprocess.Popen([sys.executable, "-m", "llm_foundry", "memory", "train", str(mem), "--stage", "router",
                             "--preset", str(tiny["preset"]), "router.steps=100000", "router.checkpoint_interval=1"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})
    state = mem / "train" / "router.pt"
    deadline = time.monotonic() + 120
    while not state.is_file() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)  # polling for the first checkpoint, not waiting a fixed time
    assert state.is_file(), proc.communicate(timeout=60)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert "continue with --resume" in err and "Traceback" not in err
    saved = load_state(state)
    assert saved.step >= 1 and not saved.extra["done"]


def test_eval_on_your_own_facts(tiny, tmp_path, capsys):
    mem = fresh_copy(tiny, "eval-user")
    facts, questions = tmp_path / "facts.jsonl", tmp_path / "questions.jsonl"
    facts.write_text('{"text": "Velmora Quist was born in Oslo."}\n'
                     '{"subject": "Tarsk Works", "relation": "makes", "object": "kites"}\n')
    questions.write_text('{"question": "Where was Velmora Quist born?", "answer": "Oslo"}\n'
                         '{"question": "What does Tarsk Works make?", "answer": "kites"}\n')
    proc = run_main(capsys, "memory", "eval", mem, "--facts", facts, "--questions", questions,
                    "--store-size", "30", "--json")
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    assert out["store_size"] == 30
    assert [r["row"] for r in out["rows"]][0] == "backbone alone" and all(r["questions"] == 2 for r in out["rows"])
    alone = run_main(capsys, "memory", "eval", mem, "--facts", facts)
    assert alone.returncode == 1 and "go together" in alone.stderr
    questions.write_text('{"question": "Where?"}\n')
    bad = run_main(capsys, "memory", "eval", mem, "--facts", facts, "--questions", questions)
    assert bad.returncode == 1 and "questions.jsonl:1" in bad.stderr
