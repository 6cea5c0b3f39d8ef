"""`foundry memory`'s edit commands, run as a user runs them (real subprocesses, real files)."""

from __future__ import annotations

import json

import pytest

from helpers import one_line_error, run_cli


def lines(proc) -> list[str]:
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.splitlines()


def test_edit_commands_from_create_to_rollback(tmp_path):
    mem = tmp_path / "mem"
    assert "created memory folder" in lines(run_cli("memory", "create", mem, "--backbone-fingerprint", "ab12"))[0]
    out = lines(run_cli("memory", "add", mem, "--text", "Velmora Quist was born in Oslo.",
                        "--text", " 岚墨城是北原国的首都。", "--json"))
    assert [json.loads(line) for line in out] == [{"id": 1, "text": "Velmora Quist was born in Oslo."},
                                                  {"id": 2, "text": "岚墨城是北原国的首都。"}]
    facts = tmp_path / "facts.jsonl"
    facts.write_text('{"text": "Quelmar Works makes kites."}\n'
                     '{"subject": "Tarsk", "relation": "capital of", "object": "Norland"}\n', encoding="utf-8")
    assert lines(run_cli("memory", "add", mem, "--file", facts)) == ["3", "4"]
    assert lines(run_cli("memory", "update", mem, "1", "--text", "Velmora Quist was born in Lima.")) == [
        "updated entry 1 (version 5)"]
    assert lines(run_cli("memory", "delete", mem, "3")) == ["deleted entry 3 (version 6)"]
    assert lines(run_cli("memory", "list", mem)) == ["1\tVelmora Quist was born in Lima.", "2\t岚墨城是北原国的首都。",
                                                    "4\tTarsk is the capital of Norland."]
    assert lines(run_cli("memory", "list", mem, "--grep", "TARSK")) == ["4\tTarsk is the capital of Norland."]
    listed = [json.loads(line) for line in lines(run_cli("memory", "list", mem, "--all", "--json"))]
    assert [(e["id"], e["version"], e["deleted"]) for e in listed] == [(1, 5, False), (2, 2, False), (3, 6, True),
                                                                       (4, 4, False)]
    shown = lines(run_cli("memory", "show", mem, "1"))
    assert shown[0] == "entry 1 (live; added at version 1, last edited at version 5)"
    assert shown[1] == "Velmora Quist was born in Lima."
    assert [s.split()[:3] for s in shown[3:]] == [["version", "1", "add"], ["version", "5", "update"]]
    assert lines(run_cli("memory", "rollback", mem, "2")) == ["rolled back to version 2: 2 entries changed (version 8)"]
    assert lines(run_cli("memory", "list", mem)) == ["1\tVelmora Quist was born in Oslo.", "2\t岚墨城是北原国的首都。"]
    assert lines(run_cli("memory", "show", mem, "4"))[0].startswith("entry 4 (deleted; added at version 4")


def test_refused_commands_leave_the_store_byte_identical(tmp_path):
    mem = tmp_path / "mem"
    assert run_cli("memory", "create", mem).returncode == 0
    assert lines(run_cli("memory", "add", mem, "--text", "one fact", "--text", "another fact")) == ["1", "2"]
    assert run_cli("memory", "delete", mem, "2").returncode == 0
    db = mem / "memory.sqlite"
    before = db.read_bytes()
    bad_json = tmp_path / "bad.jsonl"
    bad_json.write_text('{"text": "fine"}\n{"text": \n', encoding="utf-8")
    binary = tmp_path / "binary.jsonl"
    binary.write_bytes(b"\x00\x01\x02 not text")
    refused = [
        (["add", mem, "--text", "   "], "empty"),
        (["add", mem, "--text", "fine", "--text", "a\x01b" + "x" * 5000], "text 2 of 2"),
        (["add", mem, "--file", bad_json], "bad.jsonl:2: not valid JSON"),
        (["add", mem, "--file", binary], "binary"),
        (["update", mem, "9", "--text", "new"], "no entry 9"),
        (["update", mem, "2", "--text", "new"], "entry 2 is deleted"),
        (["delete", mem, "2"], "already deleted"),
        (["delete", mem, "99"], "no entry 99"),
        (["rollback", mem, "7"], "no version 7 in this memory (versions 0..3)"),
        (["show", mem, "5"], "no entry 5"),
        (["list", tmp_path / "nowhere"], "memory folder not found"),
        (["add", tmp_path, "--text", "x"], "not a memory folder"),
        (["create", mem], "already a memory folder"),
    ]
    # (Each reader's refusals are in test_memory_facts.py; here: that the CLI reports them and writes nothing.)
    for argv, message in refused:
        one_line_error(run_cli("memory", *argv), message)
        assert db.read_bytes() == before, argv
    # argparse's refusals (not a number, no text given) exit 2 and touch nothing either.
    for argv in (["update", mem, "one", "--text", "x"], ["add", mem], ["rollback", mem, "v2"]):
        proc = run_cli("memory", *argv)
        assert proc.returncode == 2 and "Traceback" not in proc.stderr
        assert db.read_bytes() == before, argv
    assert lines(run_cli("memory", "list", mem)) == ["1\tone fact"]


@pytest.mark.parametrize("argv", [["memory"], ["memory", "nosuch", "x"]])
def test_memory_without_an_action_is_a_usage_error(argv):
    proc = run_cli(*argv)
    assert proc.returncode == 2 and "ACTION" in proc.stderr and "Traceback" not in proc.stderr
