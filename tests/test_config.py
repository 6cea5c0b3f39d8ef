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
    ("lr=-1", re.escape("train.lr must be a number in (0, 10], got -1.0")),
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
        (ModelConfig(n_layers=0), "model.n_layers must be an integer from 1 to 1,024, got 0"),
        (ModelConfig(n_heads=8, n_kv_heads=3), "must be a multiple of n_kv_heads"),
        (ModelConfig(dropout=1.0), "model.dropout"),
        (TrainConfig(batch_size=0), "train.batch_size must be an integer from 1 to 1,048,576, got 0"),
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


# ------------------------------------------------------------------ one dialect for every part
def test_every_part_reads_key_value_the_same_way():
    from llm_foundry.config.loader import apply_to
    from llm_foundry.config.online import split_settings
    from llm_foundry.config.speedrun import check_speedrun_config, load_speedrun_config
    from llm_foundry.config.stages import RLConfig, StageConfig, rl_config_from_dict, stage_config_from_dict

    # a bare key goes to the one field of that name, at the shallowest level
    sft = apply_to(StageConfig(), ["lr=3e-4", "examples_per_task=1e3", "train.seed=5", "lang=en"], "sft")
    assert (sft.train.lr, sft.examples_per_task, sft.train.seed, sft.lang) == (3e-4, 1000, 5, "en")
    rl = apply_to(RLConfig(), ["tasks=arithmetic,spelling", "top_k=none", "std_normalize=yes"], "rl").validate()
    assert (rl.tasks, rl.top_k, rl.std_normalize) == (["arithmetic", "spelling"], None, True)
    # plain data (a preset section, a saved json) converts exactly like a command line
    assert stage_config_from_dict("midtrain", {"train": {"lr": "1e-3"}, "text_len": "64"}).train.lr == 1e-3
    assert rl_config_from_dict({"steps": "40"}).steps == 40
    run = check_speedrun_config(load_speedrun_config("demo", ["pretrain.time_budget=60", "midtrain.train.max_steps=200",
                                                              "rl.steps=3", "dim=128", "eval.tasks=arithmetic"]))
    assert (run.pretrain.time_budget, run.midtrain.train.max_steps, run.rl.steps, run.model.dim) == (60.0, 200, 3, 128)
    assert run.eval.tasks == ["arithmetic"] and run.midtrain.stage == "midtrain"
    settings, rest = split_settings(["steps=5", "online.temperature=0.5", "lr=5e-4", "model.dim=64"])
    assert settings == {"steps": 5, "temperature": 0.5} and rest == ["lr=5e-4", "model.dim=64"]


@pytest.mark.parametrize("apply, message", [
    (lambda: load_config("tiny", ["dimm=128"]), "unknown config key 'dimm' (did you mean 'dim'?)"),
    (lambda: load_config("tiny", ["train.lrr=1"]), "unknown config key 'train.lrr' (did you mean 'train.lr'?)"),
    (lambda: load_config("tiny", ["modle.dim=1"]), "unknown config key 'modle.dim' (did you mean 'model'?)"),
    (lambda: _stage(["examples_per_tsk=5"]), "unknown config key 'sft.examples_per_tsk' (did you mean 'examples_per_task'?)"),
    (lambda: _stage(["lr=fast"]), "sft.train.lr expects float, got 'fast'"),
    (lambda: _rl({"stepz": 3}), "unknown config key 'rl.stepz' (did you mean 'rl.steps'?)"),
    (lambda: _speedrun(["lr=1e-3"]), "config key 'lr' is ambiguous; write pretrain.lr or rl.lr"),
    (lambda: _speedrun(["rl.stepz=3"]), "unknown config key 'rl.stepz' (did you mean 'rl.steps'?)"),
    (lambda: _speedrun(["pretrian.lr=1"]), "did you mean 'pretrain'?"),
    (lambda: _online(["temprature=0.5"]), "unknown config key 'temprature' (did you mean 'temperature'?)"),
    # the stages' own numbers have finite bounds too
    (lambda: _rl({"kl_coef": "inf"}), "invalid config: rl.kl_coef must be a number in [0, 1000], got inf"),
    (lambda: _rl({"lr": "1e400"}), "invalid config: rl.lr must be a number in (0, 10], got inf"),
    (lambda: _stage(["examples_per_task=1e18"]).validate(),
     "invalid config: sft.examples_per_task must be an integer from 1 to 10,000,000, got 1000000000000000000"),
    (lambda: _speedrun_checked(["tokenizer.vocab_size=1e12"]),
     "invalid config: tokenizer.vocab_size must be an integer from 1 to 2,097,152, got 1000000000000"),
])
def test_unknown_keys_and_bad_values_are_the_same_one_line_errors(apply, message):
    with pytest.raises(FoundryError) as info:
        apply()
    assert message in str(info.value) and "\n" not in str(info.value)


