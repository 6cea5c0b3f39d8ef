"""What a review of issue 21 as merged found still broken, each kept as a test.

The cases use real parts: real run and model folders on disk, a real save interrupted by a fault
injected into the file-system call at the instant a kill would land, the real CLI in a subprocess.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from helpers import TINY_MODEL, one_line_error, run_cli


# ---------------------------------------------------------------------------- checkpoint swaps
class Killed(BaseException):
    """Stands for a SIGKILL at one instant of a save: nothing after it runs."""


def _save_killed_between_the_two_renames(run: Path, monkeypatch) -> int:
    """Save a new checkpoint of ``run`` by the portable swap (no renameat2), killed after the old
    ``checkpoint/`` was moved aside and before the complete new one took its name; returns its step."""
    from llm_foundry.models import load_model_dir
    from llm_foundry.models.model_dir import STATE_FILE, save_checkpoint_dir
    from llm_foundry.utils import io

    bundle = load_model_dir(run)
    state = (run / STATE_FILE).read_bytes()
    monkeypatch.setattr(io, "_renameat2", False)  # as on a system without RENAME_EXCHANGE
    rename = io._rename

    def rename_then_die(src: Path, dst: Path) -> None:
        if ".foundry-new-" in src.name and dst.name == "checkpoint":
            raise Killed
        rename(src, dst)

    monkeypatch.setattr(io, "_rename", rename_then_die)
    with pytest.raises(Killed):
        save_checkpoint_dir(run, bundle.model, bundle.tokenizer, step=bundle.step + 1, state_bytes=state)
    monkeypatch.setattr(io, "_rename", rename)
    assert not (run / "checkpoint").exists()  # the instant the test is about
    return bundle.step + 1


def test_reader_finishes_a_swap_killed_between_its_two_renames(trained_run, tmp_path, monkeypatch):
    """`foundry generate RUN` in that instant reads the new checkpoint, not links to nothing."""
    from llm_foundry.models import load_model_dir

    run = tmp_path / "run"
    shutil.copytree(trained_run, run, symlinks=True)
    step = _save_killed_between_the_two_renames(run, monkeypatch)
    assert load_model_dir(run).step == step
    assert sorted(p.name for p in run.iterdir() if p.name.startswith(".checkpoint")) == []


def test_resume_after_a_swap_killed_between_its_two_renames_continues(trained_run, tmp_path, monkeypatch):
    """`foundry train --resume` continues from the saved checkpoint; it must not start the run over."""
    from llm_foundry.models.model_dir import STATE_FILE
    from llm_foundry.training.trainer import check_run_folder, nothing_saved_yet

    run = tmp_path / "run"
    shutil.copytree(trained_run, run, symlinks=True)
    _save_killed_between_the_two_renames(run, monkeypatch)
    assert not nothing_saved_yet(run)
    check_run_folder(run, resume=True)
    assert (run / STATE_FILE).is_file() and (run / "metrics.jsonl").is_file()


def test_a_reader_during_a_save_leaves_the_save_alone(trained_run, tmp_path, monkeypatch):
    """`foundry generate RUN` while `foundry train` saves: the reader reads the checkpoint there is and
    must not take the save's folder, still being written, for a leftover of a kill (the save would fail)."""
    from llm_foundry.models import load_model_dir
    from llm_foundry.models.model_dir import STATE_FILE, save_checkpoint_dir
    from llm_foundry.utils import io

    run = tmp_path / "run"
    shutil.copytree(trained_run, run, symlinks=True)
    bundle = load_model_dir(run)
    read_meanwhile = []
    fsync_tree = io.fsync_tree

    def read_then_sync(folder):  # the new checkpoint is written, not yet swapped in
        if not read_meanwhile:
            read_meanwhile.append(load_model_dir(run).step)
        fsync_tree(folder)

    monkeypatch.setattr(io, "fsync_tree", read_then_sync)
    save_checkpoint_dir(run, bundle.model, bundle.tokenizer, step=bundle.step + 1,
                        state_bytes=(run / STATE_FILE).read_bytes())
    assert read_meanwhile == [bundle.step]
    assert load_model_dir(run).step == bundle.step + 1


