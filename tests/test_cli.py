"""The `foundry` command as a user meets it: the core path and every kind of bad input."""

import json
import subprocess
import sys

import pytest

import llm_foundry

from helpers import TINY_MODEL, chinese_text, english_text, one_line_error, run_cli, run_main
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
    proc = run_cli("train", "--preset", "tiny", "--data", data, "--out", run, "--max-steps", "20", "--quiet",
                   *TINY_MODEL, "batch_size=8", "eval_interval=10")
    assert proc.returncode == 0, proc.stderr
    proc = run_cli("generate", run, "--prompt", "床前明月光", "--max-new-tokens", "30", "--seed", "1")
    assert proc.returncode == 0 and proc.stdout.startswith("床前明月光"), proc.stderr
    val = tmp_path / "val.txt"
    val.write_text(text.read_text(encoding="utf-8")[-3000:], encoding="utf-8")
    proc = run_cli("eval", run, "--text", val, "--json")
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
    one_line_error(run_cli("train", "--data", shakespeare_data, "--out", tmp_path / "r", "--preset", "nope"), "unknown preset")
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
    one_line_error(run_cli("eval", other, "--text", text), "do not match")


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
    assert "usage: foundry train" in proc.stderr  # the command's own usage, not the top-level one


# ------------------------------------------------------------------ one vocabulary
def parse(*args):
    """The parsed command line, with key=value overrides gathered as `foundry` gathers them."""
    from llm_foundry.cli.main import build_parser

    ns, extra = build_parser().parse_known_args([str(a) for a in args])
    assert all("=" in e for e in extra), extra
    if extra:
        ns.overrides = [*ns.overrides, *extra]
    return ns


def test_help_groups_commands_by_workflow():
    from llm_foundry.cli.main import WORKFLOWS, build_parser

    text = build_parser().format_help()
    headings = [line[:-1] for line in text.splitlines() if line.endswith(":") and not line.startswith(" ")]
    assert headings[-7:] == ["build", "chat", "serve", "online", "evolve", "tools", "learn"]
    listed = [name for _, names in WORKFLOWS for name in names]
    assert sorted(listed) == sorted(COMMANDS)  # every command once
    assert text.index("\n  train ") < text.index("\nchat:") < text.index("\n  chat ") < text.index("\ntools:")


@pytest.mark.parametrize("argv, line", [
    (["train", "--data", "d", "--out", "r", "--lr", "3e-4"], "error: unknown option --lr; config fields are key=value, e.g. lr=3e-4"),
    (["train", "--data", "d", "--out", "r", "--n-layers=6"], "error: unknown option --n-layers; config fields are key=value, e.g. n_layers=6"),
    (["sft", "m", "--out", "o", "--examples-per-task"], "error: unknown option --examples-per-task; config fields are key=value, e.g. examples_per_task=VALUE"),
    (["rl", "m", "--out", "o", "--temperature", "0.7"], "error: unknown option --temperature; config fields are key=value, e.g. temperature=0.7"),
    (["speedrun", "--dim", "64"], "error: unknown option --dim; config fields are key=value, e.g. dim=64"),
    (["speedrun", "--lr", "1e-3"], "error: unknown option --lr; config fields are key=value, e.g. pretrain.lr=1e-3"),
    (["online", "--typed-ratio", "0.3"], "error: unknown option --typed-ratio; config fields are key=value, e.g. typed_ratio=0.3"),
])
def test_an_option_that_is_a_config_field_says_how_to_set_it(capsys, argv, line):
    proc = run_main(capsys, *argv)
    assert proc.returncode == 2 and proc.stderr == line + "\n"


def test_other_unknown_options_get_the_commands_usage(capsys):
    proc = run_main(capsys, "evolve", "--data", "corpus/")
    assert proc.returncode == 2 and "usage: foundry evolve" in proc.stderr and "raw text is --text" in proc.stderr
    proc = run_main(capsys, "generate", "m", "--lr", "1")
    assert proc.returncode == 2 and "usage: foundry generate" in proc.stderr and "unrecognized arguments: --lr" in proc.stderr