def _stage(overrides):
    from llm_foundry.config.loader import apply_to
    from llm_foundry.config.stages import StageConfig

    return apply_to(StageConfig(), overrides, "sft")


def _rl(raw):
    from llm_foundry.config.stages import rl_config_from_dict

    return rl_config_from_dict(raw)


def _speedrun(overrides):
    from llm_foundry.config.speedrun import load_speedrun_config

    return load_speedrun_config("cpu", overrides)


def _speedrun_checked(overrides):
    from llm_foundry.config.speedrun import check_speedrun_config

    return check_speedrun_config(_speedrun(overrides))


def _online(overrides):
    from llm_foundry.config.online import split_settings

    return split_settings(overrides)


def test_every_settings_dataclass_lives_in_config_and_the_packages_export_it():
    from llm_foundry.config.online import OnlineSettings
    from llm_foundry.config.speedrun import check_speedrun_config, load_speedrun_config
    from llm_foundry.config.stages import RLConfig, StageConfig
    from llm_foundry.evolve import EvolveOptions, TrainOptions
    from llm_foundry.online import OnlineSettings as PublicOnlineSettings

    for cls in (OnlineSettings, RLConfig, StageConfig, EvolveOptions, TrainOptions):
        assert cls.__module__.startswith("llm_foundry.config."), cls
    assert PublicOnlineSettings is OnlineSettings
    assert check_speedrun_config(load_speedrun_config("cpu")).sft.loss_on == "assistant"


def test_figures_for_people_are_rounded():
    from llm_foundry.utils.progress import rounded

    assert rounded({"val_loss": 0.960224962234497, "tok_per_s": 12345.678, "step": 5, "tasks": [0.12345678]}) == \
        {"val_loss": 0.9602, "tok_per_s": 12345.7, "step": 5, "tasks": [0.1235]}
    assert rounded({"lr": 3e-5, "kl": -0.000123456}) == {"lr": 3e-5, "kl": -0.0001235}  # small figures keep their digits


# ------------------------------------------------------------------ bounds
# Every ModelConfig/TrainConfig field has a finite range: inf, NaN, 10^18 or a 10^10-token
# context is one line naming the field and its range, whether it comes from the command line,
# a YAML preset or a model folder's config.json, and before anything is allocated from it.
ABSURD = [
    ("train.lr", "inf", "train.lr must be a number in (0, 10], got inf"),
    ("train.lr", "1e400", "train.lr must be a number in (0, 10], got inf"),
    ("train.lr", "nan", "train.lr must be a number in (0, 10], got nan"),
    ("train.muon_lr", "1e6", "train.muon_lr must be a number in (0, 10], got 1000000.0"),
    ("train.weight_decay", "inf", "train.weight_decay must be a number in [0, 100], got inf"),
    ("train.grad_clip", "nan", "train.grad_clip must be a number in [0, 1e+06], got nan"),
    ("train.eps", "inf", "train.eps must be a number in (0, 1], got inf"),
    ("train.time_budget", "inf", "train.time_budget must be a number in (0, 1e+09], got inf"),
    ("train.batch_size", "1e9", "train.batch_size must be an integer from 1 to 1,048,576, got 1000000000"),
    ("train.max_steps", "1e13", "train.max_steps must be an integer from 1 to 1,000,000,000,000, got 10000000000000"),
    ("train.seq_len", "1e10", "train.seq_len must be an integer from 1 to 1,048,576, got 10000000000"),
    ("train.seed", "-1", "train.seed must be an integer from 0 to 9,223,372,036,854,775,807, got -1"),
    ("model.max_seq_len", "1e10", "model.max_seq_len must be an integer from 1 to 1,048,576, got 10000000000"),
    ("model.dim", "1000000000000000000", "model.dim must be an integer from 1 to 65,536, got 1000000000000000000"),
    ("model.vocab_size", "1e9", "model.vocab_size must be an integer from 1 to 2,097,152, got 1000000000"),
    ("model.n_layers", "100000", "model.n_layers must be an integer from 1 to 1,024, got 100000"),
    ("model.n_kv_heads", "0", "model.n_kv_heads must be an integer from 1 to 1,024, got 0"),
    ("model.ffn_hidden_dim", "1e7", "model.ffn_hidden_dim must be an integer from 1 to 262,144, got 10000000"),
    ("model.rope_theta", "inf", "model.rope_theta must be a number in (0, 1e+12], got inf"),
    ("model.init_std", "nan", "model.init_std must be a number in (0, 10], got nan"),
    ("model.norm_eps", "0", "model.norm_eps must be a number in (0, 1], got 0.0"),
    ("model.dropout", "nan", "model.dropout must be a number in [0, 1), got nan"),
]


