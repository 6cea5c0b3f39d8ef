"""The single-page teaching copies in tutorials/ must stay faithful to the package.

One tiny run of ``tutorials/train.py`` (as a learner would start it, in a subprocess)
is checked against the package: its model folder loads with ``load_model_dir``, its
model computes the same logits as the package's MiniLLM, and ``tutorials/generate.py``
writes exactly what ``foundry generate`` writes for the same settings.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import math
import os
import random
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors import safe_open

from llm_foundry.cli.main import main as foundry
from llm_foundry.config import ModelConfig
from llm_foundry.models import MiniLLM
from llm_foundry.tokenizers import CharTokenizer, load_tokenizer
from llm_foundry.models.model_dir import load_model_dir

ROOT = Path(__file__).resolve().parents[1]
TRAIN, GENERATE = ROOT / "tutorials" / "train.py", ROOT / "tutorials" / "generate.py"
STEPS = 30


def _corpus() -> str:
    # Small and repetitive, so 30 steps visibly learn something; the Chinese words make sure
    # non-ASCII characters survive the whole round trip.
    rng = random.Random(0)
    who, verb, what = ["the cat", "a dog", "my friend", "the old man", "小猫"], ["sees", "likes", "eats", "finds"], \
        ["the fish", "a red ball", "some bread", "the moon", "苹果"]
    return "".join(f"{rng.choice(who)} {rng.choice(verb)} {rng.choice(what)}.\n" for _ in range(1200))


def _run(*args: object) -> subprocess.CompletedProcess:
    # One thread: these models are tiny, and on a busy 2-core machine two spinning
    # OpenMP threads can make a step a hundred times slower.
    env = {**os.environ, "PYTHONIOENCODING": "utf-8", "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, *map(str, args)], capture_output=True, text=True, encoding="utf-8",
                          env=env, timeout=300)


def _import(path: Path, name: str):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up while the class is built
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """(model folder, the training text file, train.py's stdout) of one tiny tutorial run."""
    tmp = tmp_path_factory.mktemp("tutorial")
    data, out = tmp / "text.txt", tmp / "model"
    data.write_text(_corpus(), encoding="utf-8")
    r = _run(TRAIN, "--data", data, "--out", out, "--steps", STEPS, "--dim", 64, "--n-layers", 2, "--n-heads", 4,
             "--n-kv-heads", 2, "--seq-len", 64, "--batch-size", 16, "--lr", 3e-3, "--seed", 0)
    assert r.returncode == 0, r.stderr
    return out, data, r.stdout


@pytest.fixture(scope="module")
def modules():
    return _import(TRAIN, "tutorial_train"), _import(GENERATE, "tutorial_generate")


def test_training_lowers_the_loss(run):
    out, data, stdout = run
    val = [(int(s), float(v)) for s, v in re.findall(r"step\s+(\d+) \| val loss ([\d.]+)", stdout)]
    train = [float(v) for v in re.findall(r"step\s+\d+ \| loss ([\d.]+)", stdout)]
    assert val[0][0] == 0 and val[-1][0] == STEPS, stdout
    vocab = len(json.loads((out / "tokenizer.json").read_text(encoding="utf-8"))["tokens"])
    # Untrained, every id is about equally likely; after 30 steps the model knows the common characters.
    assert abs(val[0][1] - math.log(vocab)) < 0.3, stdout
    assert val[-1][1] < val[0][1] - 1.0, stdout
    assert len(train) >= 10 and train[-1] < train[0] - 1.0, stdout


def test_model_folder_has_the_package_format(run):
    out, data, _ = run
    assert sorted(p.name for p in out.iterdir()) == ["config.json", "model.safetensors", "tokenizer.json"]  # no temp litter
    config = json.loads((out / "config.json").read_text(encoding="utf-8"))
    fields = [f.name for f in dataclasses.fields(ModelConfig)]
    assert list(config) == ["architecture", "llm_foundry_version", *fields]
    assert config["architecture"] == "MiniLLM" and config["llm_foundry_version"] == "0.1.0"
    assert (config["dim"], config["n_layers"], config["n_heads"], config["n_kv_heads"], config["max_seq_len"]) == (64, 2, 4, 2, 64)

    tok = json.loads((out / "tokenizer.json").read_text(encoding="utf-8"))
    assert tok["llm_foundry_tokenizer"] == "char" and tok["version"] == 1
    assert tok["special_tokens"] == ["<|pad|>", "<|unk|>"] and tok["tokens"][:2] == ["<|pad|>", "<|unk|>"]
    assert set(tok["tokens"][2:]) == set(data.read_text(encoding="utf-8"))
    package_tok = load_tokenizer(out / "tokenizer.json")
    assert isinstance(package_tok, CharTokenizer) and package_tok.to_dict() == tok
    assert package_tok.decode(package_tok.encode("小猫 eats 苹果.")) == "小猫 eats 苹果."

    cfg = ModelConfig(**{k: v for k, v in config.items() if k in fields})
    want = set(MiniLLM(cfg).state_dict()) - {"output.weight"}  # tied: the head is stored once
    with safe_open(str(out / "model.safetensors"), framework="pt") as f:
        assert set(f.keys()) == want
        assert f.metadata() == {"step": str(STEPS), "format": "pt"}
        assert all(f.get_tensor(k).dtype == torch.float32 for k in f.keys())


def test_tutorial_models_compute_the_package_logits(run, modules):
    out, _, _ = run
    train_mod, gen_mod = modules
    bundle = load_model_dir(out)
    assert bundle.step == STEPS and bundle.tokenizer.vocab_size == bundle.model.cfg.vocab_size
    package = bundle.model.eval()
    cfg = package.cfg
    idx = torch.randint(2, cfg.vocab_size, (2, cfg.max_seq_len), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        want = package(idx)[0]

        # train.py's model, given the saved weights.
        model = train_mod.MiniLLM(train_mod.ModelConfig(**dataclasses.asdict(cfg))).eval()
        with safe_open(str(out / "model.safetensors"), framework="pt") as f:
            state = {k: f.get_tensor(k) for k in f.keys()}
        state["output.weight"] = state["tok_embeddings.weight"]
        model.load_state_dict(state)
        assert torch.allclose(model(idx)[0], want, atol=1e-4, rtol=0)

        # generate.py's model, loaded by generate.py's own loader: whole sequence at once...
        gmodel, itos, specials = gen_mod.load_model_dir(str(out), torch.device("cpu"))
        assert itos == bundle.tokenizer.itos and specials == {"<|pad|>": 0, "<|unk|>": 1}
        row = idx[:1]
        full = gmodel(row, gen_mod.KVCache(gmodel.cfg, torch.device("cpu")))
        assert torch.allclose(full, want[:1], atol=1e-4, rtol=0)
        # ...and through its KV cache: a prefill, then one token at a time, must agree.
        cache = gen_mod.KVCache(gmodel.cfg, torch.device("cpu"))
        steps = [gmodel(row[:, :40], cache, last_only=True)]
        steps += [gmodel(row[:, i:i + 1], cache) for i in range(40, cfg.max_seq_len)]
        assert cache.pos == cfg.max_seq_len
        assert torch.allclose(torch.cat(steps, dim=1), want[:1, 39:], atol=1e-4, rtol=0)


def test_tutorial_init_matches_the_package(modules):
    train_mod, _ = modules
    torch.manual_seed(0)
    model = train_mod.MiniLLM(train_mod.ModelConfig(vocab_size=512, dim=256, n_layers=8, n_heads=8, n_kv_heads=2))
    assert set(model.state_dict()) == set(MiniLLM(ModelConfig(vocab_size=512, dim=256, n_layers=8, n_heads=8,
                                                                n_kv_heads=2)).state_dict())
    residual = 0.02 / math.sqrt(2 * 8)
    for name, p in model.named_parameters():
        if p.ndim == 1:
            assert torch.all(p == 1), name
        else:
            want = residual if name.endswith(("attn.wo.weight", "ffn.w2.weight")) else 0.02
            assert abs(p.std().item() - want) < 0.1 * want and abs(p.mean().item()) < 0.1 * want, name


def _package_generate(capsys, out: Path, *args: str) -> str:
    capsys.readouterr()
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as in _run; restored for the tests that follow
    try:
        assert foundry(["generate", str(out), "--precision", "fp32", "--no-echo", *args]) == 0
    finally:
        torch.set_num_threads(threads)
    return capsys.readouterr().out


@pytest.mark.parametrize("args", [
    ["--prompt", "the cat ", "--temperature", "0", "--max-new-tokens", "20"],
    ["--prompt", "a dog ", "--temperature", "1.0", "--max-new-tokens", "40", "--seed", "7"],
    ["--prompt", "my friend ", "--temperature", "0.8", "--top-k", "5", "--top-p", "0.9", "--max-new-tokens", "40", "--seed", "3"],
    # A prompt near the 64-token context, so generation runs past it and the cache is rebuilt.
    ["--prompt", "the old man likes the moon.\nthe cat sees a red ball.\n小猫 eats ", "--temperature", "1.0",
     "--max-new-tokens", "60", "--seed", "1"],
], ids=["greedy", "sampled", "top-k-top-p", "past-the-context"])
def test_generate_writes_what_the_package_writes(run, capsys, args):
    out, _, _ = run
    r = _run(GENERATE, out, *args)
    assert r.returncode == 0, r.stderr
    expected = _package_generate(capsys, out, *args)
    assert r.stdout == expected
    new = int(args[args.index("--max-new-tokens") + 1])
    assert len(r.stdout) == new + 1  # every new token is a visible character (no pad/unk), then a newline


def test_generate_on_a_missing_folder_is_a_one_line_error(tmp_path):
    r = _run(GENERATE, tmp_path / "nope", "--prompt", "x")
    assert r.returncode != 0 and r.stdout == ""
    assert "Traceback" not in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1 and r.stderr.startswith("error:") and "nope" in r.stderr


def test_generate_refuses_other_tokenizers(run, tmp_path):
    out, _, _ = run
    other = tmp_path / "byte-model"
    shutil.copytree(out, other)
    (other / "tokenizer.json").write_text(json.dumps({"llm_foundry_tokenizer": "byte", "version": 1}), encoding="utf-8")
    r = _run(GENERATE, other, "--prompt", "x")
    assert r.returncode != 0 and "Traceback" not in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1 and "char tokenizer" in r.stderr