def test_one_flag_name_per_meaning_with_old_spellings_hidden():
    from llm_foundry.cli.main import build_parser

    assert parse("train", "--preset", "small", "--data", "d", "--out", "r").config == "small"
    assert parse("train", "--config", "small", "--data", "d", "--out", "r").config == "small"
    assert parse("demo", "--text", "a.txt", "b/").text == parse("demo", "--data", "a.txt", "b/").text == ["a.txt", "b/"]
    assert parse("speedrun", "--data", "mine/").text == ["mine/"]
    assert parse("eval", "m", "--data", "f.txt").text == parse("eval", "m", "--text", "f.txt").text == "f.txt"
    assert parse("chat", "m", "--max-tokens", "5").max_tokens == parse("chat", "m", "--max-new-tokens", "5").max_tokens == 5
    assert parse("evolve", "--data_dir", "x").data_dir == parse("evolve", "--data-dir", "x").data_dir == \
        parse("evolve", "--text", "x").data_dir == "x"
    assert parse("evolve", "--mode", "demo", "--max-tokens", "7").max_tokens == 7
    subs = next(a for a in build_parser()._actions if a.__class__.__name__ == "_SubParsersAction").choices
    for name in ("train", "demo", "speedrun", "eval", "chat", "eval-chat", "evolve"):
        text = subs[name].format_help()
        assert not any(old in text for old in ("--config", "--max-tokens", "--data_dir", "--data-dir")), name
    assert "--data DATA_DIR" in subs["train"].format_help() and "--data" not in subs["eval"].format_help()


def test_device_precision_seed_reach_the_config():
    from llm_foundry.cli.stages import stage_settings
    from llm_foundry.cli.train import resolve_configs
    from llm_foundry.config.stages import stage_config_from_dict

    _, t = resolve_configs(parse("train", "--data", "d", "--out", "r", "--device", "cpu", "--precision", "fp32", "--seed", "7"))
    assert (t.device, t.precision, t.seed) == ("cpu", "fp32", 7)
    _, t = resolve_configs(parse("train", "--data", "d", "--out", "r"))
    assert (t.device, t.precision, t.seed) == ("auto", "auto", 1337)  # the preset's, when not given
    args = parse("sft", "m", "--out", "o", "--device", "cpu", "--seed", "3", "lr=1e-4", "examples_per_task=10")
    cfg = stage_config_from_dict("sft", stage_settings(args))
    assert (cfg.train.device, cfg.train.seed, cfg.train.lr, cfg.examples_per_task) == ("cpu", 3, 1e-4, 10)
    for name in ("generate", "chat", "eval-chat", "eval", "serve", "online", "evolve", "rl", "speedrun", "demo"):
        argv = [name] + (["m"] if name in ("generate", "chat", "eval-chat", "eval", "serve", "rl") else []) \
            + (["--text", "f"] if name == "eval" else []) + (["--out", "o"] if name == "rl" else [])
        assert parse(*argv, "--device", "cpu", "--precision", "bf16").device == "cpu", name