@pytest.mark.parametrize("key, value, message", ABSURD, ids=[f"{k}={v}" for k, v, _ in ABSURD])
def test_absurd_values_are_one_line_errors_from_overrides_and_presets(tmp_path, key, value, message):
    with pytest.raises(FoundryError) as info:
        load_config("tiny", [f"{key}={value}"])
    assert str(info.value) == f"invalid config: {message}"
    section, name = key.split(".")
    preset = tmp_path / "p.yaml"
    preset.write_text(f"{section}:\n  {name}: {value}\n")  # YAML reads 1e10 and inf as text: coerced alike
    with pytest.raises(FoundryError, match=re.escape(message)):
        load_config(str(preset))


@pytest.mark.parametrize("raw, message", [
    ('"max_seq_len": 10000000000', "model.max_seq_len must be an integer from 1 to 1,048,576, got 10000000000"),
    ('"max_seq_len": 1e10', "model.max_seq_len must be an integer from 1 to 1,048,576, got 10000000000.0"),
    ('"dim": 1e400', "model.dim must be an integer from 1 to 65,536, got inf"),
    ('"dim": 64.0', "model.dim must be an integer from 1 to 65,536, got 64.0"),
    ('"dim": true', "model.dim must be an integer from 1 to 65,536, got True"),
    ('"dim": "64"', "model.dim must be an integer from 1 to 65,536, got '64'"),
    ('"rope_theta": Infinity', "model.rope_theta must be a number in (0, 1e+12], got inf"),
    ('"norm_eps": NaN', "model.norm_eps must be a number in (0, 1], got nan"),
    ('"tie_embeddings": "yes"', "model.qk_norm and model.tie_embeddings must be true or false"),
])
def test_absurd_values_in_a_model_folders_config_json_are_one_line_errors(tmp_path, raw, message):
    import json

    from llm_foundry.models import load_model_config

    config = {"architecture": "MiniLLM", "vocab_size": 64, "dim": 64, "n_layers": 2, "n_heads": 4, "max_seq_len": 64}
    key = raw.split(":")[0]
    text = ",\n".join([raw] + [f'"{k}": {json.dumps(v)}' for k, v in config.items() if f'"{k}"' != key])
    (tmp_path / "config.json").write_text("{" + text + "}")
    with pytest.raises(FoundryError) as info:
        load_model_config(tmp_path)
    assert str(info.value) == f"invalid config: {message}"


@pytest.mark.parametrize("override, message", [
    ("lr=inf", "train.lr must be a number in (0, 10], got inf"),
    ("model.dim=1e400", "model.dim expects int, got '1e400'"),
])
def test_absurd_overrides_on_the_command_line_are_one_line_errors(tmp_path, override, message):
    from helpers import one_line_error, run_cli

    # Refused while reading the settings, before the (missing) data folder is even looked at.
    one_line_error(run_cli("train", "--data", tmp_path / "data", "--out", tmp_path / "run", override), message)


def test_values_past_pythons_own_limits_are_one_short_line(tmp_path):
    from llm_foundry.models import load_model_config

    # An integer of 5,000 digits (past the 4,300 that Python converts to and from text) and a
    # 100 kB string: wherever they are written, the error is one short line, never a ValueError.
    digits = "9" * 5000
    (tmp_path / "config.json").write_text('{"architecture": "MiniLLM", "dim": ' + digits + "}")
    (tmp_path / "p.yaml").write_text(f"model:\n  dim: {digits}\n")
    (tmp_path / "s.yaml").write_text("model:\n  dim: " + "x" * 100_000 + "\n")
    (tmp_path / "deep" / "config.json").parent.mkdir()
    (tmp_path / "deep" / "config.json").write_text("[" * 100_000 + "]" * 100_000)
    for attempt, message in [
        (lambda: load_model_config(tmp_path), "model config is not valid JSON (Exceeds the limit (4300 digits) "
                                              "for integer string conversion)"),
        (lambda: load_model_config(tmp_path / "deep"), "model config is not valid JSON (maximum recursion depth"),
        (lambda: load_config(str(tmp_path / "p.yaml")), "Exceeds the limit (4300 digits) for integer string conversion"),
        (lambda: load_config(str(tmp_path / "s.yaml")), "invalid config: model.dim expects int, got 'xxxxxxxx"),
        (lambda: load_config("tiny", [f"dim={digits}"]), "invalid config: model.dim expects int, got '99999999"),
        (lambda: ModelConfig(dim=10**5000).validate(),
         "invalid config: model.dim must be an integer from 1 to 65,536, got an integer of 16,610 bits"),
        (lambda: TrainConfig(lr="x" * 100_000).validate(), "invalid config: train.lr must be a number in (0, 10], got 'xxx"),
    ]:
        with pytest.raises(FoundryError) as info:
            attempt()
        assert message in str(info.value) and "\n" not in str(info.value) and len(str(info.value)) < 300, str(info.value)[:300]