def test_evolve_demo_during_a_champion_swap_leaves_the_swap_alone(tmp_path, monkeypatch):
    """`foundry evolve --mode demo` (no lock: a reader) while `--mode evolve` replaces the champion:
    the reader takes the champion there is and must not delete the new one being written."""
    import torch

    from llm_foundry.config import ModelConfig
    from llm_foundry.evolve.state import StatePaths, write_model_dir
    from llm_foundry.models import MiniLLM, load_model_dir
    from llm_foundry.tokenizers import build_tokenizer
    from llm_foundry.utils import io

    tok = build_tokenizer("byte")
    torch.manual_seed(0)
    model = MiniLLM(ModelConfig(vocab_size=tok.vocab_size, dim=16, n_layers=1, n_heads=2, max_seq_len=16))
    paths = StatePaths(tmp_path / "state")
    write_model_dir(paths.champion, model, tok, step=1)
    read_meanwhile = []
    fsync_tree = io.fsync_tree

    def read_then_sync(folder):  # the new champion is written, not yet swapped in
        if not read_meanwhile:
            read_meanwhile.append(load_model_dir(StatePaths(paths.root).require_champion()).step)
        fsync_tree(folder)

    monkeypatch.setattr(io, "fsync_tree", read_then_sync)
    write_model_dir(paths.champion, model, tok, step=2)
    assert read_meanwhile == [1] and load_model_dir(paths.champion).step == 2


# ---------------------------------------------------------------------------- --resume
def test_resume_into_a_model_folder_is_refused_and_leaves_it_as_it_was(shakespeare_data, tmp_path):
    """A model folder (no training state) given to --resume is not "a run killed before its first
    checkpoint": it is refused in one line, and its weights are not replaced by a new model's."""
    from llm_foundry.config import load_config
    from llm_foundry.models import MiniLLM, save_model_dir
    from llm_foundry.tokenizers import load_tokenizer

    model_cfg, _ = load_config("tiny", TINY_MODEL)
    tok = load_tokenizer(shakespeare_data / "tokenizer.json")
    model_cfg.vocab_size = tok.vocab_size
    folder = tmp_path / "my_model"
    save_model_dir(folder, MiniLLM(model_cfg), tok, step=7)
    before = {p.name: p.read_bytes() for p in folder.iterdir()}
    proc = run_cli("train", "--data", str(shakespeare_data), "--out", str(folder), "--resume", "--quiet",
                   *TINY_MODEL, "max_steps=2", "batch_size=2", "eval_interval=0")
    one_line_error(proc, "nothing to resume")
    assert {p.name: p.read_bytes() for p in folder.iterdir()} == before


# ---------------------------------------------------------------------------- serve: an allowed web origin
def test_allowed_origin_preflight_allows_the_headers_a_client_library_sends(tmp_path):
    """A page of a --cors-origin origin that calls the API through the OpenAI JS SDK asks, in its
    preflight, to send the SDK's own headers as well; a fixed list of two would make the browser
    block every call of that origin the operator allowed."""
    import httpx

    from test_serve_http_attacks import APP_ORIGIN, start
    from test_serve import chatty_model

    asked = "authorization, content-type, x-stainless-os, x-stainless-retry-count"
    model_dir = chatty_model(tmp_path / "m", dim=32, n_layers=1, max_seq_len=64)
    with start(model_dir, cors_origins=(APP_ORIGIN,)) as server:
        r = httpx.options(server.url + "/v1/chat/completions", headers={
            "Origin": APP_ORIGIN, "Access-Control-Request-Method": "POST", "Access-Control-Request-Headers": asked})
        assert r.status_code == 204 and r.headers["access-control-allow-origin"] == APP_ORIGIN
        allowed = {h.strip().lower() for h in r.headers["access-control-allow-headers"].split(",")}
        assert set(asked.split(", ")) <= allowed
        # A foreign origin's preflight is still refused, whatever it asks for.
        r = httpx.options(server.url + "/v1/chat/completions", headers={
            "Origin": "http://evil.example", "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": asked})
        assert r.status_code == 403 and r.json()["error"]["code"] == "origin_not_allowed"


# ---------------------------------------------------------------------------- serve: JSON inside the JSON
@pytest.fixture(scope="module")
def default_cap_server(tmp_path_factory):
    """A real server with the default 4 MiB body cap (room for a body nested 100,000 deep)."""
    from test_serve import chatty_model
    from test_serve_http_attacks import start

    model_dir = chatty_model(tmp_path_factory.mktemp("args") / "m", dim=32, n_layers=1, max_seq_len=64)
    with start(model_dir, max_body_bytes=4 * 1024 * 1024) as server:
        yield server


