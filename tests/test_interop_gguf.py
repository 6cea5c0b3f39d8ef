"""`foundry export --format gguf`: one file that llama.cpp runs as we do.

Checked with llama.cpp itself through ``llama-cpp-python`` (the ``llama`` extra, not in
``test``: it compiles llama.cpp; these tests skip with a message without it): for f16 the
greedy tokens of llama.cpp equal ours, for a ``llama`` model (byte tokenizer, GQA, untied
head) and a ``qwen3`` one (BPE, QK-norm, tied); llama.cpp tokenizes text to our ids; q8_0
agrees with our argmax on at least Q8_AGREEMENT of the positions of a teacher-forced text.
The file's layout is checked with the ``gguf`` reader everywhere.
"""

from __future__ import annotations

import pytest
import torch

gguf = pytest.importorskip("gguf", reason="the gguf package is not installed (pip install 'llm-foundry[gguf]')")

from helpers import one_line_error, run_cli, run_main  # noqa: E402
from llm_foundry import MiniLLM, ModelConfig  # noqa: E402
from llm_foundry.export.gguf import export_gguf, pairs_from_halves  # noqa: E402
from llm_foundry.models.model_dir import load_model_dir, save_model_dir  # noqa: E402
from llm_foundry.tokenizers import BPETokenizer, ByteTokenizer  # noqa: E402

Q8_AGREEMENT = 0.95  # share of positions where q8_0's argmax is ours (measured 1.000 on both models; docs/*/interop.md)
N_NEW = 24  # greedy tokens compared
BPE_CORPUS = ["The quick brown fox jumps over the lazy dog. It's 42 degrees; don't panic!\n" * 4,
              "床前明月光，疑是地上霜。举头望明月，低头思故乡。" * 3, "Emoji 😀🎉 and tabs\tand  spaces  " * 3]
TEXTS = ["The quick brown fox, it's 42!", "床前明月光，疑是地上霜。", "Emoji 😀 and tabs\tand newlines\nend"]
CASES = {  # name -> (tokenizer kind, model overrides); llama.cpp architecture: llama, or qwen3 for qk_norm
    "llama_byte": ("byte", dict(n_kv_heads=2, tie_embeddings=False)),
    "qwen3_bpe": ("bpe", dict(qk_norm=True, n_kv_heads=1)),
}


def train_briefly(model, tok, steps: int = 80) -> None:
    """A few dozen steps on the corpus, so the logits mean something (q8_0 is measured on them)."""
    ids = tok.encode("".join(BPE_CORPUS + TEXTS))
    x = torch.tensor([ids[i:i + 64] for i in range(0, len(ids) - 65, 32)])
    y = torch.tensor([ids[i + 1:i + 65] for i in range(0, len(ids) - 65, 32)])
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    for _ in range(steps):
        _, loss = model(x, y)
        opt.zero_grad()
        loss.backward()
        opt.step()


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """name -> model folder, briefly trained; weights rounded to float16, so the f16 file holds them exactly."""
    root = tmp_path_factory.mktemp("gguf")
    bpe = BPETokenizer.train(BPE_CORPUS, 330)
    out = {}
    for seed, (name, (kind, overrides)) in enumerate(CASES.items()):
        tok = ByteTokenizer() if kind == "byte" else bpe
        torch.manual_seed(seed)
        model = MiniLLM(ModelConfig(vocab_size=tok.vocab_size, dim=64, n_layers=2, n_heads=4, max_seq_len=128,
                                    **overrides))
        with torch.no_grad():
            for n, p in model.named_parameters():
                if n.endswith("norm.weight"):
                    p.uniform_(0.5, 1.5)  # a mix-up of two norms would show
        train_briefly(model, tok)
        with torch.no_grad():
            for p in model.parameters():
                p.copy_(p.half().float())
        save_model_dir(root / name, model, tok)
        out[name] = root / name
    return out


def our_greedy(model, prompt: list[int], n: int = N_NEW) -> list[int]:
    ids = list(prompt)
    with torch.no_grad():
        for _ in range(n):
            logits, _ = model(torch.tensor([ids]))
            ids.append(int(logits[0, -1].argmax()))
    return ids[len(prompt):]


