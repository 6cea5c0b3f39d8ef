"""lm-evaluation-harness on an exported model: a local task file and a local dataset, no download.

The real client: `lm_eval` runs as its own process on the folder `foundry export --format hf`
wrote, and every log-likelihood it reports equals the one our model computes for the same text.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from helpers import TINY_MODEL, run_cli

pytest.importorskip("lm_eval", reason="lm-evaluation-harness is not installed: pip install 'llm-foundry[lm-eval]'")
pytest.importorskip("transformers", reason="the exported model loads with transformers: pip install 'llm-foundry[hf]'")

TASK_YAML = """task: foundry_arith
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}
test_split: test
output_type: multiple_choice
doc_to_text: "{{{{question}}}}"
doc_to_choice: "{{{{choices}}}}"
doc_to_target: "{{{{label}}}}"
metric_list:
  - metric: acc
"""


def _questions(n: int) -> list[dict]:
    """Arithmetic questions with four numeric choices, the right one at a varying place."""
    import random

    rng = random.Random(0)
    docs = []
    for i in range(n):
        a, b = rng.randint(1, 20), rng.randint(1, 20)
        wrong = rng.sample([a + b + d for d in (-3, -2, -1, 1, 2, 3)], 3)
        label = i % 4
        choices = wrong[:label] + [a + b] + wrong[label:]
        docs.append({"question": f"{a}+{b}=", "choices": [str(c) for c in choices], "label": label})
    return docs


@pytest.fixture(scope="module")
def exported(tmp_path_factory) -> tuple[Path, Path]:
    from llm_foundry import Trainer
    from llm_foundry.config import load_config
    from llm_foundry.data import builtin_corpus, prepare_dataset

    root = tmp_path_factory.mktemp("lm_eval")
    prepare_dataset(builtin_corpus()[:4], "byte", root / "data", val_fraction=0.1, show_progress=False)
    model_cfg, train_cfg = load_config("tiny", TINY_MODEL + ["max_steps=3", "batch_size=2", "warmup_steps=1",
                                                             "eval_batches=1", "checkpoint_interval=0"])
    Trainer(model_cfg, train_cfg, root / "data", root / "model", quiet=True).run()
    proc = run_cli("export", str(root / "model"), "--format", "hf", "--out", str(root / "hf"))
    assert proc.returncode == 0, proc.stderr
    return root / "model", root / "hf"


@pytest.mark.slow  # lm_eval's imports alone take most of a minute on a busy CPU
def test_lm_eval_runs_a_local_task_and_agrees_with_our_loglikelihoods(exported, tmp_path):
    model_dir, hf_dir = exported
    docs = _questions(12)
    data = tmp_path / "arith.jsonl"
    data.write_text("".join(json.dumps(d) + "\n" for d in docs), encoding="utf-8")
    tasks = tmp_path / "tasks"
    tasks.mkdir()
    (tasks / "foundry_arith.yaml").write_text(TASK_YAML.format(data=data), encoding="utf-8")
    # Offline: nothing may be fetched; the dataset cache goes to the test's own folder.
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
           "HF_HOME": str(tmp_path / "hf_home"), "TOKENIZERS_PARALLELISM": "false"}
    proc = subprocess.run([sys.executable, "-m", "lm_eval", "--model", "hf",
                           "--model_args", f"pretrained={hf_dir},dtype=float32", "--tasks", "foundry_arith",
                           "--include_path", str(tasks), "--device", "cpu", "--batch_size", "4",
                           "--output_path", str(tmp_path / "results"), "--log_samples"],
                          capture_output=True, text=True, timeout=600, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    samples_file = next((tmp_path / "results").rglob("samples_foundry_arith_*.jsonl"))
    samples = [json.loads(line) for line in samples_file.read_text().splitlines()]
    assert len(samples) == len(docs)

    # Our own model on the same requests: context = the question, continuation = " " + choice.
    from llm_foundry.models.model_dir import load_model_dir

    bundle = load_model_dir(model_dir)
    model, tok = bundle.model.eval(), bundle.tokenizer
    correct = 0
    for s in samples:
        doc = s["doc"]
        ours = []
        for choice in doc["choices"]:
            ctx, cont = tok.encode(doc["question"]), tok.encode(" " + choice)
            ids = torch.tensor([ctx + cont])
            with torch.no_grad():
                logp = torch.log_softmax(model(ids[:, :-1])[0].float(), dim=-1)[0]
            ours.append(float(sum(logp[len(ctx) - 1 + i, t] for i, t in enumerate(cont))))
        theirs = [float(r[0][0]) for r in s["resps"]]
        assert theirs == pytest.approx(ours, abs=1e-3)
        correct += max(range(len(ours)), key=ours.__getitem__) == doc["label"]
    results = json.loads(next((tmp_path / "results").rglob("results_*.json")).read_text())
    assert results["results"]["foundry_arith"]["acc,none"] == pytest.approx(correct / len(docs))