def _chat_with_tool_arguments(arguments: str) -> dict:
    return {"model": "m", "max_tokens": 1, "messages": [
        {"role": "user", "content": "2+2?"},
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": "c1", "type": "function", "function": {"name": "calculator", "arguments": arguments}}]},
        {"role": "tool", "tool_call_id": "c1", "content": "4"},
        {"role": "user", "content": "and so?"}]}


@pytest.mark.parametrize("arguments", [
    '{"expression": "\\ud800"}',                           # a lone surrogate, escaped inside the string
    '{"expression": "1", "x": ' + "9" * 5000 + "}",        # an integer over 4,300 digits
    "[" * 100_000 + "]" * 100_000,                          # nested deeper than the parser's recursion limit
], ids=["lone-surrogate", "5000-digit-integer", "nested-100000"])
def test_tool_call_arguments_are_checked_like_the_body(default_cap_server, arguments):
    """A tool call's ``function.arguments`` is JSON inside the body's JSON: the client mistakes that
    are a 400 in the body (issue 21) are a 400 there too, never a 500."""
    import httpx

    from test_serve_http_attacks import assert_error

    url = default_cap_server.url + "/v1/chat/completions"
    err = assert_error(httpx.post(url, json=_chat_with_tool_arguments(arguments), timeout=60), 400, None)
    assert err["param"] == "messages.1.tool_calls.0", err
    ok = httpx.post(url, json=_chat_with_tool_arguments('{"expression": "2+2"}'), timeout=60)
    assert ok.status_code == 200, ok.text


def test_a_config_whose_rope_tables_would_be_gigabytes_is_one_line():
    """Within every single bound (context 2**20, head size 1,024) the RoPE tables alone would take ~6 GiB."""
    from llm_foundry.config import ModelConfig
    from llm_foundry.utils.errors import FoundryError

    with pytest.raises(FoundryError, match="max_seq_len x head size"):
        ModelConfig(vocab_size=256, dim=1024, n_layers=1, n_heads=1, max_seq_len=2**20).validate()
    ModelConfig(vocab_size=256, dim=1024, n_layers=1, n_heads=8, max_seq_len=2**17).validate()  # 128k x 128 is fine


def test_an_ipv4_loopback_client_of_a_dual_stack_server_counts_as_loopback():
    from llm_foundry.serve.guard import is_loopback

    assert is_loopback("::ffff:127.0.0.1") and is_loopback("::1") and is_loopback("127.0.0.2")
    assert not is_loopback("::ffff:10.0.0.1") and not is_loopback("evil.example")


def test_online_with_a_file_as_its_state_folder_is_one_clear_line(tmp_path):
    state = tmp_path / "notes.txt"
    state.write_text("my notes\n")
    for extra in ([], ["--repair"]):
        r = run_cli("online", "--state", str(state), *extra)
        one_line_error(r, "is a file, not a folder")
    assert state.read_text() == "my notes\n"


def test_an_unexpected_error_is_logged_once_with_the_request_id(tmp_path, monkeypatch, caplog):
    """A bug in a route: the client gets a 500 naming the request id, the log one traceback under that id
    (uvicorn would log the same exception a second time, without the id, if it were re-raised to it)."""
    import httpx

    from test_serve import chatty_model
    from test_serve_http_attacks import start

    from llm_foundry.serve import builders

    def broken(*args, **kwargs):
        raise RuntimeError("internal detail /secret/path")

    model_dir = chatty_model(tmp_path / "m", dim=32, n_layers=1, max_seq_len=64)
    monkeypatch.setattr(builders, "model_card", broken)
    with caplog.at_level("INFO"):
        with start(model_dir) as server:  # leaving the block stops the server: every log line is written
            r = httpx.get(server.url + "/v1/models", timeout=30)
    assert r.status_code == 500 and "/secret" not in r.text
    rid = r.headers["x-request-id"]
    assert rid in r.json()["error"]["message"]
    tracebacks = [rec for rec in caplog.records if rec.exc_info]
    assert len(tracebacks) == 1 and rid in tracebacks[0].getMessage(), [t.getMessage() for t in tracebacks]