def prompt_ids(tok) -> list[int]:
    return [tok.token_id("<|bos|>"), *tok.encode("The quick brown 床前")]


# ------------------------------------------------------------------ the file (gguf reader)
def test_file_layout(models, tmp_path):
    src = models["llama_byte"]
    bundle = load_model_dir(src)
    path = export_gguf(src, tmp_path / "m.gguf")
    r = gguf.GGUFReader(str(path))

    def field(key):
        f = r.fields[key]
        return f.contents() if hasattr(f, "contents") else f.parts[f.data[0]].tolist()

    assert field("general.architecture") == "llama"
    assert field("llama.block_count") == 2 and field("llama.attention.head_count_kv") == 2
    assert field("tokenizer.ggml.model") == "gpt2"
    tokens = field("tokenizer.ggml.tokens")
    assert len(tokens) == bundle.model.cfg.vocab_size and tokens[256:] == list(bundle.tokenizer.special_tokens)
    assert field("tokenizer.ggml.eos_token_id") == bundle.tokenizer.token_id("<|eos|>")
    assert field("tokenizer.ggml.eot_token_id") == bundle.tokenizer.token_id("<|assistant_end|>")
    names = {t.name: t for t in r.tensors}
    assert "output.weight" in names and names["blk.0.attn_q.weight"].tensor_type == gguf.GGMLQuantizationType.F16
    # The embedding is stored exactly (f16 weights); q/k rows are reordered for llama.cpp's rotation.
    emb = torch.from_numpy(names["token_embd.weight"].data.astype("float32")).reshape(bundle.model.cfg.vocab_size, 64)
    assert torch.equal(emb, bundle.model.tok_embeddings.weight)
    q8 = export_gguf(src, tmp_path / "m8.gguf", quant="q8_0")
    assert q8.stat().st_size < 0.7 * path.stat().st_size
    r8 = gguf.GGUFReader(str(q8))
    assert {t.name: t.tensor_type for t in r8.tensors}["blk.0.ffn_up.weight"] == gguf.GGMLQuantizationType.Q8_0
    tied = gguf.GGUFReader(str(export_gguf(models["qwen3_bpe"], tmp_path / "q.gguf")))
    names = {t.name for t in tied.tensors}
    assert "output.weight" not in names and "blk.1.attn_k_norm.weight" in names  # tied head stored once


