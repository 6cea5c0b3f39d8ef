"""SFT data formats users bring: {"messages"}, ShareGPT/minimind {"conversations"}, Alpaca; one per file."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from helpers import TINY_MODEL, one_line_error

from llm_foundry.data.chat_formats import read_chat_records

CTX = 192
RECORDS = {
    "messages": [{"messages": [{"role": "user", "content": "What is 2 plus 3?"},
                               {"role": "assistant", "content": "Answer: 5"}]}],
    "sharegpt": [{"conversations": [{"from": "system", "value": "Be brief."},
                                    {"from": "human", "value": "What is 2 plus 3?"},
                                    {"from": "gpt", "value": "Answer: 5"}]}],
    "minimind": [{"conversations": [{"role": "user", "content": "What is 2 plus 3?"},
                                    {"role": "assistant", "content": "Answer: 5"}]}],
    "alpaca": [{"instruction": "Add the numbers.", "input": "2 and 3", "output": "Answer: 5"},
               {"instruction": "Say hi.", "input": "", "output": "Hi!"}],
}


def _write(path: Path, records: list) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def base_model(tmp_path_factory) -> Path:
    """A byte-level tiny model folder, pretrained two steps (the byte tokenizer has the chat tokens)."""
    from llm_foundry import Trainer
    from llm_foundry.config import load_config
    from llm_foundry.data import builtin_corpus, prepare_dataset

    root = tmp_path_factory.mktemp("formats_base")
    prepare_dataset(builtin_corpus()[:4], "byte", root / "data", val_fraction=0.1, show_progress=False)
    model_cfg, train_cfg = load_config("tiny", TINY_MODEL + [f"model.max_seq_len={CTX}", "max_steps=2", "batch_size=2",
                                                             "warmup_steps=1", "eval_batches=1", "checkpoint_interval=0"])
    Trainer(model_cfg, train_cfg, root / "data", root / "base", quiet=True).run()
    return root / "base"


def test_each_format_reads_as_the_same_conversation(tmp_path):
    expected = [{"role": "user", "content": "What is 2 plus 3?"}, {"role": "assistant", "content": "Answer: 5"}]
    found = {name: read_chat_records(_write(tmp_path / f"{name}.jsonl", recs)) for name, recs in RECORDS.items()}
    assert found["messages"] == ([expected], "messages")
    assert found["minimind"] == ([expected], "conversations")
    sharegpt, fmt = found["sharegpt"]
    assert fmt == "conversations" and sharegpt[0] == [{"role": "system", "content": "Be brief."}, *expected]
    alpaca, fmt = found["alpaca"]
    assert fmt == "alpaca" and alpaca[0] == [{"role": "user", "content": "Add the numbers.\n\n2 and 3"},
                                             {"role": "assistant", "content": "Answer: 5"}]
    assert alpaca[1][0] == {"role": "user", "content": "Say hi."}  # an empty input adds nothing


def test_mixed_and_bad_records_are_refused_with_the_line_number(tmp_path):
    from llm_foundry.utils.errors import FoundryError

    mixed = _write(tmp_path / "mixed.jsonl", RECORDS["messages"] + RECORDS["alpaca"])
    with pytest.raises(FoundryError, match=r"mixed.jsonl:2: a 'alpaca' record in a file of 'messages' records \(line 1\)"):
        read_chat_records(mixed)
    cases = {  # name: (a good first record, the bad second one, what the error says)
        "unknown": (RECORDS["messages"][0], {"text": "plain text"}, "expected a chat record"),
        "speaker": (RECORDS["sharegpt"][0], {"conversations": [{"from": "robot", "value": "hi"}]}, "speaker 'robot'"),
        "alpaca_type": (RECORDS["alpaca"][0], {"instruction": "x", "output": 5}, "must be strings"),
        "order": (RECORDS["sharegpt"][0], {"conversations": [{"from": "gpt", "value": "hi"}]}, "user"),
    }
    for name, (good, record, fragment) in cases.items():
        path = _write(tmp_path / f"{name}.jsonl", [good, record])
        line = 2
        with pytest.raises(FoundryError) as e:
            read_chat_records(path)
        assert f"{name}.jsonl:{line}:" in str(e.value) and fragment in str(e.value), str(e.value)


@pytest.mark.parametrize("name", sorted(RECORDS))
def test_each_format_trains(name, base_model, tmp_path):
    """`foundry sft --mix FILE=1` on a file of each format: it trains (the loss falls) and writes a model."""
    from llm_foundry.config.stages import stage_config_from_dict
    from llm_foundry.training.stages import run_stage

    data = _write(tmp_path / f"{name}.jsonl", RECORDS[name] * 4)
    cfg = stage_config_from_dict("sft", {"mixture": {str(data): 1}, "val_examples": 0, "train": {
        "max_steps": 6, "batch_size": 2, "warmup_steps": 0, "lr": 3e-3, "eval_interval": 0, "checkpoint_interval": 0,
        "log_interval": 1}})
    summary = run_stage(base_model, tmp_path / "out", cfg, quiet=True)
    losses = [json.loads(line)["loss"] for line in (tmp_path / "out" / "metrics.jsonl").read_text().splitlines()]
    assert summary["step"] == 6 and (tmp_path / "out" / "model.safetensors").is_file()
    assert losses[-1] < losses[0]


def test_cli_mixed_file_is_one_line(base_model, tmp_path, capsys):
    from llm_foundry.cli.main import main

    mixed = _write(tmp_path / "mixed.jsonl", RECORDS["sharegpt"] + RECORDS["messages"])
    capsys.readouterr()
    rc = main(["sft", str(base_model), "--out", str(tmp_path / "out"), "--mix", f"{mixed}=1", "--max-steps", "1", "--quiet"])
    err = capsys.readouterr().err
    one_line_error(subprocess.CompletedProcess([], rc, "", err), "mixed.jsonl:2:", "one file holds one format")
