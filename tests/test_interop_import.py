"""`foundry import HF_DIR --out MODEL`: a Hugging Face Llama or Qwen3 folder becomes a model folder of ours.

Tiny random models are made with transformers' own config classes and ``save_pretrained``
(nothing is downloaded), with a byte-level BPE tokenizer trained here. The imported model's
logits equal transformers' on the same ids (fp32, max |diff| < 1e-4), it trains with
``--init-from``, chats, and exports back to a folder transformers loads with the same logits.
"""

from __future__ import annotations

import json
import os

import pytest
import torch

# Nothing here may reach a hub: set before transformers (and huggingface_hub) are imported.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
transformers = pytest.importorskip("transformers")

from helpers import one_line_error, run_cli, run_main  # noqa: E402
from llm_foundry.export.hf_import import import_hf  # noqa: E402
from llm_foundry.models.model_dir import load_model_dir  # noqa: E402
from llm_foundry.tokenizers.special import BOS, CHAT_SPECIAL_TOKENS, EOS  # noqa: E402

TOL = 1e-4  # max |logit difference| in fp32
CORPUS = ["The quick brown fox jumps over the lazy dog. " * 4, "床前明月光，疑是地上霜。举头望明月，低头思故乡。" * 3,
          "Numbers 12 + 30 = 42 and tabs\tand newlines\n" * 3]
# model_type -> (its document tokens, tokenizer_config roles, config overrides)
FAMILIES = {
    "llama": (["<|begin_of_text|>", "<|end_of_text|>"], {"bos_token": "<|begin_of_text|>", "eos_token": "<|end_of_text|>"},
              dict(num_key_value_heads=2, tie_word_embeddings=False, rope_theta=50000.0)),
    "qwen3": (["<|endoftext|>", "<|im_start|>", "<|im_end|>"], {"eos_token": "<|im_end|>", "pad_token": "<|endoftext|>"},
              dict(num_key_value_heads=1, tie_word_embeddings=True, rope_theta=1e6, head_dim=16)),
}


def hf_tokenizer(specials: list[str]):
    """A byte-level BPE like Llama 3's and Qwen's (a regex split, then bytes), trained on CORPUS."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers

    tk = Tokenizer(models.BPE())
    tk.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(r"\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+|\s+"), behavior="isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    tk.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=300, special_tokens=specials, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tk.train_from_iterator(CORPUS, trainer=trainer)
    return tk


def make_hf_folder(path, family: str, seed: int = 0):
    """A random tiny ``family`` model saved with ``save_pretrained``, with its tokenizer."""
    specials, roles, overrides = FAMILIES[family]
    tk = hf_tokenizer(specials)
    fast = transformers.PreTrainedTokenizerFast(tokenizer_object=tk, **roles)
    fast.save_pretrained(path)
    cls = transformers.LlamaConfig if family == "llama" else transformers.Qwen3Config
    config = cls(vocab_size=tk.get_vocab_size() + 3, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                 num_attention_heads=4, max_position_embeddings=128, rms_norm_eps=1e-6, initializer_range=0.1,
                 bos_token_id=tk.token_to_id(specials[0]), eos_token_id=tk.token_to_id(specials[-1]), **overrides)
    torch.manual_seed(seed)
    model = cls_model(family)(config).eval()
    with torch.no_grad():  # non-trivial norm weights, so a mix-up of two norms would show
        for name, p in model.named_parameters():
            if name.endswith("norm.weight"):
                p.uniform_(0.5, 1.5)
    model.save_pretrained(path)
    return model


def cls_model(family):
    return transformers.LlamaForCausalLM if family == "llama" else transformers.Qwen3ForCausalLM


@pytest.fixture(scope="module")
def imported(tmp_path_factory):
    """family -> (transformers model, HF folder, imported model folder)."""
    root = tmp_path_factory.mktemp("import")
    out = {}
    for seed, family in enumerate(FAMILIES):
        src = root / f"{family}_hf"
        model = make_hf_folder(src, family, seed)
        out[family] = (model, src, import_hf(src, root / family))
    return out


def n_tokens(family: str) -> int:
    """How many ids the family's own tokenizer has (its model has a few unused rows beyond them)."""
    return hf_tokenizer(FAMILIES[family][0]).get_vocab_size()


def hf_logits(model, idx):
    with torch.no_grad():
        return model(idx).logits