def test_pair_order_computes_the_same_rotation():
    """Neighbouring-pair RoPE on reordered rows = rotate-half RoPE on ours, head by head."""
    from llm_foundry.models.components import apply_rope, rope_tables

    heads, d, t = 3, 8, 5
    w, x = torch.randn(heads * d, 16), torch.randn(t, 16)
    cos, sin = rope_tables(d, t)
    ours = apply_rope((x @ w.T).view(t, heads, d).transpose(0, 1), cos, sin)
    y = (x @ pairs_from_halves(w, heads).T).view(t, heads, d).transpose(0, 1)
    even, odd = y[..., 0::2], y[..., 1::2]
    pairs = torch.stack((even * cos - odd * sin, odd * cos + even * sin), dim=-1).flatten(-2)
    # the same numbers, in pair order: (0, d/2), (1, d/2+1), ...
    assert torch.allclose(pairs, torch.stack((ours[..., :d // 2], ours[..., d // 2:]), dim=-1).flatten(-2), atol=1e-6)


def test_cli_export_gguf_and_bad_input(models, tmp_path, trained_run, capsys):
    out = tmp_path / "m.gguf"
    proc = run_cli("export", models["qwen3_bpe"], "--format", "gguf", "--quant", "q8_0", "--out", out)
    assert proc.returncode == 0, proc.stderr
    assert out.is_file() and not [p for p in tmp_path.iterdir() if p.name.startswith(".")]
    model = models["qwen3_bpe"]
    one_line_error(run_main(capsys, "export", model, "--format", "gguf", "--out", out), "exists", "--force")
    one_line_error(run_main(capsys, "export", model, "--format", "gguf", "--quant", "q4", "--out", tmp_path / "x"),
                   "unknown --quant", "q8_0")
    one_line_error(run_main(capsys, "export", model, "--quant", "q8_0", "--out", tmp_path / "x"), "gguf only")
    # The char tokenizer (the trained run of conftest) is refused, nothing written.
    one_line_error(run_main(capsys, "export", trained_run, "--format", "gguf", "--out", tmp_path / "c.gguf"),
                   "char tokenizer cannot be exported to GGUF", "byte or bpe")
    assert not (tmp_path / "c.gguf").exists() and not (tmp_path / "x").exists()


def model_with_split(folder, split: str):
    """A one-layer model folder whose BPE splits text as ``split`` says: ``smollm`` (single digits,
    then GPT-2's split), a name of ``_SPLITS`` (that Split regex), or any other regex; returns its tokenizer."""
    from tokenizers import Regex, Tokenizer, decoders, models as tk_models, pre_tokenizers, trainers

    from llm_foundry.export.gguf import _SPLITS
    from llm_foundry.tokenizers.special import DEFAULT_SPECIAL_TOKENS

    hf = Tokenizer(tk_models.BPE())
    if split == "smollm":
        hf.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True),
                                                    pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)])
    else:
        pattern = next((p for p, name in _SPLITS.items() if name == split), split)
        hf.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Split(Regex(pattern), behavior="isolated"),
                                                    pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    hf.decoder = decoders.ByteLevel()
    hf.train_from_iterator(BPE_CORPUS, trainers.BpeTrainer(vocab_size=330, special_tokens=DEFAULT_SPECIAL_TOKENS,
                                                            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                                            show_progress=False))
    tok = BPETokenizer(hf)
    save_model_dir(folder, MiniLLM(ModelConfig(vocab_size=tok.vocab_size, dim=64, n_layers=1, n_heads=4,
                                               max_seq_len=64)), tok)
    return tok


def test_unknown_split_refused(tmp_path):
    """A byte-level BPE whose regex split llama.cpp does not know: one line, no file (llama.cpp would
    tokenize text differently)."""
    from llm_foundry.utils.errors import FoundryError

    model_with_split(tmp_path / "m", r"\w+|\W")
    with pytest.raises(FoundryError, match="not a split llama.cpp knows"):
        export_gguf(tmp_path / "m", tmp_path / "m.gguf")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m"]


# ------------------------------------------------------------------ llama.cpp itself
@pytest.fixture(scope="module")
def llama_cpp():
    return pytest.importorskip("llama_cpp", reason="llama-cpp-python is not installed (pip install "
                               "'llm-foundry[llama]' compiles llama.cpp); the GGUF files are not run here")


def load_llama(llama_cpp, path, logits_all=False):
    return llama_cpp.Llama(model_path=str(path), n_ctx=128, n_batch=128, n_threads=1, logits_all=logits_all,
                           verbose=False, seed=0)


@pytest.mark.parametrize("name", CASES)
def test_llama_cpp_greedy_equals_ours_f16(models, llama_cpp, tmp_path, name):
    bundle = load_model_dir(models[name])
    path = export_gguf(models[name], tmp_path / f"{name}.gguf")
    llm = load_llama(llama_cpp, path)
    prompt = prompt_ids(bundle.tokenizer)
    theirs = []
    for tok in llm.generate(prompt, top_k=1, top_p=1.0, min_p=0.0, temp=0.0, repeat_penalty=1.0):
        theirs.append(tok)
        if len(theirs) == N_NEW:
            break
    assert theirs == our_greedy(bundle.model.eval(), prompt)


@pytest.mark.parametrize("name", CASES)
def test_llama_cpp_tokenizes_as_we_do(models, llama_cpp, tmp_path, name):
    tok = load_model_dir(models[name]).tokenizer
    llm = llama_cpp.Llama(model_path=str(export_gguf(models[name], tmp_path / "t.gguf")), vocab_only=True, verbose=False)
    for text in TEXTS:
        ids = tok.encode(text)
        assert llm.tokenize(text.encode(), add_bos=False, special=False) == ids, text
        assert llm.detokenize(ids).decode() == text
    # Special tokens are control tokens: read from text only when asked (our chat renderer inserts ids).
    assert llm.tokenize(b"<|assistant_end|>", add_bos=False, special=True) == [tok.token_id("<|assistant_end|>")]


