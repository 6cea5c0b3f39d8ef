"""The `foundry` command as a user meets it: the core path and every kind of bad input."""

import json
import subprocess
import sys

import pytest

import llm_foundry

from helpers import TINY_MODEL, chinese_text, english_text, one_line_error, run_cli
from llm_foundry.cli.main import COMMANDS


def test_help_everywhere():
    proc = run_cli("--help")
    assert proc.returncode == 0 and all(c in proc.stdout for c in COMMANDS)
    for cmd in COMMANDS:
        proc = run_cli(cmd, "--help")
        assert proc.returncode == 0 and "usage: foundry " + cmd in proc.stdout
    assert run_cli("--version").stdout.startswith("llm-foundry ")


def test_help_and_the_package_start_without_pytorch():
    # Importing PyTorch takes 2-3 s on a slow CPU: `foundry --help` and `import llm_foundry` must
    # not pay it, while the public names still resolve (loaded on first use).
    probe = ("import sys, llm_foundry, llm_foundry.cli.main as m; m.build_parser(); "
             "assert 'torch' not in sys.modules, 'torch imported'; "
             "from llm_foundry import MiniLLM, Trainer, ModelConfig, __version__; "
             "from llm_foundry.training import TrainingInterrupted, EMA; "
             "from llm_foundry.utils.errors import TrainingInterrupted as T; assert T is TrainingInterrupted; "
             "print(MiniLLM.__name__, Trainer.__name__, 'torch' in sys.modules)")
    proc = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True)
    assert proc.returncode == 0 and proc.stdout.split() == ["MiniLLM", "Trainer", "True"], proc.stderr
    with pytest.raises(AttributeError, match="no attribute 'Nothing'"):
        llm_foundry.Nothing


@pytest.mark.slow
def test_prepare_train_generate_eval(tmp_path):
    text = tmp_path / "zh.txt"
    text.write_text(chinese_text(30_000), encoding="utf-8")
    data, run = tmp_path / "data", tmp_path / "run"
    proc = run_cli("prepare", text, "--tokenizer", "byte", "--val-fraction", "0.1", "--out", data)
    assert proc.returncode == 0, proc.stderr
    meta = json.loads((data / "meta.json").read_text())
    assert meta["tokenizer"] == "byte" and meta["splits"]["val"]["tokens"] > 0
    proc = run_cli("train", "--config", "tiny", "--data", data, "--out", run, "--max-steps", "20", "--quiet",
                   *TINY_MODEL, "batch_size=8", "eval_interval=10")
    assert proc.returncode == 0, proc.stderr
    proc = run_cli("generate", run, "--prompt", "床前明月光", "--max-new-tokens", "30", "--seed", "1")
    assert proc.returncode == 0 and proc.stdout.startswith("床前明月光"), proc.stderr
    val = tmp_path / "val.txt"
    val.write_text(text.read_text(encoding="utf-8")[-3000:], encoding="utf-8")
    proc = run_cli("eval", run, "--data", val, "--json")
    assert proc.returncode == 0, proc.stderr
    m = json.loads(proc.stdout)
    assert m["bytes"] == len(val.read_bytes()) and 0 < m["bits_per_byte"] < 9 and m["perplexity"] > 1


@pytest.mark.parametrize("content, fragment", [
    (None, "not found"),
    (b"", "empty"),
    (b"\x7fELF\x02\x01\x01\x00\x00\x00", "binary"),
    ("gbk 中文".encode("gbk"), "not UTF-8"),
])
def test_prepare_bad_files(tmp_path, content, fragment):
    f = tmp_path / "in.txt"
    if content is not None:
        f.write_bytes(content)
    one_line_error(run_cli("prepare", f, "--out", tmp_path / "d"), fragment)
    assert not (tmp_path / "d" / "meta.json").exists()


def test_prepare_empty_folder(tmp_path):
    (tmp_path / "empty").mkdir()
    one_line_error(run_cli("prepare", tmp_path / "empty", "--out", tmp_path / "d"), "no readable text")


def test_train_bad_config_and_data(tmp_path, shakespeare_data):
    one_line_error(run_cli("train", "--data", shakespeare_data, "--out", tmp_path / "r", "model.wings=2"), "unknown config key")
    one_line_error(run_cli("train", "--data", shakespeare_data, "--out", tmp_path / "r", "--config", "nope"), "unknown preset")
    one_line_error(run_cli("train", "--data", tmp_path / "missing", "--out", tmp_path / "r"), "data folder not found")
    one_line_error(run_cli("train", "--data", shakespeare_data, "--out", tmp_path / "r", "--resume"), "nothing to resume")


def test_checkpoint_from_another_architecture(tmp_path, trained_run):
    import shutil

    other = tmp_path / "other"
    shutil.copytree(trained_run, other)
    cfg = json.loads((other / "config.json").read_text())
    cfg["n_layers"] = 3
    (other / "config.json").write_text(json.dumps(cfg))
    text = tmp_path / "en.txt"
    text.write_text(english_text(10_000), encoding="utf-8")
    one_line_error(run_cli("eval", other, "--data", text), "do not match")


def test_generate_with_unseen_characters_warns_and_works(trained_run):
    proc = run_cli("generate", trained_run, "--prompt", "ROMEO 你好", "--max-new-tokens", "10", "--temperature", "0")
    assert proc.returncode == 0 and proc.stdout.startswith("ROMEO 你好")
    assert "unknown to the tokenizer" in proc.stderr and "<|unk|>" in proc.stderr


@pytest.mark.slow
def test_compiled_generation_gives_the_same_greedy_text(trained_run):
    args = ("generate", trained_run, "--prompt", "ROMEO:", "--max-new-tokens", "40", "--temperature", "0", "--precision", "fp32")
    plain, compiled = run_cli(*args), run_cli(*args, "--compile")
    assert plain.returncode == 0 and compiled.returncode == 0, compiled.stderr
    assert compiled.stdout == plain.stdout and len(plain.stdout) > len("ROMEO:")


def test_generate_bad_options(trained_run):
    one_line_error(run_cli("generate", trained_run, "--prompt", "A", "--top-p", "1.5"), "--top-p")
    one_line_error(run_cli("generate", trained_run / "nope", "--prompt", "A"), "model folder not found")


@pytest.mark.slow
def test_overrides_anywhere_and_init_from_guards(tmp_path, shakespeare_data, trained_run):
    # key=value between options works like at the end.
    proc = run_cli("train", "--data", shakespeare_data, "--out", tmp_path / "r", *TINY_MODEL, "max_steps=2",
                   "--quiet", "batch_size=4", "eval_interval=0")
    assert proc.returncode == 0, proc.stderr
    cfg = json.loads((tmp_path / "r" / "run_config.json").read_text())
    assert cfg["train"]["batch_size"] == 4 and cfg["train"]["max_steps"] == 2
    # A bare model key with --init-from would be silently ignored: refuse it.
    one_line_error(run_cli("train", "--data", shakespeare_data, "--out", tmp_path / "f", "--init-from", trained_run,
                           "dim=32"), "model overrides are not allowed")
    proc = run_cli("train", "--data", shakespeare_data, "--out", tmp_path / "g", "--bogus")
    assert proc.returncode == 2 and "unrecognized arguments: --bogus" in proc.stderr and "Traceback" not in proc.stderr
