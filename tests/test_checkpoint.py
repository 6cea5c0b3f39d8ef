import json
import shutil

import pytest
import torch

from llm_foundry.models import load_model_dir, save_model_dir
from llm_foundry.utils.errors import FoundryError

from helpers import run_cli


@pytest.fixture
def model_copy(trained_run, tmp_path):
    dst = tmp_path / "m"
    shutil.copytree(trained_run, dst, symlinks=True)  # the run folder's layout as it is (links into checkpoint/)
    return dst


def test_save_load_round_trip(trained_run, tmp_path):
    bundle = load_model_dir(trained_run)
    save_model_dir(tmp_path / "copy", bundle.model, bundle.tokenizer, step=7)
    again = load_model_dir(tmp_path / "copy")
    assert again.step == 7
    x = torch.randint(0, bundle.model.cfg.vocab_size, (1, 16))
    torch.testing.assert_close(again.model(x)[0], bundle.model(x)[0])
    assert not list((tmp_path / "copy").glob("*.tmp"))  # no temp litter
    mode = (tmp_path / "copy" / "model.safetensors").stat().st_mode & 0o777
    assert mode == 0o666 & ~_umask()  # shareable like any other file, not owner-only


def _umask():
    import os
    mask = os.umask(0)
    os.umask(mask)
    return mask


@pytest.mark.parametrize("damage, message", [
    (lambda d: (d / "model.safetensors").write_bytes((d / "model.safetensors").read_bytes()[:1000]), "corrupt or truncated"),
    (lambda d: (d / "model.safetensors").write_bytes(b"not a safetensors file at all"), "corrupt or truncated"),
    (lambda d: (d / "config.json").write_text(json.dumps({"architectures": ["LlamaForCausalLM"], "hidden_size": 64})), "not a MiniLLM config"),
    (lambda d: (d / "config.json").write_text((d / "config.json").read_text().replace('"dim": 64', '"dim": 128')), "do not match its config"),
    (lambda d: (d / "config.json").write_text((d / "config.json").read_text()[:-20]), "not valid JSON"),
    (lambda d: (d / "model.safetensors").unlink(), "weights not found"),
    (lambda d: (d / "tokenizer.json").write_text("{}"), "not a tokenizer"),
])
def test_damaged_model_folder_is_a_clear_error(model_copy, damage, message):
    damage(model_copy)
    with pytest.raises(FoundryError, match=message):
        load_model_dir(model_copy)
    # The CLI says the same in one line, with no traceback.
    proc = run_cli("generate", model_copy, "--prompt", "A", "--max-new-tokens", "3")
    assert proc.returncode == 1
    assert proc.stderr.strip().count("\n") == 0 and proc.stderr.startswith("error:") and "Traceback" not in proc.stderr


def test_corrupt_training_state_refuses_resume_and_keeps_files(model_copy, shakespeare_data):
    state = model_copy / "training_state.pt"
    state.write_bytes(state.read_bytes()[:500])
    before = {p: p.read_bytes() for p in model_copy.rglob("*") if p.is_file()}
    proc = run_cli("train", "--data", shakespeare_data, "--out", model_copy, "--resume", "--quiet")
    assert proc.returncode == 1 and "training state is corrupt" in proc.stderr and "Traceback" not in proc.stderr
    assert {p: p.read_bytes() for p in model_copy.rglob("*") if p.is_file()} == before


def test_weights_and_state_from_different_steps_are_detected(model_copy, shakespeare_data):
    # Weights of another step beside the training state (as a version that saved file by file could
    # leave after a kill, or a weights file copied in by hand): resuming refuses, naming both steps.
    bundle = load_model_dir(model_copy)
    other = model_copy.parent / "other"
    save_model_dir(other, bundle.model, bundle.tokenizer, step=bundle.step + 5)
    (model_copy / "model.safetensors").unlink()
    shutil.copy(other / "model.safetensors", model_copy / "model.safetensors")
    proc = run_cli("train", "--data", shakespeare_data, "--out", model_copy, "--resume", "--quiet")
    assert proc.returncode == 1 and "come from different saves" in proc.stderr
    assert f"step {bundle.step + 5}" in proc.stderr and f"step {bundle.step}" in proc.stderr
