"""The memory store: edits, tombstones, rollback, the change feed, durability, two processes, caches, bad input."""

from __future__ import annotations

import os
import random
import signal
import sqlite3
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from llm_foundry.memory.store import MAX_TEXT_CHARS, MemoryStore
from llm_foundry.utils.errors import FoundryError

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def store(tmp_path):
    with MemoryStore.create(tmp_path / "mem") as s:
        yield s


def live_map(store: MemoryStore) -> dict[int, str]:
    ids, texts, _ = store.live()
    return dict(zip(ids, texts))


def python(code: str, **kwargs) -> subprocess.Popen:
    """A real second process running ``code`` against this checkout's package."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), os.environ.get("PYTHONPATH", "")])}
    return subprocess.Popen([sys.executable, "-c", textwrap.dedent(code)], env=env, text=True,
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, **kwargs)


# ----------------------------------------------------------------------------- edits
def test_add_update_delete_and_what_live_shows(store):
    assert store.version == 0 and store.live() == ([], [], 0)
    ids = store.add(["Velmora Quist was born in Oslo.", "  岚墨城是北原国的首都。\n", "Tarsk lies on the Fox River."])
    assert ids == [1, 2, 3] and store.version == 3  # one version per entry
    assert store.get(2).text == "岚墨城是北原国的首都。"  # stored stripped
    assert store.update(1, "Velmora Quist was born in Lima.") == 4
    assert store.delete(3) == 5
    assert store.live() == ([1, 2], ["Velmora Quist was born in Lima.", "岚墨城是北原国的首都。"], 5)
    assert len(store) == 2
    # A tombstone stays, flagged, for the log and `list --all`.
    tomb = store.get(3)
    assert tomb.deleted and tomb.text == "Tarsk lies on the Fox River." and (tomb.created, tomb.updated) == (3, 5)
    assert [e.id for e in store.list()] == [1, 2]
    assert [(e.id, e.deleted) for e in store.list(include_deleted=True)] == [(1, False), (2, False), (3, True)]
    assert [e.id for e in store.list(grep="velmora")] == [1]  # ASCII in any case
    assert [e.id for e in store.list(grep="北原")] == [2]
    assert store.list(grep="%") == [] and store.list(grep="_") == []  # LIKE's wildcards are plain characters
    assert [(h.version, h.op, h.old_text, h.new_text) for h in store.history(1)] == [
        (1, "add", None, "Velmora Quist was born in Oslo."),
        (4, "update", "Velmora Quist was born in Oslo.", "Velmora Quist was born in Lima.")]
    assert [h.op for h in store.history(3)] == ["add", "delete"]
    # Ids are never reused, even after a delete.
    assert store.add(["Another fact."]) == [4]


def test_a_batch_add_is_all_or_none(store):
    store.add(["first"])
    with pytest.raises(FoundryError, match="text 3 of 3: an entry's text is empty"):
        store.add(["fine", "also fine", "   "])
    assert store.version == 1 and live_map(store) == {1: "first"}


BAD_TEXTS = [(None, "must be a string"), (42, "must be a string"), ("", "empty"), (" \n\t ", "empty"),
             ("x" * (MAX_TEXT_CHARS + 1), "more than the 4096"), ("a\x00b", "NUL"), ("bad \ud800 text", "surrogate")]


@pytest.mark.parametrize("text, message", BAD_TEXTS, ids=["none", "int", "empty", "blank", "long", "nul", "surrogate"])
def test_bad_text_is_refused_and_the_store_is_unchanged(store, text, message):
    store.add(["a fact"])
    before = (store.live(), store.history(1))
    for edit in (lambda: store.add([text]), lambda: store.update(1, text)):
        with pytest.raises(FoundryError, match=message):
            edit()
        assert (store.live(), store.history(1)) == before
    assert store.add(["x" * MAX_TEXT_CHARS]) == [2]  # the limit itself is fine


@pytest.mark.parametrize("edit, message", [
    (lambda s: s.add([]), "nothing to add"),
    (lambda s: s.add("one text, not a list"), "a list of texts"),
    (lambda s: s.update(99, "new"), "no entry 99"),
    (lambda s: s.update(2, "new"), "entry 2 is deleted"),
    (lambda s: s.update("1", "new"), "whole number"),
    (lambda s: s.delete(99), "no entry 99"),
    (lambda s: s.delete(2), "already deleted"),
    (lambda s: s.delete(2**70), "no entry"),
    (lambda s: s.get(0), "no entry 0"),
    (lambda s: s.history(-1), "no entry -1"),
    (lambda s: s.rollback(4), r"no version 4 in this memory \(versions 0..3\)"),
    (lambda s: s.rollback(-1), "no version -1"),
    (lambda s: s.rollback(True), "whole number"),
], ids=["add-empty", "add-str", "update-unknown", "update-deleted", "update-str-id", "delete-unknown",
        "delete-twice", "delete-huge", "get-unknown", "history-unknown", "rollback-future", "rollback-negative",
        "rollback-bool"])
def test_bad_edits_are_one_line_and_change_nothing(store, edit, message):
    store.add(["one", "two"])
    store.delete(2)
    before = (store.live(), store.list(include_deleted=True), store.version)
    with pytest.raises(FoundryError, match=message) as e:
        edit(store)
    assert "\n" not in str(e.value)
    assert (store.live(), store.list(include_deleted=True), store.version) == before


def test_an_edit_that_fails_midway_changes_nothing(store, monkeypatch):
    store.add(["first"])
    before = (store.live(), store.list(include_deleted=True))

    def disk_fails(conn, rows):  # the entries are written, then the log write fails (a full disk, say)
        raise sqlite3.OperationalError("database or disk is full")

    monkeypatch.setattr(MemoryStore, "_log", staticmethod(disk_fails))
    for edit in (lambda: store.add(["second", "third"]), lambda: store.update(1, "changed"), lambda: store.delete(1),
                 lambda: store.rollback(0)):
        with pytest.raises(FoundryError, match="disk is full"):
            edit()
        assert (store.live(), store.list(include_deleted=True)) == before
    monkeypatch.undo()
    assert store.add(["second"]) == [2] and store.version == 2


def test_a_create_killed_midway_leaves_no_store_behind(tmp_path, monkeypatch):
    def killed(*args):
        raise KeyboardInterrupt

    monkeypatch.setattr(os, "link", killed)
    with pytest.raises(KeyboardInterrupt):
        MemoryStore.create(tmp_path / "mem")
    assert list((tmp_path / "mem").iterdir()) == []
    monkeypatch.undo()
    with MemoryStore.create(tmp_path / "mem") as s:
        assert s.add(["works"]) == [1]


# ----------------------------------------------------------------------------- rollback and the change feed
def random_edits(store: MemoryStore, rng: random.Random, n: int) -> dict[int, dict[int, str]]:
    """``n`` random edits; returns the live entries at every version reached."""
    states = {store.version: live_map(store)}
    for step in range(n):
        live = list(live_map(store))
        op = rng.choice(["add", "add", "update", "delete"]) if live else "add"
        if op == "add":
            store.add([f"fact {step}-{k}" for k in range(rng.randint(1, 3))])
        elif op == "update":
            store.update(rng.choice(live), f"fact {step} updated")
        else:
            store.delete(rng.choice(live))
        states[store.version] = live_map(store)
    return states


def test_rollback_restores_every_earlier_state_and_can_itself_be_undone(store):
    states = random_edits(store, random.Random(0), 40)
    log_before = [store.history(i) for i in range(1, max(e.id for e in store.list(include_deleted=True)) + 1)]
    reached = sorted(states)  # (a batch add makes several versions at once: only these were seen)
    for target in (0, reached[1], reached[7], reached[len(reached) // 2], reached[-1]):
        now = store.version
        new = store.rollback(target)
        assert live_map(store) == states[target], target
        assert store.version == new >= now
        states[new] = live_map(store)
        assert store.rollback(now) >= new and live_map(store) == states[now]  # undo the rollback
        states[store.version] = live_map(store)
    # The log is append-only: every earlier row is still there, unchanged, in front.
    for i, before in enumerate(log_before, 1):
        assert store.history(i)[:len(before)] == before
    assert {h.op for i in range(1, len(log_before) + 1) for h in store.history(i)} >= {"add", "rollback"}


def test_rollback_to_the_current_version_changes_nothing(store):
    store.add(["a", "b"])
    assert store.rollback(2) == 2 and store.version == 2


def test_a_deleted_entry_comes_back_by_rollback_with_its_text(store):
    store.add(["keep me"])
    store.delete(1)
    assert store.live()[0] == []
    store.rollback(1)
    assert live_map(store) == {1: "keep me"} and not store.get(1).deleted
    assert [h.op for h in store.history(1)] == ["add", "delete", "rollback"]


def test_changed_since_brings_an_index_up_to_date(store):
    rng = random.Random(1)
    random_edits(store, rng, 15)
    # Keep a mirror at each earlier version, apply the feed: it equals what live() says now.
    states = random_edits(store, rng, 30)
    for since, state in states.items():
        mirror = dict(state)
        version = store.version
        for entry_id, text in store.changed_since(since):
            if text is None:
                mirror.pop(entry_id, None)
            else:
                mirror[entry_id] = text
        assert mirror == live_map(store) and version == store.version
    assert store.changed_since(store.version) == []
    # A delete shows as None, an update as the new text.
    v = store.version
    new = store.add(["fresh"])[0]
    store.update(new, "fresher")
    victim = next(iter(live_map(store)))
    store.delete(victim)
    assert dict(store.changed_since(v)) == {new: "fresher", victim: None}


def test_the_change_feed_reads_only_what_changed(store):
    # The model side asks for changes after every edit: its cost must not grow with the store.
    store.add([f"fact {i}" for i in range(20_000)])
    v = store.version
    store.update(12_345, "changed")
    steps = []
    store._conn.set_progress_handler(lambda: steps.append(1), 100)  # SQLite calls it every 100 VM steps
    assert store.changed_since(v) == [(12_345, "changed")]
    assert store.rollback(v) == v + 2
    store._conn.set_progress_handler(None, 0)
    assert len(steps) * 100 < 5_000  # a scan of the 20k entries would take 100k+ steps


# ----------------------------------------------------------------------------- opening
def test_open_refuses_what_is_not_a_usable_memory_folder(tmp_path):
    with pytest.raises(FoundryError, match="memory folder not found"):
        MemoryStore.open(tmp_path / "nope")
    (tmp_path / "file").write_text("x")
    with pytest.raises(FoundryError, match="not a memory folder"):
        MemoryStore.open(tmp_path / "file")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FoundryError, match="not a memory folder"):
        MemoryStore.open(tmp_path / "empty")
    assert not (tmp_path / "empty" / "memory.sqlite").exists()  # opening never creates a database
    (tmp_path / "garbage").mkdir()
    (tmp_path / "garbage" / "memory.sqlite").write_bytes(b"this is not a database" * 100)
    with pytest.raises(FoundryError, match="damaged"):
        MemoryStore.open(tmp_path / "garbage")
    (tmp_path / "other").mkdir()
    sqlite3.connect(tmp_path / "other" / "memory.sqlite").execute("CREATE TABLE t (x)").connection.close()
    with pytest.raises(FoundryError, match="not a memory store"):
        MemoryStore.open(tmp_path / "other")


def test_a_truncated_database_is_one_line_not_a_traceback(tmp_path):
    with MemoryStore.create(tmp_path / "mem") as s:
        s.add([f"fact {i} " + "x" * 200 for i in range(2000)])
    db = tmp_path / "mem" / "memory.sqlite"
    db.write_bytes(db.read_bytes()[: db.stat().st_size // 2])
    with pytest.raises(FoundryError, match="damaged"):
        with MemoryStore.open(tmp_path / "mem") as s:
            s.live()


def test_a_newer_format_is_refused_not_misread(tmp_path):
    MemoryStore.create(tmp_path / "mem").close()
    conn = sqlite3.connect(tmp_path / "mem" / "memory.sqlite")
    conn.execute("UPDATE meta SET value = '99' WHERE key = 'format'")
    conn.commit()
    conn.close()
    with pytest.raises(FoundryError, match="format 99, newer than this llm-foundry reads"):
        MemoryStore.open(tmp_path / "mem")


def test_create_records_meta_and_refuses_to_overwrite(tmp_path):
    with MemoryStore.create(tmp_path / "mem", backbone_fingerprint="ab12cd", meta={"preset": "cpu"}) as s:
        assert s.backbone_fingerprint == "ab12cd" and s.meta["preset"] == "cpu" and s.meta["format"] == 1
        s.check_backbone("ab12cd")
        with pytest.raises(FoundryError, match="built for another backbone"):
            s.check_backbone("99ee")
        s.set_meta(backbone_fingerprint="ffff", note=[1, 2])
        assert s.version == 0  # meta is not an edit
    with MemoryStore.open(tmp_path / "mem") as s:
        assert s.backbone_fingerprint == "ffff" and s.meta["note"] == [1, 2]
        with pytest.raises(FoundryError, match="format"):
            s.set_meta(format=2)
    with pytest.raises(FoundryError, match="already a memory folder"):
        MemoryStore.create(tmp_path / "mem")
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "notes.txt").write_text("mine")
    with pytest.raises(FoundryError, match="not an empty folder"):
        MemoryStore.create(tmp_path / "busy")
    assert sorted(p.name for p in (tmp_path / "busy").iterdir()) == ["notes.txt"]
    (tmp_path / "fresh").mkdir()
    MemoryStore.create(tmp_path / "fresh").close()  # an existing empty folder is fine
    assert sorted(p.name for p in (tmp_path / "fresh").iterdir()) == ["memory.sqlite"]


# ----------------------------------------------------------------------------- durability and two processes
def test_an_edit_survives_a_kill_9_right_after_it_returns(tmp_path):
    mem = tmp_path / "mem"
    MemoryStore.create(mem).close()
    # The second process edits, reports, and is killed before it can close anything.
    proc = python(f"""
        import sys
        from llm_foundry.memory.store import MemoryStore
        s = MemoryStore.open({str(mem)!r})
        assert s._conn.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL
        ids = s.add(["Velmora Quist was born in Oslo.", "Quelmar makes kites."])
        v = s.update(ids[0], "Velmora Quist was born in Lima.")
        v = s.delete(ids[1])
        print(v, flush=True)
        sys.stdin.read()  # wait to be killed
    """)
    try:
        line = proc.stdout.readline()
        assert line.strip() == "4", proc.stderr.read() if proc.poll() is not None else line
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL
    with MemoryStore.open(mem) as s:
        assert s.version == 4
        assert s.live() == ([1], ["Velmora Quist was born in Lima."], 4)
    mode = sqlite3.connect(mem / "memory.sqlite").execute("PRAGMA journal_mode").fetchone()[0]
    assert mode == "wal"


def test_two_processes_edit_one_store(tmp_path):
    mem = tmp_path / "mem"
    MemoryStore.create(mem).close()
    code = f"""
        from llm_foundry.memory.store import MemoryStore
        import sys
        with MemoryStore.open({str(mem)!r}, busy_timeout_s=30) as s:
            for k in range(25):
                i = s.add([f"{{sys.argv[1]}} fact {{k}}"])[0]
                if k % 5 == 0:
                    s.update(i, f"{{sys.argv[1]}} fact {{k}} revised")
    """
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    procs = [subprocess.Popen([sys.executable, "-c", textwrap.dedent(code), name], env=env, stderr=subprocess.PIPE,
                              text=True) for name in ("left", "right")]
    for p in procs:
        assert p.wait(timeout=120) == 0, p.stderr.read()
    with MemoryStore.open(mem) as s:
        ids, texts, version = s.live()
        assert len(ids) == 50 and len(set(ids)) == 50 and version == 60
        assert sum(t.endswith("revised") for t in texts) == 10
        assert sorted(h.version for i in ids for h in s.history(i)) == list(range(1, 61))  # no version twice


def test_a_busy_store_is_one_line_and_reads_go_on(tmp_path):
    mem = tmp_path / "mem"
    with MemoryStore.create(mem) as s:
        s.add(["a fact"])
    holder = python(f"""
        import sqlite3, sys
        conn = sqlite3.connect({str(mem / 'memory.sqlite')!r}, isolation_level=None)
        conn.execute("BEGIN IMMEDIATE")  # another writer, holding the lock
        print("locked", flush=True)
        sys.stdin.read()
    """)
    try:
        assert holder.stdout.readline().strip() == "locked"
        with MemoryStore.open(mem, busy_timeout_s=0.2) as s:
            with pytest.raises(FoundryError, match="memory store is busy"):
                s.add(["another fact"])
            assert s.live() == ([1], ["a fact"], 1)  # readers are not blocked by a writer
    finally:
        holder.stdin.close()
        holder.wait(timeout=30)
    with MemoryStore.open(mem) as s:
        assert s.add(["another fact"]) == [2]


# ----------------------------------------------------------------------------- vector caches
def test_cache_round_trip_and_every_damage_means_rebuild(store):
    import torch

    store.add(["a", "b"])
    fp = "0a1b2c3d"
    assert store.load_cache(fp) is None  # none yet
    keys = torch.arange(12, dtype=torch.float32).reshape(2, 6)
    path = store.save_cache(fp, {"keys": keys, "ids": torch.tensor([1, 2])}, version=2)
    assert path == store.path / "cache" / "0a1b2c3d.safetensors"
    assert [p.name for p in path.parent.iterdir()] == [path.name]  # no temp litter
    tensors, version = store.load_cache(fp)
    assert version == 2 and torch.equal(tensors["keys"], keys) and tensors["ids"].tolist() == [1, 2]
    good = path.read_bytes()
    for damaged in (b"", good[: len(good) // 2], b"\xff" * len(good), good[:8] + b"[" + good[9:], good[:-4]):
        path.write_bytes(damaged)
        assert store.load_cache(fp) is None
    # A cache from a version this store never reached, or filed under another fingerprint: rebuild.
    store.save_cache(fp, {"keys": keys}, version=3)
    assert store.load_cache(fp) is None
    os.replace(store.save_cache("ffff", {"keys": keys}, version=1), path)
    assert store.load_cache(fp) is None
    for bad in ("../x", "ABCD", "", "a" * 65, 7):
        with pytest.raises(FoundryError, match="fingerprint"):
            store.cache_path(bad)
