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


def test_defaults_validate():
    assert ModelConfig().validate().hidden_dim % 32 == 0
    TrainConfig().validate()
