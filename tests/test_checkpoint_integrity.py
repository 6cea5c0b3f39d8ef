"""A model folder proves it is what was saved: damaged weights, a swapped tokenizer and absurd
config values are one-line errors, found before anything large is allocated."""

import json
import os
import subprocess
import sys

import pytest
import torch
from safetensors.torch import save_file

from llm_foundry.config import ModelConfig
from llm_foundry.models import MiniLLM, load_model_dir, save_model_dir
from llm_foundry.tokenizers import build_tokenizer
from llm_foundry.utils.errors import FoundryError

from helpers import one_line_error, run_cli

TEXT = "the quick brown fox jumps over the lazy dog"


@pytest.fixture
def folder(tmp_path):
    """A small saved model folder (char tokenizer, two layers)."""
    tok = build_tokenizer("char", [TEXT])
    torch.manual_seed(0)
    model = MiniLLM(ModelConfig(vocab_size=tok.vocab_size, dim=32, n_layers=2, n_heads=2, max_seq_len=32))
    save_model_dir(tmp_path / "m", model, tok, step=5)
    return tmp_path / "m"


def generate(folder, **kw):
    return run_cli("generate", folder, "--prompt", "the", "--max-new-tokens", "3", "--device", "cpu", **kw)


def test_a_flipped_bit_in_the_tensor_data_is_named_in_one_line(folder):
    file = folder / "model.safetensors"
    data = bytearray(file.read_bytes())
    start = 8 + int.from_bytes(data[:8], "little")  # safetensors: header length, header, tensor data
    data[start + (len(data) - start) // 2] ^= 0x10  # one bit, mid-tensor: still a well-formed file
    file.write_bytes(bytes(data))
    with pytest.raises(FoundryError, match=r"model\.safetensors is damaged \(checksum mismatch\)"):
        load_model_dir(folder)
    one_line_error(generate(folder), "model.safetensors is damaged (checksum mismatch)")


def test_a_flipped_bit_in_the_header_is_one_line(folder):
    file = folder / "model.safetensors"
    data = file.read_bytes()
    assert data.count(b'"step":"5"') == 1
    file.write_bytes(data.replace(b'"step":"5"', b'"step":"u"'))  # '5' ^ 0x40 == 'u'
    with pytest.raises(FoundryError, match=r"weights file is corrupt or truncated: .*model\.safetensors"):
        load_model_dir(folder)


def test_a_smaller_tokenizer_swapped_in_is_refused(folder):
    build_tokenizer("char", ["the fox"]).save(folder / "tokenizer.json")  # fewer ids than the model has
    with pytest.raises(FoundryError, match="tokenizer does not match the model it was saved with"):
        load_model_dir(folder)
    one_line_error(generate(folder), "tokenizer.json: tokenizer does not match the model it was saved with",
                   "saved with char,")
    # Weights alone (what training reads with with_tokenizer=False) still load.
    assert load_model_dir(folder, with_tokenizer=False).step == 5


def test_fine_tuning_refuses_a_swapped_tokenizer(tmp_path):
    # midtrain/sft/rl read the tokenizer of the model folder they start from: the same check holds.
    tok = build_tokenizer("byte")
    model = MiniLLM(ModelConfig(vocab_size=tok.vocab_size, dim=32, n_layers=1, n_heads=2, max_seq_len=32))
    save_model_dir(tmp_path / "m", model, tok)
    build_tokenizer("char", [TEXT]).save(tmp_path / "m" / "tokenizer.json")
    proc = run_cli("sft", tmp_path / "m", "--out", tmp_path / "sft", "--max-steps", "1", "--device", "cpu")
    one_line_error(proc, "tokenizer does not match the model it was saved with (saved with byte, 267 ids, found char,")
    assert not (tmp_path / "sft" / "model.safetensors").exists()


def test_a_folder_saved_before_checksums_still_loads(folder):
    # The metadata of a version that wrote neither the checksum nor the tokenizer's fingerprint.
    before = load_model_dir(folder)
    tensors = {k: v for k, v in before.model.state_dict().items() if k != "output.weight"}
    save_file(tensors, str(folder / "model.safetensors"), metadata={"step": "5", "format": "pt"})
    again = load_model_dir(folder)
    assert again.step == 5 and again.tokenizer.vocab_size == before.tokenizer.vocab_size
    x = torch.tensor([before.tokenizer.encode("the fox")])
    torch.testing.assert_close(again.model(x)[0], before.model(x)[0])


# The child runs the real CLI and reports its own peak RSS. Its address space is capped at 4 GiB, so
# a loader that does try the allocation fails fast (a traceback) instead of straining the machine.
PEAK_RSS = """
import os, resource, runpy, sys
resource.setrlimit(resource.RLIMIT_AS, (4 << 30, 4 << 30))
sys.argv = ["foundry", *sys.argv[1:]]
try:
    runpy.run_module("llm_foundry", run_name="__main__")
finally:
    with open(os.environ["PEAK_RSS_FILE"], "w") as f:
        f.write(str(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024))  # kB -> MB
"""


def generate_peak_rss(folder, tmp_path):
    """Run `foundry generate FOLDER` in a capped child; its result and its peak RSS in MB."""
    out = tmp_path / "peak_rss"
    proc = subprocess.run([sys.executable, "-c", PEAK_RSS, "generate", str(folder), "--prompt", "the",
                           "--max-new-tokens", "3", "--device", "cpu"],
                          capture_output=True, text=True, timeout=300, env={**os.environ, "PEAK_RSS_FILE": str(out)})
    return proc, int(out.read_text())


@pytest.mark.parametrize("raw", ["10000000000", "1e10"])
def test_an_absurd_max_seq_len_in_config_json_is_refused_before_allocating(folder, tmp_path, raw):
    text = (folder / "config.json").read_text()  # RoPE tables of 10^10 positions: a 40 GB allocation
    (folder / "config.json").write_text(text.replace('"max_seq_len": 32', f'"max_seq_len": {raw}'))
    assert json.loads((folder / "config.json").read_text())["max_seq_len"] == 1e10
    proc, peak_mb = generate_peak_rss(folder, tmp_path)  # first in the capped child: it may try to allocate
    one_line_error(proc, "model.max_seq_len must be an integer from 1 to 1,048,576")
    assert peak_mb < 1024, f"peak RSS {peak_mb} MB"
    with pytest.raises(FoundryError, match="model.max_seq_len must be an integer from 1 to 1,048,576"):
        load_model_dir(folder)


def test_a_config_that_does_not_fit_the_weights_is_refused_before_allocating(folder, tmp_path):
    # Within the bounds, but a 16 GB embedding the 200 kB weights file cannot hold: the shapes are
    # compared on the meta device, so the error comes before any of it is allocated.
    config = json.loads((folder / "config.json").read_text())
    config.update(vocab_size=2_000_000, dim=2048, n_heads=16)
    (folder / "config.json").write_text(json.dumps(config))
    proc, peak_mb = generate_peak_rss(folder, tmp_path)  # first in the capped child: it may try to allocate
    one_line_error(proc, "do not match its config.json", "tok_embeddings.weight")
    assert peak_mb < 1024, f"peak RSS {peak_mb} MB"
    with pytest.raises(FoundryError, match="do not match its config.json"):
        load_model_dir(folder)


def test_a_loaded_model_owns_its_weights(folder):
    # Rewriting the file in place (`cp` over it, a disk tool) must neither change nor crash a model
    # that is already running: the weights are read into memory, not mapped from the file.
    bundle = load_model_dir(folder)
    before = {k: v.clone() for k, v in bundle.model.state_dict().items()}
    with open(folder / "model.safetensors", "r+b") as f:
        f.truncate(16)
    x = torch.tensor([bundle.tokenizer.encode("the fox")])
    bundle.model(x)
    assert all(torch.equal(v, before[k]) for k, v in bundle.model.state_dict().items())
