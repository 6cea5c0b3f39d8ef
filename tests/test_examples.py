"""The numbered examples in examples/ run, in tiny mode, and do what they say.

Each example runs as a user would run it (`python examples/0N_....py --tiny --out DIR`)
in a subprocess; the assertions parse its output and its files, and recompute what
can be recomputed instead of trusting the example's own verdict.
"""

from __future__ import annotations

import ast
import json
import math
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples"
NAMES = ["01_basic_training", "02_custom_data", "03_generation_sampling", "04_fine_tuning", "05_tokenizers"]


def run_example(name: str, out: Path, *extra: str, timeout: float = 120, tiny_env: bool = False) -> subprocess.CompletedProcess:
    """Run an example in tiny mode: with ``--tiny``, or with FOUNDRY_EXAMPLES_TINY=1 if ``tiny_env``."""
    # One OpenMP thread: these models are tiny, and two spinning threads on a busy
    # 2-core machine are many times slower than one.
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONIOENCODING": "utf-8"}
    env.pop("FOUNDRY_EXAMPLES_TINY", None)
    if tiny_env:
        env["FOUNDRY_EXAMPLES_TINY"] = "1"
    flags = [] if tiny_env else ["--tiny"]
    proc = subprocess.run([sys.executable, str(EXAMPLES / f"{name}.py"), *flags, "--out", str(out), *extra],
                          cwd=ROOT, capture_output=True, text=True, encoding="utf-8", timeout=timeout, env=env)
    assert proc.returncode == 0, f"{name} exited {proc.returncode}\n--- stdout\n{proc.stdout}\n--- stderr\n{proc.stderr}"
    return proc


def quoted(line_prefix: str, stdout: str) -> str:
    """The JSON-quoted text printed after ``line_prefix`` (the examples print samples that way)."""
    for line in stdout.splitlines():
        if line.startswith(line_prefix):
            return json.loads(line[len(line_prefix):].strip())
    raise AssertionError(f"no line starting with {line_prefix!r} in:\n{stdout}")


def assert_model_folder(path: Path) -> None:
    for f in ("config.json", "model.safetensors", "tokenizer.json"):
        assert (path / f).is_file(), f"{path} lacks {f}"


@pytest.mark.parametrize("name", NAMES)
def test_example_is_documented_and_runnable(name):
    source = (EXAMPLES / f"{name}.py").read_text(encoding="utf-8")
    tree = ast.parse(source)
    doc = ast.get_docstring(tree)
    assert doc and f"python examples/{name}.py" in doc
    assert "--tiny" in doc and "FOUNDRY_EXAMPLES_TINY" in doc
    assert any(isinstance(n, ast.FunctionDef) and n.name == "main" for n in tree.body)
    assert 'if __name__ == "__main__":' in source
    assert "../shared" not in source and "http" not in source  # built-in text only, no downloads
    readme = (EXAMPLES / "README.md").read_text(encoding="utf-8")
    assert f"{name}.py" in readme


