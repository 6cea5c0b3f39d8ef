import re

import pytest

from llm_foundry.config import ModelConfig, TrainConfig, list_presets, load_config
from llm_foundry.utils.errors import FoundryError


def test_presets_match_the_source_designs():
    assert {"tiny", "small", "tinygpt", "h2q"} <= set(list_presets())
    m, _ = load_config("tinygpt")
    assert (m.dim, m.n_heads, m.n_layers, m.max_seq_len) == (256, 8, 4, 256)
    m, t = load_config("h2q")
    assert (m.dim, m.n_heads, m.n_layers, m.max_seq_len) == (256, 8, 6, 512)
    assert (t.lr, t.batch_size, t.grad_clip, t.schedule) == (1e-4, 8, 1.0, "cosine")


def test_base_preset_is_a_100m_model_for_one_gpu():
    import dataclasses

    import torch

    from llm_foundry import MiniLLM

    m, t = load_config("base")
    with torch.device("meta"):  # counted, not allocated
        model = MiniLLM(dataclasses.replace(m, vocab_size=16000))
    assert 90e6 < model.num_parameters() < 110e6
    assert t.compile and t.precision == "auto"  # bf16 where the hardware has it


def test_overrides_with_and_without_section():
    m, t = load_config("tiny", ["model.dim=96", "lr=3e-4", "qk_norm=true", "time_budget=none", "n_kv_heads=2"])
    assert m.dim == 96 and t.lr == pytest.approx(3e-4) and m.qk_norm is True and t.time_budget is None
    assert m.kv_heads == 2


@pytest.mark.parametrize("override, message", [
    ("model.nope=1", "unknown config key"),
    ("nope=1", "unknown config key"),
    ("model.dim=abc", "expects int"),
    ("model.dim=102", "divisible by n_heads"),
    ("model.dim=100", "even for RoPE"),
    ("train.optimizer=sgd", "adamw or muon"),
    ("dim", "key=value"),
    ("lr=-1", "positive"),
])
def test_bad_overrides_are_one_line_errors(override, message):
    with pytest.raises(FoundryError, match=message) as info:
        load_config("tiny", [override])
    assert "\n" not in str(info.value)


def test_unknown_preset_and_yaml_file(tmp_path):
    with pytest.raises(FoundryError, match="unknown preset"):
        load_config("giant")
    f = tmp_path / "c.yaml"
    f.write_text("model:\n  dim: 64\n  n_heads: 4\ntrain:\n  lr: 0.01\n")
    m, t = load_config(str(f))
    assert m.dim == 64 and t.lr == 0.01
    f.write_text("model: [1, 2\n")
    with pytest.raises(FoundryError, match="not valid YAML"):
        load_config(str(f))
    f.write_text("optimizer: {}\n")
    with pytest.raises(FoundryError, match="unknown config section"):
        load_config(str(f))


def test_defaults_and_presets_are_valid_and_bad_values_are_refused():
    import torch

    from llm_foundry import MiniLLM

    # The defaults and every built-in preset pass their own checks as they stand...
    for model_cfg, train_cfg in [(ModelConfig(), TrainConfig()), *(load_config(name) for name in list_presets())]:
        assert model_cfg.validate() is model_cfg and train_cfg.validate() is train_cfg
        assert model_cfg.hidden_dim % model_cfg.multiple_of == 0
    # ... `ModelConfig()` is a working model, as its docstring promises ...
    logits, _ = MiniLLM(ModelConfig()).eval()(torch.zeros(1, 8, dtype=torch.long))
    assert logits.shape == (1, 8, ModelConfig().vocab_size)
    # ... and a value that would fail later (a crash, a silent no-op) is refused now, in one line naming it.
    for cfg, message in [
        (ModelConfig(n_layers=0), "model.n_layers must be a positive integer"),
        (ModelConfig(n_heads=8, n_kv_heads=3), "must be a multiple of n_kv_heads"),
        (ModelConfig(dropout=1.0), "model.dropout"),
        (TrainConfig(batch_size=0), "train.batch_size must be a positive integer"),
        (TrainConfig(warmup_steps=-1), "train.warmup_steps"),
        (TrainConfig(time_budget=0), "train.time_budget"),
        (TrainConfig(schedule="linear"), "train.schedule"),
        (TrainConfig(precision="fp8"), "train.precision"),
        (TrainConfig(beta2=1.0), "train.beta2"),
        (TrainConfig(min_lr_ratio=2.0), "train.min_lr_ratio"),
    ]:
        with pytest.raises(FoundryError, match=re.escape(message)) as info:
            cfg.validate()
        assert str(info.value).startswith("invalid config:") and "\n" not in str(info.value)
