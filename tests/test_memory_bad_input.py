"""The issue's "Bad input" list, each through the real `foundry` CLI in a subprocess: facts or questions
files that are empty, binary or malformed JSON (the line named), a backbone folder missing or of an
unsupported architecture, a memory folder built for another backbone, an unknown id, a rollback to a
version that does not exist. Each is one `error:` line, a non-zero exit, and the store exactly as it
was: the SQLite file byte for byte, and its entries (tombstones included).

(test_memory_cli.py checks the store's own refusals in more variants; this file walks the issue's list
across every command that reads such input, the model side included.)
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import pytest

from helpers import one_line_error, run_cli
from test_memory_pipeline import build_tiny

FACTS = ["Velmora Quist was born in Oslo.", "Tarsk Works makes kites.", "Ana Brell lives in Lima."]


@pytest.fixture(scope="module")
def setup(tmp_path_factory) -> dict[str, Path]:
    """A tiny backbone; ``mem``, a memory folder for it at version 4 (three adds, a delete); ``stray``, a
    copy bound to the same store but naming a backbone whose weights changed since; bad input files."""
    from safetensors.torch import load_file, save_file

    from llm_foundry.memory.store import MemoryStore

    tiny = build_tiny(tmp_path_factory.mktemp("membad"))
    root, mem = tiny["root"], tiny["root"] / "mem"
    shutil.copytree(tiny["fresh"], mem)
    with MemoryStore.open(mem) as store:
        store.add(FACTS)
        store.delete(3)
    other = root / "other-backbone"
    shutil.copytree(tiny["backbone"], other)
    weights = {k: v + 0.01 for k, v in load_file(other / "model.safetensors").items()}
    save_file(weights, other / "model.safetensors", metadata={"format": "pt"})
    stray = root / "stray"
    shutil.copytree(mem, stray)
    with MemoryStore.open(stray) as store:
        store.set_meta(backbone=str(other))
    files = root / "files"
    files.mkdir()
    for name, data in {
        "empty.jsonl": b"",
        "blank.jsonl": b"\n   \n\n",
        "binary.jsonl": b"\x00\x01\x02\xff binary",
        "latin1.jsonl": '{"text": "café"}\n'.encode("latin-1"),
        "bad_json.jsonl": b'{"text": "fine"}\n{"text": \n',
        "deep.jsonl": b'{"text": "fine"}\n{"text": "ok"}\n' + b"[" * 100_000 + b"]" * 100_000 + b"\n",
        "long_number.jsonl": b'{"text": ' + b"9" * 5000 + b"}\n",
        "wrong_facts.jsonl": b'{"text": "fine"}\n{"subject": "Vel"}\n',
        "questions_bad_json.jsonl": b'{"question": "Who?", "answer": "Vel"}\n\n{"question": "Who?",\n',
        "wrong_questions.jsonl": b'{"question": "Who?"}\n',
        "good_questions.jsonl": b'{"question": "Where was Velmora Quist born?", "answer": "Oslo"}\n',
        "good_facts.jsonl": b'{"text": "Velmora Quist was born in Oslo."}\n',
    }.items():
        (files / name).write_bytes(data)
    gpt2 = root / "gpt2"
    gpt2.mkdir()
    (gpt2 / "config.json").write_text(json.dumps({"model_type": "gpt2"}))
    return {**tiny, "mem": mem, "stray": stray, "other": other, "files": files, "gpt2": gpt2}


def snapshot(mem: Path) -> tuple[str, list]:
    """The store's state: its SQLite file's digest and every entry (tombstones too) with its versions."""
    from llm_foundry.memory.store import MemoryStore

    digest = hashlib.sha256((mem / "memory.sqlite").read_bytes()).hexdigest()
    with MemoryStore.open(mem) as store:
        return digest, [(e.id, e.text, e.created, e.updated, e.deleted) for e in store.list(include_deleted=True)] \
            + [("version", store.version)]


def refused(setup, mem_key: str, argv: list, *fragments: str) -> None:
    """``foundry ARGV`` (``{mem}``, ``{files}/…`` etc. filled in) fails in one line naming ``fragments``, and
    the memory folder ``setup[mem_key]`` is unchanged."""
    mem = setup[mem_key]
    before = snapshot(mem)
    args = [str(a).format(**{k: str(v) for k, v in setup.items()}) for a in argv]
    one_line_error(run_cli(*args), *fragments)
    assert snapshot(mem) == before, args


# ---------------------------------------------------------------- facts and questions files
BAD_FACTS = [
    ("empty.jsonl", "input is empty"),
    ("blank.jsonl", "input is empty"),
    ("binary.jsonl", "binary"),
    ("latin1.jsonl", "not UTF-8"),
    ("bad_json.jsonl", "bad_json.jsonl:2: not valid JSON"),
    ("deep.jsonl", "deep.jsonl:3: not valid JSON"),
    ("long_number.jsonl", "long_number.jsonl:1: not valid JSON"),
    ("wrong_facts.jsonl", "wrong_facts.jsonl:2: expected"),
    ("missing.jsonl", "not found"),
]


@pytest.mark.parametrize("name,message", BAD_FACTS, ids=[n for n, _ in BAD_FACTS])
def test_a_bad_facts_file_adds_nothing(setup, name, message):
    refused(setup, "mem", ["memory", "add", "{mem}", "--file", f"{{files}}/{name}"], message)


BAD_QUESTIONS = [
    ("empty.jsonl", "input is empty"),
    ("binary.jsonl", "binary"),
    ("questions_bad_json.jsonl", "questions_bad_json.jsonl:3: not valid JSON"),
    ("wrong_questions.jsonl", "wrong_questions.jsonl:1: expected"),
]


@pytest.mark.parametrize("name,message", BAD_QUESTIONS, ids=[n for n, _ in BAD_QUESTIONS])
def test_a_bad_questions_file_is_refused_before_anything_is_asked(setup, name, message):
    refused(setup, "mem", ["memory", "ask", "{mem}", "--file", f"{{files}}/{name}"], message)


@pytest.mark.parametrize("facts,questions,message", [
    ("bad_json.jsonl", "good_questions.jsonl", "bad_json.jsonl:2: not valid JSON"),
    ("good_facts.jsonl", "binary.jsonl", "binary"),
    ("good_facts.jsonl", "empty.jsonl", "input is empty"),
], ids=["facts", "questions-binary", "questions-empty"])
def test_eval_refuses_bad_user_files(setup, facts, questions, message):
    refused(setup, "mem", ["memory", "eval", "{mem}", "--facts", f"{{files}}/{facts}",
                           "--questions", f"{{files}}/{questions}"], message)


# ---------------------------------------------------------------- backbones
@pytest.mark.parametrize("argv,message", [
    (["memory", "init", "--backbone", "{root}/nowhere", "--out", "{root}/new-mem"], "backbone folder not found"),
    (["memory", "init", "--backbone", "{gpt2}", "--out", "{root}/new-mem"], "unsupported backbone architecture 'gpt2'"),
    (["memory", "init", "--backbone", "{files}", "--out", "{root}/new-mem"], "no config.json"),
    (["memory", "init", "--backbone", "{backbone}", "--out", "{mem}"], "already exists"),
    (["chat", "{root}/nowhere", "--memory", "{mem}", "--prompt", "hi?"], "not found"),
    (["serve", "{root}/nowhere", "--memory", "{mem}", "--port", "0"], "not found"),
    (["chat", "{gpt2}", "--memory", "{mem}", "--prompt", "hi?"], "unsupported backbone architecture"),
], ids=["init-missing", "init-gpt2", "init-not-a-model", "init-over-a-memory", "chat-missing", "serve-missing",
        "chat-gpt2"])
def test_a_missing_or_unsupported_backbone_is_one_line(setup, argv, message):
    refused(setup, "mem", argv, message)
    assert not (setup["root"] / "new-mem").exists()


@pytest.mark.parametrize("argv", [
    ["memory", "ask", "{stray}", "--question", "Where was Velmora Quist born?"],
    ["memory", "train", "{stray}", "--stage", "router"],
    ["memory", "eval", "{stray}", "--facts", "{files}/good_facts.jsonl", "--questions", "{files}/good_questions.jsonl"],
], ids=["ask", "train", "eval"])
def test_a_memory_built_for_another_backbone_is_one_line(setup, argv):
    refused(setup, "stray", argv, "was built for another backbone")


@pytest.mark.parametrize("command", ["chat", "serve"])
def test_a_model_other_than_the_memorys_backbone_is_one_line(setup, command):
    extra = ["--prompt", "hi?"] if command == "chat" else ["--port", "0"]
    refused(setup, "mem", [command, "{other}", "--memory", "{mem}", *extra], "was built for another backbone")


# ---------------------------------------------------------------- ids and versions
@pytest.mark.parametrize("argv,message", [
    (["update", "{mem}", "9", "--text", "new"], "no entry 9"),
    (["delete", "{mem}", "9"], "no entry 9"),
    (["show", "{mem}", "9"], "no entry 9"),
    (["update", "{mem}", "99999999999999999999", "--text", "new"], "no entry 99999999999999999999"),
    (["delete", "{mem}", "-1"], "no entry -1"),
    (["update", "{mem}", "3", "--text", "new"], "entry 3 is deleted"),
    (["rollback", "{mem}", "5"], "no version 5 in this memory (versions 0..4)"),
    (["rollback", "{mem}", "-1"], "no version -1"),
    (["rollback", "{mem}", "99999999999999999999"], "no version 99999999999999999999"),
], ids=["update", "delete", "show", "update-huge", "delete-negative", "update-deleted", "rollback-ahead",
        "rollback-negative", "rollback-huge"])
def test_an_unknown_id_or_version_is_one_line(setup, argv, message):
    refused(setup, "mem", ["memory", *argv], message)