@pytest.mark.parametrize("family", FAMILIES)
def test_logits_match_transformers(imported, family):
    theirs, _, dst = imported[family]
    ours = load_model_dir(dst).model.eval()
    assert ours.cfg.qk_norm == (family == "qwen3")
    assert ours.cfg.kv_heads == theirs.config.num_key_value_heads
    assert ours.cfg.tie_embeddings == theirs.config.tie_word_embeddings
    assert ours.cfg.rope_theta == FAMILIES[family][2]["rope_theta"]
    # Our chat tokens take ids after the tokenizer's own (in unused rows, or new ones); the
    # tokenizer's ids keep their logits.
    v, n = theirs.config.vocab_size, n_tokens(family)
    idx = torch.randint(0, n, (3, 100), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        a, _ = ours(idx)
    b = hf_logits(theirs, idx)
    assert (a[..., :n] - b[..., :n]).abs().max().item() < TOL
    assert ours.cfg.vocab_size == max(v, load_model_dir(dst).tokenizer.vocab_size)


@pytest.mark.parametrize("family", FAMILIES)
def test_tokenizer_roles_and_chat_tokens(imported, family):
    _, src, dst = imported[family]
    from transformers import AutoTokenizer

    theirs = AutoTokenizer.from_pretrained(src)
    tok = load_model_dir(dst).tokenizer
    for text in CORPUS + ["emoji 😀 mixed 中文", ""]:
        assert tok.encode(text) == theirs(text, add_special_tokens=False)["input_ids"]
        assert tok.decode(tok.encode(text)) == text
    # The model's own document tokens keep their ids under our names.
    assert tok.token_id(EOS) == theirs.convert_tokens_to_ids(theirs.eos_token)
    if family == "llama":
        assert tok.token_id(BOS) == theirs.convert_tokens_to_ids("<|begin_of_text|>")
    for t in CHAT_SPECIAL_TOKENS:  # added, so the chat pipeline (and sft) can run
        assert tok.token_id(t) is not None
    assert load_model_dir(dst).model.cfg.vocab_size >= tok.vocab_size


def test_round_trip_hf_ours_hf(imported, tmp_path):
    from llm_foundry.export import export_hf

    for family in FAMILIES:
        theirs, _, dst = imported[family]
        back = export_hf(dst, tmp_path / f"{family}_back")
        again = cls_model(family).from_pretrained(back, dtype=torch.float32).eval()
        n = n_tokens(family)
        idx = torch.randint(0, n, (2, 64), generator=torch.Generator().manual_seed(2))
        a, b = hf_logits(theirs, idx)[..., :n], hf_logits(again, idx)[..., :n]
        assert (a - b).abs().max().item() < TOL, family


def test_bin_and_sharded_weights(imported, tmp_path):
    """pytorch_model.bin and a sharded safetensors index import to the same weights."""
    import shutil

    from safetensors.torch import load_file, save_file

    _, src, dst = imported["qwen3"]
    tensors = load_file(str(src / "model.safetensors"))
    names = sorted(tensors)
    variants = {"bin": tmp_path / "bin", "sharded": tmp_path / "sharded"}
    for folder in variants.values():
        shutil.copytree(src, folder)
        (folder / "model.safetensors").unlink()
    torch.save(tensors, variants["bin"] / "pytorch_model.bin")
    halves = {"a.safetensors": names[: len(names) // 2], "b.safetensors": names[len(names) // 2:]}
    for file, part in halves.items():
        save_file({k: tensors[k] for k in part}, str(variants["sharded"] / file))
    (variants["sharded"] / "model.safetensors.index.json").write_text(json.dumps(
        {"metadata": {}, "weight_map": {k: file for file, part in halves.items() for k in part}}))
    want = load_model_dir(dst).model.state_dict()
    for name, folder in variants.items():
        got = load_model_dir(import_hf(folder, tmp_path / f"{name}_ours")).model.state_dict()
        assert got.keys() == want.keys() and all(torch.equal(got[k], want[k]) for k in want), name


@pytest.mark.slow
def test_imported_model_trains_and_chats(imported, tmp_path):
    """`foundry train --init-from` on the imported folder, then a chat reply through the Engine."""
    from llm_foundry.inference.engine import Engine

    _, _, dst = imported["llama"]
    text = tmp_path / "t.txt"
    text.write_text("\n".join(CORPUS * 20))
    data = tmp_path / "data"
    proc = run_cli("prepare", text, "--out", data, "--tokenizer-from", dst)
    assert proc.returncode == 0, proc.stderr
    run = tmp_path / "run"
    proc = run_cli("train", "--data", data, "--out", run, "--init-from", dst, "max_steps=4", "batch_size=2",
                   "eval_interval=0", "checkpoint_interval=0", "warmup_steps=1", "seq_len=32", timeout=600)
    assert proc.returncode == 0, proc.stderr
    bundle = load_model_dir(run)
    assert bundle.step == 4 and bundle.model.cfg == load_model_dir(dst).model.cfg
    events = list(Engine(bundle.model, bundle.tokenizer, precision="fp32").chat(
        [{"role": "user", "content": "hello"}], max_tokens=8, temperature=0))
    assert events[-1]["type"] == "done" and events[-1]["completion_tokens"] >= 1


def test_cli_import_and_bad_input(tmp_path, capsys):
    src = tmp_path / "hf"
    make_hf_folder(src, "llama")
    out = tmp_path / "ours"
    proc = run_cli("import", src, "--out", out, "--max-seq-len", 64)
    assert proc.returncode == 0, proc.stderr
    assert load_model_dir(out).model.cfg.max_seq_len == 64
    one_line_error(run_main(capsys, "import", src, "--out", out), "not empty", "--force")

    # A foreign architecture.
    gpt2 = tmp_path / "gpt2"
    gpt2.mkdir()
    (gpt2 / "config.json").write_text(json.dumps({"model_type": "gpt2", "architectures": ["GPT2LMHeadModel"]}))
    one_line_error(run_main(capsys, "import", gpt2, "--out", tmp_path / "x"), "gpt2", "Llama and Qwen3")
    # Not a folder, no folder.
    (tmp_path / "file").write_text("x")
    one_line_error(run_main(capsys, "import", tmp_path / "file", "--out", tmp_path / "x"), "not a folder")
    one_line_error(run_main(capsys, "import", tmp_path / "nowhere", "--out", tmp_path / "x"), "not a folder")
    # A tokenizer we cannot map: WordPiece (no byte-level BPE).
    import shutil

    wp = tmp_path / "wordpiece"
    shutil.copytree(src, wp)
    from tokenizers import Tokenizer, models

    Tokenizer(models.WordPiece(vocab={"[UNK]": 0, "a": 1}, unk_token="[UNK]")).save(str(wp / "tokenizer.json"))
    one_line_error(run_main(capsys, "import", wp, "--out", tmp_path / "x"), "WordPiece", "byte-level BPE")
    # Missing weights: a layer's tensor gone, then no weights file at all.
    from safetensors.torch import load_file, save_file

    cut = tmp_path / "cut"
    shutil.copytree(src, cut)
    tensors = load_file(str(cut / "model.safetensors"))
    del tensors["model.layers.1.mlp.up_proj.weight"]
    save_file(tensors, str(cut / "model.safetensors"))
    one_line_error(run_main(capsys, "import", cut, "--out", tmp_path / "x"), "missing weights", "layers.1.ffn.w3")
    (cut / "model.safetensors").write_bytes(b"not a safetensors file")
    one_line_error(run_main(capsys, "import", cut, "--out", tmp_path / "x"), "cannot read weights")
    (cut / "model.safetensors").unlink()
    one_line_error(run_main(capsys, "import", cut, "--out", tmp_path / "x"), "no weights")
    # A tokenizer with more ids than the model has rows.
    small = tmp_path / "small"
    shutil.copytree(src, small)
    cfg = json.loads((small / "config.json").read_text())
    (small / "config.json").write_text(json.dumps({**cfg, "vocab_size": 100}))
    one_line_error(run_main(capsys, "import", small, "--out", tmp_path / "x"), "ids but the model only 100 rows")
    # RoPE scaling (Llama 3.1+), which MiniLLM does not compute.
    scaled = tmp_path / "scaled"
    shutil.copytree(src, scaled)
    cfg = json.loads((scaled / "config.json").read_text())
    cfg["rope_scaling"] = {"rope_type": "llama3", "factor": 8.0}
    cfg.pop("rope_parameters", None)
    (scaled / "config.json").write_text(json.dumps(cfg))
    one_line_error(run_main(capsys, "import", scaled, "--out", tmp_path / "x"), "RoPE scaling", "llama3")
    assert not (tmp_path / "x").exists()  # nothing written for bad input
