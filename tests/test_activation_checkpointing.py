"""`train.activation_checkpointing=true`: the same training for less activation memory.

Each block keeps only its input for the backward pass and runs again there. What a user relies on:
the gradients (so the run) are those of a model without it, and the memory kept between the forward
and the backward pass is smaller. The memory is measured, not assumed: every tensor autograd saves
during the forward pass goes through ``saved_tensors_hooks``, which adds up its bytes.
"""

from __future__ import annotations

import json

import torch

from helpers import english_text, run_cli

MODEL = ["model.dim=32", "model.n_layers=2", "model.n_heads=2", "model.max_seq_len=32"]
TRAIN = ["device=cpu", "batch_size=2", "log_interval=1", "eval_interval=0", "eval_batches=1",
         "checkpoint_interval=0", "warmup_steps=1", "max_steps=4", "--quiet"]


def forward_backward(checkpointing: bool) -> tuple[int, list[torch.Tensor]]:
    """Bytes autograd keeps after one forward pass of a small model, and its gradients after backward."""
    from llm_foundry.config import ModelConfig
    from llm_foundry.models.minillm import MiniLLM

    torch.manual_seed(0)
    model = MiniLLM(ModelConfig(vocab_size=64, dim=64, n_layers=4, n_heads=4, max_seq_len=64)).train()
    model.activation_checkpointing = checkpointing
    idx = torch.randint(0, 64, (4, 64), generator=torch.Generator().manual_seed(1))
    kept = 0

    def pack(t: torch.Tensor) -> torch.Tensor:
        nonlocal kept
        kept += t.numel() * t.element_size()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        _, loss = model(idx[:, :-1], idx[:, 1:])
    saved = kept
    loss.backward()
    return saved, [p.grad for p in model.parameters()]


def test_checkpointing_keeps_less_and_computes_the_same_gradients():
    kept_plain, grads_plain = forward_backward(False)
    kept_ckpt, grads_ckpt = forward_backward(True)
    # The checkpoint keeps each block's input itself, out of the hooks' sight: add it (4 blocks, batch 4,
    # 63 positions, dim 64, float32; the rotary tables are views of the model's buffers).
    kept_ckpt += 4 * (4 * 63 * 64 * 4)
    # Recomputing a block runs the same operations on the same inputs: the same gradients, to float rounding.
    assert all(torch.allclose(a, b, rtol=1e-5, atol=1e-7) for a, b in zip(grads_plain, grads_ckpt))
    # Four blocks keep their inputs only: a fraction of what they keep otherwise (measured: 0.11).
    assert kept_ckpt < 0.3 * kept_plain, (kept_ckpt, kept_plain)


def test_a_run_with_checkpointing_trains_the_same(tmp_path):
    from llm_foundry.data import Document, prepare_dataset

    data = tmp_path / "data"
    prepare_dataset([Document(english_text(20_000), "pydoc")], "char", data, val_fraction=0.1, show_progress=False)
    runs = {}
    for flag in ("false", "true"):
        out = tmp_path / f"run_{flag}"
        proc = run_cli("train", "--data", data, "--out", out, *MODEL, *TRAIN, f"activation_checkpointing={flag}")
        assert proc.returncode == 0, proc.stderr
        records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
        runs[flag] = [r["loss"] for r in records if "loss" in r]
    assert len(runs["true"]) == 4 and runs["true"] == runs["false"]
