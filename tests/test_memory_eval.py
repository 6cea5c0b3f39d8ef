"""The evaluation's later rows (counterfactual entries, perplexity with memory off/on, store-size
scaling) and `foundry chat MODEL --memory MEM`, on the tiny setup of test_memory_pipeline.py.

These check that the measures are computed and keep their promises (an untrained fusion leaves
perplexity exactly unchanged; a scaling store of N entries holds N; chat reads the live store),
not the quality figures (the lead runs the cpu preset).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from helpers import one_line_error, run_cli, run_main
from test_memory_pipeline import build_tiny


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> dict[str, Path]:
    """A tiny backbone, a fresh memory folder for it, and a trained copy (a few steps per stage)."""
    from llm_foundry.memory.pipeline import train_memory

    setup = build_tiny(tmp_path_factory.mktemp("memeval"))
    shutil.copytree(setup["fresh"], setup["root"] / "trained")
    train_memory(setup["root"] / "trained", ["router", "fusion", "joint", "memory"], quiet=True)
    return {**setup, "trained": setup["root"] / "trained"}


def copy(tiny, src: str, name: str) -> Path:
    dst = tiny["root"] / name
    shutil.rmtree(dst, ignore_errors=True)
    shutil.copytree(tiny[src], dst)
    return dst


# ---------------------------------------------------------------- eval rows
def test_eval_adds_counterfactual_perplexity_and_scaling(tiny, capsys):
    mem = copy(tiny, "trained", "eval-all")
    proc = run_main(capsys, "memory", "eval", mem, "--store-size", "60", "--max-questions", "4",
                    "--scales", "80,60", "--json")
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    rows = {r["row"]: r for r in out["rows"]}
    for name in ("counterfactual: memory's value", "counterfactual: memory's value, backbone alone",
                 "counterfactual: trained value"):
        assert rows[name]["questions"] == 4 and 0 <= rows[name]["exact_match"] <= 1
    # The memory's value and the trained value are different answers: at most one is right per question.
    assert rows["counterfactual: memory's value"]["exact_match"] + rows["counterfactual: trained value"]["exact_match"] <= 1
    ppl = out["perplexity"]
    assert ppl["texts"] > 0 and ppl["off"] > 1 and ppl["on"] > 1
    assert ppl["change"] == pytest.approx(ppl["on"] / ppl["off"] - 1, abs=1e-3)
    assert [s["entries"] for s in out["scaling"]] == [60, 80]  # sorted
    assert all(s["questions"] == 4 and s["retrieval_ms"] > 0 and 0 <= s["exact_match"] <= 1 for s in out["scaling"])
    report = (mem / "eval.md").read_text()
    assert "| counterfactual: memory's value |" in report and "Perplexity of memory-free text" in report
    assert "| 80 | exact | 4 |" in report and "retrieval ms/query" in report


def test_fresh_memory_leaves_perplexity_unchanged(tiny):
    """At initialisation the fusion adds an exact zero: memory-free text reads the same with memory on."""
    from llm_foundry.memory.evaluate import perplexity
    from llm_foundry.memory.pipeline import open_memory

    memory = open_memory(tiny["fresh"])
    try:
        ppl = perplexity(memory, store_size=60, texts=6)
    finally:
        memory.close()
    assert ppl.texts == 6 and ppl.on == ppl.off and ppl.change == 0


def test_counterfactual_store_holds_the_train_facts_other_values(tiny):
    """The counterfactual rows ask about train entities (the backbone's own text) and retrieve from
    entries that say another value: with a trained gate the gold (flipped) entry is found."""
    import torch

    from llm_foundry.memory.ask import Answerer
    from llm_foundry.memory.evaluate import EvalStore, counterfactual_rows, evaluate
    from llm_foundry.memory.pipeline import fact_world, open_memory

    memory = open_memory(tiny["trained"])
    try:
        world = fact_world(memory.cfg)
        flipped = [world.counterfactual(f) for f in world.facts("train")]
        assert all(a.object != b.object for a, b in zip(world.facts("train"), flipped))
        base = EvalStore.build(memory, 200)
        texts, vectors = list(base.texts), base.vectors.clone()
        rows = counterfactual_rows(memory, base, 0, Answerer(memory.model, 8))
        evaluate(memory, 200, 2, store=base)  # the edit rows edit a copy: a shared store stays as built
    finally:
        memory.close()
    assert rows[0].questions == len(world.questions("train")) and rows[0].retrieval_at_1 is not None
    assert base.texts == texts and torch.equal(base.vectors, vectors)


def test_bad_scales_are_one_line(tiny, capsys):
    mem = copy(tiny, "fresh", "bad-scales")
    for args, fragment in ((("--scales", "1k,10k"), "--scales"), (("--scales", "0"), "--scales")):
        proc = run_main(capsys, "memory", "eval", mem, *args)
        assert proc.returncode == 1 and proc.stderr.startswith("error:") and fragment in proc.stderr, proc.stderr
        assert "\n" not in proc.stderr.strip()


def test_a_store_smaller_than_the_memory_only_facts_holds_as_many_as_fit(tiny):
    from llm_foundry.memory.evaluate import scaling
    from llm_foundry.memory.pipeline import open_memory

    memory = open_memory(copy(tiny, "trained", "small-scales"))
    small, large = scaling(memory, [5, 40], questions=50)
    # the same questions at both sizes, each about one of the 5 facts the small store holds
    assert (small.entries, large.entries) == (5, 40) and small.questions == large.questions > 0
    # the small store is a prefix of the large one: whatever outranks a gold entry in it does in the large one too
    assert small.retrieval_at_1 >= large.retrieval_at_1


# ---------------------------------------------------------------- chat --memory
def chat(*args, stdin: str = "") -> subprocess.CompletedProcess:
    """`foundry chat` in a real subprocess (stdin not a terminal: one message a line)."""
    return subprocess.run([sys.executable, "-m", "llm_foundry", "chat", *map(str, args)], input=stdin,
                          capture_output=True, text=True, timeout=300)


def test_chat_with_memory_answers_as_ask_and_reads_edits(tiny, capsys):
    mem = copy(tiny, "trained", "chat")
    assert run_main(capsys, "memory", "add", mem, "--text", "Velmora Quist was born in Oslo.",
                    "--text", "Tarsk Works makes kites.", "--text", "Ana Brell lives in Lima.").returncode == 0
    q = "Where was Velmora Quist born?"
    asked = json.loads(run_main(capsys, "memory", "ask", mem, "--question", q, "--max-tokens", "8",
                                "--json").stdout)
    k = len(asked["retrieved"])
    proc = subprocess.Popen([sys.executable, "-m", "llm_foundry", "chat", str(tiny["backbone"]), "--memory", str(mem),
                             "--max-new-tokens", "8", "--show-retrieval"],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        def turn(line: str, n: int) -> list[str]:
            proc.stdin.write(line + "\n")
            proc.stdin.flush()
            return [proc.stdout.readline().rstrip("\n") for _ in range(n)]

        first = turn(q, 1 + k)
        assert first[0] == asked["answer"]  # the same answer `memory ask` gives
        assert [line.split("]")[0] for line in first[1:]] == [f"  [{i}" for i in asked["retrieved"]]
        assert turn("/retrieved", k) == first[1:]
        # An entry deleted by another process while the chat runs is never read by its next question.
        gone = asked["retrieved"][0]
        assert run_main(capsys, "memory", "delete", mem, str(gone)).returncode == 0
        second = turn(q, 1 + k)
        assert all(not line.startswith(f"  [{gone}]") for line in second[1:]) and len(second[1:]) == k
        out, err = proc.communicate("/quit\n", timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, err
    one_shot = run_cli("chat", tiny["backbone"], "--memory", mem, "--max-new-tokens", "8", "--prompt", q)
    assert one_shot.returncode == 0 and one_shot.stdout.count("\n") == 1, one_shot.stderr


def test_refresh_bank_takes_in_edits_since_its_version(tiny, tmp_path):
    """The bank a chat keeps equals a freshly built one after adds, updates, deletes and a rollback."""
    import torch

    from llm_foundry.memory.ask import live_bank, refresh_bank
    from llm_foundry.memory.pipeline import open_memory

    mem = copy(tiny, "trained", "refresh")
    memory = open_memory(mem)
    try:
        store, model = memory.store, memory.model
        store.add(["Velmora Quist was born in Oslo.", "Tarsk Works makes kites.", "Ana Brell lives in Lima."])
        version = store.version
        bank = live_bank(model, store)
        store.update(1, "Velmora Quist was born in Rome.")
        store.delete(2)
        store.add(["Orrin Vale plays the harp."])
        bank, version = refresh_bank(model, bank, store, version)
        assert version == store.version
        fresh = live_bank(model, store)
        got = {int(i): (t, v) for i, t, v, ok in zip(bank.ids.tolist(), bank.texts, bank.index.vectors,
                                                     bank.index.valid.tolist()) if ok}
        want = dict(zip(fresh.ids.tolist(), zip(fresh.texts, fresh.index.vectors)))
        assert got.keys() == want.keys() == {1, 3, 4}
        assert all(got[i][0] == want[i][0] and torch.allclose(got[i][1], want[i][1], atol=1e-6) for i in got)
        assert model.retrieve("What does Tarsk Works make?", 3, bank).ids[0].count(2) == 0
        store.rollback(version - 2)  # before the delete and the add: entry 2 is back, entry 4 gone
        bank, version = refresh_bank(model, bank, store, version)
        assert sorted(i for i, ok in zip(bank.ids.tolist(), bank.index.valid.tolist()) if ok) == [1, 2, 3]
        assert refresh_bank(model, bank, store, version) == (bank, version)  # nothing new: nothing done
    finally:
        memory.close()


def test_chat_memory_for_another_backbone_is_one_line(tiny, tmp_path):
    from safetensors.torch import load_file, save_file

    other = tmp_path / "other"
    shutil.copytree(tiny["backbone"], other)
    weights = {k: v + 0.01 for k, v in load_file(other / "model.safetensors").items()}
    save_file(weights, other / "model.safetensors", metadata={"format": "pt"})
    one_line_error(chat(other, "--memory", tiny["fresh"], "--prompt", "hi?"), "another backbone")
    one_line_error(run_cli("chat", tiny["backbone"], "--memory", tmp_path / "none", "--prompt", "hi?"), "not found")
    one_line_error(run_cli("chat", tiny["backbone"], "--show-retrieval", "--prompt", "hi?"), "--memory")


# ---------------------------------------------------------------- bench/memory.py
def test_bench_memory_prints_one_json_object(tiny):
    """The benchmark at tiny sizes (its figures come from a separate run): every section is there
    and an edit was visible to the next question."""
    root = Path(__file__).resolve().parent.parent
    proc = subprocess.run([sys.executable, str(root / "bench" / "memory.py"), "--sizes", "100,300", "--queries", "2",
                           "--edits", "2", "--mem", str(tiny["trained"]), "--store-size", "60", "--questions", "2"],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    assert [r["entries"] for r in out["retrieval"]] == [100, 300]
    assert all(r["dense_ms"] > 0 and r["hybrid_ms"] > 0 for r in out["retrieval"])
    assert out["edit"]["entries"] == 300 and out["edit"]["visible_ms"] > 0
    names = [r["row"] for r in out["eval"]["rows"]]
    assert "in-context RAG (same retriever)" in names and "memory (dense)" in names
    assert out["eval"]["perplexity"]["off"] > 1