@pytest.mark.slow
def test_01_basic_training(tmp_path):
    out = tmp_path / "ex01"
    proc = run_example("01_basic_training", out)
    vocab = int(re.search(r"vocab (\d+)", proc.stdout).group(1))
    m = re.search(r"val loss (\d+\.\d+) nats/token \| perplexity (\d+\.\d+) \| (\d+\.\d+) bits/byte", proc.stdout)
    assert m, proc.stdout
    loss, ppl = float(m.group(1)), float(m.group(2))
    assert loss < math.log(vocab), "the trained model should beat a uniform guess"
    assert ppl == pytest.approx(math.exp(loss), rel=1e-3)
    run = out / "run"
    assert_model_folder(run)
    records = [json.loads(x) for x in (run / "metrics.jsonl").read_text(encoding="utf-8").splitlines()]
    train_losses = [r["loss"] for r in records if "loss" in r]
    assert train_losses[-1] < train_losses[0]
    assert [r for r in records if "val_loss" in r][-1]["val_loss"] == pytest.approx(loss, abs=1e-3)
    assert quoted("    sample:", proc.stdout).startswith("The if statement")
    # A re-run replaces the folder it made itself ...
    run_example("01_basic_training", out)
    # ... but refuses to wipe one it did not make.
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "keep.txt").write_text("precious", encoding="utf-8")
    proc = subprocess.run([sys.executable, str(EXAMPLES / "01_basic_training.py"), "--tiny", "--out", str(foreign)],
                          cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert proc.returncode != 0 and (foreign / "keep.txt").read_text(encoding="utf-8") == "precious"


@pytest.mark.slow
def test_02_custom_data(tmp_path):
    out = tmp_path / "ex02"
    proc = run_example("02_custom_data", out)
    inputs = out / "inputs"
    txt_files = list((inputs / "my_texts").rglob("*.txt"))
    jsonl_lines = [json.loads(x) for x in (inputs / "sentences.jsonl").read_text(encoding="utf-8").splitlines()]
    assert any(re.search(r"[\u4e00-\u9fff]", r["text"]) for r in jsonl_lines), "the jsonl should hold Chinese"
    # One document per .txt file and per jsonl line; the binary file is skipped with a warning.
    m = re.search(r"read (\d+) documents: (\d+) from \.txt files, (\d+) from \.jsonl lines", proc.stdout)
    assert m and (int(m.group(2)), int(m.group(3))) == (len(txt_files), len(jsonl_lines))
    assert "photo.jpg" in proc.stderr and "binary" in proc.stderr
    meta = json.loads((out / "data" / "meta.json").read_text(encoding="utf-8"))
    assert meta["tokenizer"] == "bpe"
    assert meta["splits"]["train"]["documents"] + meta["splits"]["val"]["documents"] == int(m.group(1))
    assert proc.stdout.count("round-trip OK") == 2
    loss = float(re.search(r"val loss (\d+\.\d+) nats/token", proc.stdout).group(1))
    assert 0 < loss < math.log(meta["vocab_size"])
    assert_model_folder(out / "run")
    samples = re.findall(r"^\[5\] sample: (.*)$", proc.stdout, re.M)
    assert len(samples) == 2 and json.loads(samples[1]).startswith("今天")


@pytest.mark.slow
def test_03_generation_sampling(tmp_path):
    out = tmp_path / "ex03"
    proc = run_example("03_generation_sampling", out)
    s = proc.stdout
    greedy = quoted("[1] greedy (run 1):", s)
    assert len(greedy) > 0
    assert quoted("[1] greedy (run 2):", s) == greedy
    assert quoted("[3] top_k=1:", s) == greedy
    a1, a2, b = quoted("[5] seed 42 (run 1):", s), quoted("[5] seed 42 (run 2):", s), quoted("[5] seed 43:", s)
    assert a1 == a2 and a1 != b
    # Stop strings: the stopped text is the unstopped one (same seed) cut before the first stop.
    full = quoted("[4] no stop (seed 7):", s)
    stopped = quoted('[4] stop=[".", "\\n\\n"] (seed 7):', s)
    cut = min((full.find(x) for x in (".", "\n\n") if x in full), default=len(full))
    assert stopped == full[:cut]
    mid, stopped_mid = quoted("[4] stop string from mid-text:", s), quoted("[4] stopped there (seed 7):", s)
    assert mid and mid in full and stopped_mid == full[:full.find(mid)] and len(stopped_mid) < len(full)
    # Streaming: pieces joined equal generate() with the same settings.
    assert quoted("[6] streamed, joined:", s) == quoted("[6] generate(), same seed:", s)
    assert quoted("[6] streamed, same mid stop:", s) == stopped_mid
    assert int(re.search(r"\[6\] (\d+) pieces streamed", s).group(1)) > 1
    assert "FAILED" not in s and s.count(": OK") == 6
    # --model reuses an existing model folder instead of training one.
    proc2 = run_example("03_generation_sampling", tmp_path / "unused", "--model", str(out / "run"))
    assert quoted("[1] greedy (run 1):", proc2.stdout) == greedy
    assert not (tmp_path / "unused").exists()


@pytest.mark.slow
def test_04_fine_tuning(tmp_path):
    out = tmp_path / "ex04"
    proc = run_example("04_fine_tuning", out)
    before = float(re.search(r"loss on new text before: (\d+\.\d+)", proc.stdout).group(1))
    after = float(re.search(r"loss on new text after: (\d+\.\d+)", proc.stdout).group(1))
    assert after < before
    for folder in ("base", "finetuned", "scratch"):
        assert_model_folder(out / folder)
    # The fine-tuned run started from the base weights: same shape, same tokenizer, and
    # its run config names the base model.
    cfg = lambda d: json.loads((out / d / "config.json").read_text(encoding="utf-8"))  # noqa: E731
    drop = {"llm_foundry_version"}
    assert {k: v for k, v in cfg("finetuned").items() if k not in drop} == {k: v for k, v in cfg("base").items() if k not in drop}
    assert (out / "finetuned" / "tokenizer.json").read_bytes() == (out / "base" / "tokenizer.json").read_bytes()
    run_config = json.loads((out / "finetuned" / "run_config.json").read_text(encoding="utf-8"))
    assert Path(run_config["init_from"]).resolve() == (out / "base").resolve()
    assert json.loads((out / "scratch" / "run_config.json").read_text(encoding="utf-8")).get("init_from") is None


@pytest.mark.slow
def test_05_tokenizers(tmp_path):
    out = tmp_path / "ex05"
    proc = run_example("05_tokenizers", out)
    s = proc.stdout
    rows = re.findall(r"^roundtrip (\S+)\s+(\S+)\s+(OK|LOSSY)", s, re.M)
    results = {(tok, sample): verdict for tok, sample, verdict in rows}
    for tok in ("byte", "char", "bpe"):
        for sample in ("english", "chinese", "emoji", "mixed"):
            assert results[(tok, sample)] == "OK", (tok, sample)
    assert results[("char(new)", "chinese")] == "LOSSY"  # unseen characters -> <|unk|>
    assert "ids of known characters unchanged: OK" in s
    # Token counts: byte = UTF-8 bytes, char = characters, BPE compresses English.
    table = re.findall(r"^\s+(english|chinese|emoji|mixed)\s+(\d+)\s+(\d+)\s+(\d+)\s+(\d+)\s+(\d+)$", s, re.M)
    assert len(table) == 4
    for sample, chars, nbytes, n_byte, n_char, n_bpe in table:
        assert n_byte == nbytes and n_char == chars
        if sample == "english":
            assert int(n_bpe) < int(n_char)
    # Save/load: files on disk load back to tokenizers that give the same ids.
    assert len(re.findall(r"^save/load \w+ .* ids identical: OK$", s, re.M)) == 3
    from llm_foundry import load_tokenizer

    bpe = load_tokenizer(out / "bpe_tokenizer.json")
    text = "分词器 🚀 tokenizers"
    assert bpe.kind == "bpe" and bpe.decode(bpe.encode(text)) == text
    assert load_tokenizer(out / "char_tokenizer.json").kind == "char"


@pytest.mark.slow
def test_tiny_mode_by_environment_variable(tmp_path):
    proc = run_example("05_tokenizers", tmp_path / "ex05env", tiny_env=True)
    assert proc.stdout.startswith("mode: tiny") and "bpe: vocab 512," in proc.stdout
