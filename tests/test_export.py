"""`foundry export --format hf`: the folder loads in transformers, offline, and agrees with us.

Same logits (fp32), same token ids for any text, same greedy continuation, for every
tokenizer kind and for GQA, untied heads and QK-norm (exported as Qwen3).
"""

from __future__ import annotations

import json
import os
import shutil

import pytest
import torch

# Nothing here may reach a hub: set before transformers (and huggingface_hub) are imported.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
transformers = pytest.importorskip("transformers")

from helpers import one_line_error, run_cli  # noqa: E402
from llm_foundry import Generator, MiniLLM, ModelConfig  # noqa: E402
from llm_foundry.cli.main import main  # noqa: E402
from llm_foundry.export import export_hf  # noqa: E402
from llm_foundry.tokenizers import BPETokenizer, ByteTokenizer  # noqa: E402
from llm_foundry.models.model_dir import load_model_dir, save_model_dir  # noqa: E402

TEXTS = [
    "ROMEO: But soft, what light through yonder window breaks?",
    "床前明月光，疑是地上霜。举头望明月，低头思故乡。",
    "emoji 😀🎉👩‍💻 and flags 🇨🇳 mixed with 中文 and English",
    "  leading spaces, tabs\tand\r\nnewlines\n\n",
    "special text <|eos|> and <|pad|> written out",
    "",
]
BPE_CORPUS = [
    "The quick brown fox jumps over the lazy dog. " * 4,
    "床前明月光，疑是地上霜。举头望明月，低头思故乡。" * 3,
    "Emoji 😀🎉 are bytes too; so are tabs\tand newlines\n" * 3,
]
SMALL = dict(dim=64, n_layers=2, n_heads=4, max_seq_len=64)
# name -> (tokenizer kind, ModelConfig overrides); "run" is the trained char model of conftest.
CASES = {
    "run": ("char", {}),
    "byte_gqa_untied": ("byte", dict(n_kv_heads=2, tie_embeddings=False)),
    "bpe": ("bpe", {}),
    "byte_qknorm_gqa": ("byte", dict(qk_norm=True, n_kv_heads=1)),
}


def load_hf(path):
    from packaging.version import Version

    # `dtype` replaced `torch_dtype` in transformers 4.56.
    key = "dtype" if Version(transformers.__version__) >= Version("4.56") else "torch_dtype"
    model = transformers.AutoModelForCausalLM.from_pretrained(path, **{key: torch.float32})
    return model.eval(), transformers.AutoTokenizer.from_pretrained(path)


@pytest.fixture(scope="module")
def exported(tmp_path_factory, trained_run):
    """name -> (model folder, exported folder), each exported once."""
    root = tmp_path_factory.mktemp("export")
    bpe = BPETokenizer.train(BPE_CORPUS, 320)
    out = {}
    for seed, (name, (kind, overrides)) in enumerate(CASES.items()):
        if name == "run":
            src = trained_run
        else:
            tok = ByteTokenizer() if kind == "byte" else bpe
            torch.manual_seed(seed)
            # A wider init than the default gives peaked logits, so greedy choices are clear-cut.
            model = MiniLLM(ModelConfig(vocab_size=tok.vocab_size, init_std=0.1, **SMALL, **overrides))
            if overrides.get("qk_norm"):
                with torch.no_grad():  # non-trivial norm weights, so a mix-up of q_norm/k_norm would show
                    for layer in model.layers:
                        layer.attn.q_norm.weight.uniform_(0.5, 1.5)
                        layer.attn.k_norm.weight.uniform_(0.5, 1.5)
            src = root / name
            save_model_dir(src, model, tok, step=7)
        out[name] = (src, export_hf(src, root / f"{name}_hf"))
    return out


@pytest.mark.parametrize("name", CASES)
def test_logits_match(exported, name):
    src, dst = exported[name]
    ours = load_model_dir(src).model.eval()
    theirs, _ = load_hf(dst)
    cfg = json.loads((dst / "config.json").read_text())
    assert cfg["model_type"] == ("qwen3" if ours.cfg.qk_norm else "llama")
    assert type(theirs).__name__ == ("Qwen3ForCausalLM" if ours.cfg.qk_norm else "LlamaForCausalLM")
    assert cfg["num_key_value_heads"] == ours.cfg.kv_heads and cfg["intermediate_size"] == ours.cfg.hidden_dim
    from safetensors import safe_open

    with safe_open(str(dst / "model.safetensors"), framework="pt") as f:
        assert ("lm_head.weight" in f.keys()) == (not ours.cfg.tie_embeddings)
    assert sum(p.numel() for p in theirs.parameters()) == ours.num_parameters()
    g = torch.Generator().manual_seed(0)
    idx = torch.randint(0, ours.cfg.vocab_size, (3, ours.cfg.max_seq_len), generator=g)
    with torch.no_grad():
        a, _ = ours(idx)
        b = theirs(idx).logits
    assert b.dtype == torch.float32
    torch.testing.assert_close(b, a, atol=1e-4, rtol=0)