def test_config_show_and_copy(tmp_path, capsys):
    import yaml

    from llm_foundry.config import load_config
    from llm_foundry.config.speedrun import check_speedrun_config, load_speedrun_config

    proc = run_main(capsys, "config", "show", "tiny", "dim=96", "lr=3e-4")
    shown = yaml.safe_load(proc.stdout)
    assert proc.returncode == 0 and shown["model"]["dim"] == 96 and shown["train"]["lr"] == 3e-4
    assert set(shown["train"]) >= {"seed", "device", "precision", "ema_decay"}  # every field, defaults included
    shown = yaml.safe_load(run_main(capsys, "config", "show", "cpu").stdout)
    assert list(shown) == ["tokenizer", "model", "pretrain", "midtrain", "sft", "rl", "eval"]
    assert shown["sft"]["loss_on"] == "assistant" and "lr" in shown["sft"]["train"]
    # copy writes a file that loads back as the same config; it never replaces one unasked
    mine = tmp_path / "mine.yaml"
    assert run_main(capsys, "config", "copy", "tinygpt", mine, "lr=5e-4").returncode == 0
    assert load_config(str(mine)) == load_config("tinygpt", ["lr=5e-4"])
    one_line_error(run_main(capsys, "config", "copy", "tiny", mine), "exists", "--force")
    assert load_config(str(mine)) == load_config("tinygpt", ["lr=5e-4"])
    assert run_main(capsys, "config", "copy", "tiny", mine, "--force").returncode == 0
    assert load_config(str(mine)) == load_config("tiny")
    run_yaml = tmp_path / "run.yaml"
    assert run_main(capsys, "config", "copy", "speedrun/demo", run_yaml, "rl.steps=3").returncode == 0
    assert check_speedrun_config(load_speedrun_config(str(run_yaml))) == \
        check_speedrun_config(load_speedrun_config("demo", ["rl.steps=3"]))
    assert parse("speedrun", "--preset", run_yaml).preset == str(run_yaml)
    one_line_error(run_main(capsys, "config", "show", "nosuch"), "unknown preset 'nosuch'", "tinygpt", "cpu")
    one_line_error(run_main(capsys, "config", "show", "tiny", "lrr=1"), "did you mean 'lr'")


# Every command that runs a model, with the arguments it needs to parse.
MODEL_COMMANDS = {"generate": ["m"], "chat": ["m"], "eval-chat": ["m"], "eval": ["m", "--text", "f"], "serve": ["m"],
                  "online": [], "evolve": [], "train": ["--data", "d", "--out", "r"], "midtrain": ["m", "--out", "o"],
                  "sft": ["m", "--out", "o"], "rl": ["m", "--out", "o"], "speedrun": [], "demo": []}


def test_every_command_that_runs_a_model_takes_device_precision_and_seed():
    from llm_foundry.cli.main import build_parser

    subs = next(a for a in build_parser()._actions if a.__class__.__name__ == "_SubParsersAction").choices
    for name, argv in MODEL_COMMANDS.items():
        text = subs[name].format_help()
        assert all(flag in text for flag in ("--device", "--precision", "--seed N")), name
        helps = {a.option_strings[0]: a.help for a in subs[name]._actions if a.option_strings}
        assert helps["--device"].startswith("auto, cpu, cuda, cuda:N or mps (default: "), name  # one wording
        assert helps["--precision"].startswith("auto (bf16 where the hardware is fast at it), bf16, fp16 or fp32"), name
        args = parse(name, *argv, "--device", "cpu", "--precision", "fp32", "--seed", "5")
        assert (args.device, args.precision, args.seed) == ("cpu", "fp32", 5), name


def test_eval_accepts_a_seed_and_stays_deterministic(tmp_path, capsys):
    from llm_foundry.config import ModelConfig
    from llm_foundry.models import MiniLLM
    from llm_foundry.models.model_dir import save_model_dir
    from llm_foundry.tokenizers import build_tokenizer

    tok = build_tokenizer("byte")
    save_model_dir(tmp_path / "m", MiniLLM(ModelConfig(vocab_size=tok.vocab_size, dim=32, n_layers=1, n_heads=2,
                                                       max_seq_len=32)), tok)
    (tmp_path / "t.txt").write_text("the same text, scored the same way\n" * 4, encoding="utf-8")
    runs = [run_main(capsys, "eval", tmp_path / "m", "--text", tmp_path / "t.txt", "--device", "cpu", "--json", *seed)
            for seed in ([], ["--seed", "1"], ["--seed", "2"])]
    assert all(r.returncode == 0 for r in runs) and len({r.stdout for r in runs}) == 1
    one_line_error(run_main(capsys, "eval", tmp_path / "m", "--text", tmp_path / "t.txt", "--seed", "-1"), "--seed")