@pytest.mark.parametrize("name", CASES)
def test_llama_cpp_q8_0_agreement(models, llama_cpp, tmp_path, name):
    """Teacher-forced: at every position of a text, does q8_0's next-token argmax equal ours?"""
    bundle = load_model_dir(models[name])
    tok, model = bundle.tokenizer, bundle.model.eval()
    ids = [tok.token_id("<|bos|>"), *tok.encode(" ".join(TEXTS + BPE_CORPUS[:1]))][:128]
    llm = load_llama(llama_cpp, export_gguf(models[name], tmp_path / "q8.gguf", quant="q8_0"), logits_all=True)
    llm.eval(ids)
    theirs = torch.from_numpy(llm.scores[:len(ids)].copy()).argmax(-1)
    with torch.no_grad():
        ours = model(torch.tensor([ids]))[0][0].argmax(-1)
    rate = (theirs == ours).float().mean().item()
    print(f"q8_0 argmax agreement {name}: {rate:.3f} over {len(ids)} positions")  # measured: 1.000 for both
    assert rate >= Q8_AGREEMENT


def test_llama_cpp_chat_reply_stops_where_ours_does(llama_cpp, tmp_path):
    """A chat model's reply in llama.cpp: the same text as our Engine's, ended at <|assistant_end|>."""
    from helpers import overfit_on
    from llm_foundry.data.chat import render_prompt
    from llm_foundry.inference.engine import Engine

    lesson = [{"role": "user", "content": "What is 2+3?"}, {"role": "assistant", "content": "It is 5."}]
    tok = ByteTokenizer()
    torch.manual_seed(0)
    model = MiniLLM(ModelConfig(vocab_size=tok.vocab_size, dim=64, n_layers=2, n_heads=4, max_seq_len=128))
    overfit_on(model, tok, lesson, steps=120)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(p.half().float())
    save_model_dir(tmp_path / "chat", model.eval(), tok)
    ours = "".join(e["text"] for e in Engine(model, tok, precision="fp32", tools=False).chat(
        lesson[:1], max_tokens=24, temperature=0) if e["type"] == "text")
    assert ours == "It is 5."
    llm = load_llama(llama_cpp, export_gguf(tmp_path / "chat", tmp_path / "chat.gguf"))
    out = llm.create_completion(render_prompt(tok, lesson), max_tokens=24, temperature=0.0, top_k=1,
                                repeat_penalty=1.0)
    assert out["choices"][0]["text"] == ours and out["choices"][0]["finish_reason"] == "stop"
    # The chat API of llama-cpp-python renders the chat template stored in the file.
    reply = llm.create_chat_completion(lesson[:1], max_tokens=24, temperature=0.0, top_k=1, repeat_penalty=1.0)
    assert reply["choices"][0]["message"]["content"] == ours and reply["choices"][0]["finish_reason"] == "stop"
    vocab = llama_cpp.llama_model_get_vocab(llm.model)
    for name, ends in (("<|assistant_end|>", True), ("<|eos|>", True), ("<|user_start|>", True), ("<|pad|>", False)):
        assert llama_cpp.llama_vocab_is_eog(vocab, tok.token_id(name)) == ends, name


@pytest.mark.parametrize("split", ["llama-bpe", "qwen2", "smollm"])
def test_llama_cpp_reads_imported_tokenizers(llama_cpp, tmp_path, split):
    """A BPE with Llama 3's, Qwen2's or SmolLM's split (what `foundry import` brings in) tokenizes alike in llama.cpp."""
    tok = model_with_split(tmp_path / "m", split)
    llm = llama_cpp.Llama(model_path=str(export_gguf(tmp_path / "m", tmp_path / "m.gguf")), vocab_only=True,
                          verbose=False)
    for text in [*TEXTS, "It's 1234567 o'clock, DON'T  stop\n\n  now"]:
        assert llm.tokenize(text.encode(), add_bos=False, special=False) == tok.encode(text), text