@pytest.mark.parametrize("name", ["run", "byte_gqa_untied", "bpe"])
def test_tokenizer_ids_match(exported, name):
    src, dst = exported[name]
    ours = load_model_dir(src).tokenizer
    _, theirs = load_hf(dst)
    for text in TEXTS:
        ids = ours.encode(text)
        # A chat model's tokenizer reads special tokens in text (its chat_template needs that); ours never.
        assert theirs(text, split_special_tokens=True)["input_ids"] == ids, (ours.kind, text)
        assert theirs.decode(ids, skip_special_tokens=True) == ours.decode(ids), (ours.kind, text)
        assert theirs.decode(ids, skip_special_tokens=False) == ours.decode(ids, skip_special=False), (ours.kind, text)
        if ours.kind != "char":
            assert theirs.decode(ids) == text  # byte and BPE are lossless
    for token, i in ours.special_tokens.items():
        assert theirs.convert_tokens_to_ids(token) == i
    for attr, token in (("bos_token", "<|bos|>"), ("eos_token", "<|eos|>"), ("pad_token", "<|pad|>"), ("unk_token", "<|unk|>")):
        assert getattr(theirs, attr) == (token if token in ours.special_tokens else None)


def test_char_tokenizer_unknown_characters(exported):
    src, dst = exported["run"]
    ours = load_model_dir(src).tokenizer
    _, theirs = load_hf(dst)
    text = "Juliet 朱丽叶 😀"
    ids = theirs(text)["input_ids"]
    assert ids == ours.encode(text) and ids.count(ours.unk_id) == 4
    assert theirs.decode(ids, skip_special_tokens=True) == "Juliet  "


@pytest.mark.parametrize("name, prompt", [("run", "ROMEO:\nWhat"), ("byte_qknorm_gqa", "床前"), ("bpe", "The quick")])
def test_greedy_generate_matches(exported, name, prompt):
    src, dst = exported[name]
    bundle = load_model_dir(src)
    ours = Generator(bundle.model, bundle.tokenizer, precision="fp32").generate(prompt, max_new_tokens=30, temperature=0)
    model, tok = load_hf(dst)
    enc = tok(prompt, return_tensors="pt")
    # generation_config.json suppresses the ids our Generator never emits (pad, unk, bos).
    out = model.generate(**enc, max_new_tokens=30, do_sample=False)
    new = out[0, enc["input_ids"].shape[1]:].tolist()
    assert bundle.tokenizer.decode(new) == ours
    if bundle.tokenizer.kind != "byte":  # a byte model may stop mid-character; both then show U+FFFD
        assert tok.decode(new, skip_special_tokens=True) == ours


def test_export_folder_contents(exported):
    src, dst = exported["bpe"]
    assert sorted(p.name for p in dst.iterdir()) == ["config.json", "generation_config.json", "model.safetensors",
                                                      "tokenizer.json", "tokenizer_config.json"]
    assert (dst / "tokenizer.json").read_bytes() == (src / "tokenizer.json").read_bytes()
    tc = json.loads((dst / "tokenizer_config.json").read_text())
    assert tc["tokenizer_class"] == "PreTrainedTokenizerFast" and tc["model_max_length"] == SMALL["max_seq_len"]
    gc = json.loads((dst / "generation_config.json").read_text())
    # Every chat terminator (assistant_end, bos, eos, user_start); only pad is never emitted (bos ends a reply).
    assert gc["eos_token_id"] == [6, 1, 2, 3] and gc["pad_token_id"] == 0 and gc["suppress_tokens"] == [0]


def test_cli_export(tmp_path, trained_run):
    out = tmp_path / "hf"
    proc = run_cli("export", trained_run, "--format", "hf", "--out", out)
    assert proc.returncode == 0, proc.stderr
    assert (out / "model.safetensors").is_file() and not any(p.name.startswith(".") for p in out.iterdir())
    model, tok = load_hf(out)
    assert model.config.vocab_size == load_model_dir(trained_run, with_tokenizer=False).model.cfg.vocab_size
    # Existing, non-empty folder: refused, then allowed with --force.
    one_line_error(run_cli("export", trained_run, "--out", out), "not empty", "--force")
    (out / "config.json").write_text("{}")
    assert main(["export", str(trained_run), "--out", str(out), "--force"]) == 0
    assert json.loads((out / "config.json").read_text())["model_type"] == "llama"


def test_cli_export_bad_input(tmp_path, trained_run, capsys):
    def error(argv, *fragments):
        assert main(argv) == 1
        err = capsys.readouterr().err.strip()
        assert err.startswith("error:") and "\n" not in err, err
        for f in fragments:
            assert f in err, err

    out = str(tmp_path / "out")
    error(["export", str(tmp_path / "missing"), "--out", out], "not found")
    error(["export", str(trained_run), "--format", "onnx", "--out", out], "unknown export format", "hf")
    bad = tmp_path / "bad"
    shutil.copytree(trained_run, bad)
    data = (bad / "model.safetensors").read_bytes()
    (bad / "model.safetensors").write_bytes(data[: len(data) // 2])
    error(["export", str(bad), "--out", out], "corrupt")
    (bad / "model.safetensors").write_bytes(data)
    (bad / "config.json").write_text("{not json")
    error(["export", str(bad), "--out", out], "not valid JSON")
    error(["export", str(trained_run), "--out", str(trained_run), "--force"], "model folder itself")
    (tmp_path / "file").write_text("x")
    error(["export", str(trained_run), "--out", str(tmp_path / "file")], "is a file")
    assert not (tmp_path / "out").exists()  # nothing is written for a bad model