def test_serve_seed_is_the_default_of_requests_without_one(tmp_path):
    import httpx

    from llm_foundry.config import ModelConfig
    from llm_foundry.inference.engine import Engine
    from llm_foundry.models import MiniLLM
    from llm_foundry.models.model_dir import save_model_dir
    from llm_foundry.serve import ServerThread, create_app
    from llm_foundry.tokenizers import build_tokenizer

    assert parse("serve", "m", "--seed", "7").seed == 7 and parse("serve", "m").seed is None
    tok = build_tokenizer("byte")
    save_model_dir(tmp_path / "m", MiniLLM(ModelConfig(vocab_size=tok.vocab_size, dim=32, n_layers=1, n_heads=2,
                                                       max_seq_len=64)), tok)
    engine = Engine.from_pretrained(tmp_path / "m", device="cpu", precision="fp32")
    with ServerThread(create_app(engine, "m", default_seed=7)) as server:
        def complete(**seed) -> str:
            body = {"model": "m", "prompt": "hi", "temperature": 1.5, "max_tokens": 16, **seed}
            r = httpx.post(server.url + "/v1/completions", json=body, timeout=120)
            assert r.status_code == 200, r.text
            return r.json()["choices"][0]["text"]

        first = complete()
        assert complete() == first == complete(seed=7)  # no seed: the server's, so the reply repeats
        assert complete(seed=8) != first  # a request's own seed is kept


def test_evolve_settings_as_key_value(capsys, tmp_path):
    from llm_foundry.cli.evolve import evolve_train_options
    from llm_foundry.config.evolve import EvolveOptions, TrainOptions, evolve_options

    assert evolve_train_options(parse("evolve")) == TrainOptions()  # the defaults live in the dataclass
    opts = evolve_train_options(parse("evolve", "epochs=3", "seed=7", "device=cpu", "lr=1e-3", "model.dim=64",
                                      "steps_per_epoch=5", "--save-every", "2", "save_every=4"))
    assert (opts.epochs, opts.seed, opts.device, opts.steps_per_epoch) == (3, 7, "cpu", 5)
    assert opts.save_every == 2  # a flag given wins over the same key=value, as in every command
    assert opts.overrides == ["lr=1e-3", "model.dim=64"]  # a new state's model/train config
    args = parse("evolve", "--mode", "evolve", "cycles=5", "self_tokens=128", "early_reject=false", "--population", "2")
    got = evolve_options(args.overrides, {"population": args.population})
    assert got == EvolveOptions(cycles=5, self_tokens=128, early_reject=False, population=2)
    state = tmp_path / "state"
    for argv, fragments in ((["epoch=3"], ["unknown config key 'epoch'", "did you mean 'epochs'"]),
                            (["--mode", "evolve", "cycle=3"], ["did you mean 'cycles'"]),
                            (["--mode", "evolve", "epochs=3"], ["'epochs' applies to --mode train only"]),
                            (["cycles=3"], ["'cycles' applies to --mode evolve only"]),
                            (["--mode", "evolve", "cycles=x"], ["cycles expects int"]),
                            (["--mode", "stats", "cycles=3"], ["--mode train and --mode evolve"])):
        one_line_error(run_main(capsys, "evolve", "--state", state, *argv), *fragments)
    assert not state.exists()  # rejected before anything was written


def test_evolve_key_value_options_reach_the_training(capsys, tmp_path):
    (tmp_path / "corpus").mkdir()
    (tmp_path / "corpus" / "a.txt").write_text("a small corpus for a short run.\n" * 200, encoding="utf-8")
    state = tmp_path / "state"
    proc = run_main(capsys, "evolve", "--state", state, "--text", tmp_path / "corpus", *TINY_MODEL, "epochs=1",
                    "steps_per_epoch=2", "log_every=1", "device=cpu", "quiet=true", "eval_batches=2")
    assert proc.returncode == 0, proc.stderr
    log = json.loads((state / "training_log.json").read_text(encoding="utf-8"))
    assert [e["epoch"] for e in log] == [1] and "trained 1 epoch(s)" in proc.stdout
