import json
import random
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from llm_foundry.data import Document, TokenDataset, WindowLoader, prepare_dataset, read_documents
from llm_foundry.data.shards import split_documents
from llm_foundry.utils.errors import FoundryError


def test_single_file_split_is_contiguous(tmp_path):
    text = "".join(chr(ord("a") + i % 26) for i in range(1000))
    f = tmp_path / "a.txt"
    f.write_text(text)
    train, val = split_documents(read_documents([f]), 0.1)
    assert train[0].text + val[0].text == text and len(val[0].text) == 100


def test_folder_and_jsonl_are_documents(tmp_path):
    (tmp_path / "sub").mkdir()
    (tmp_path / "a.txt").write_text("first file\n")
    (tmp_path / "sub" / "b.md").write_text("第二个文件\n")
    (tmp_path / "c.jsonl").write_text(json.dumps({"text": "one"}) + "\n\n" + json.dumps({"text": "two 二"}) + "\n")
    (tmp_path / ".hidden").write_text("skip me")
    (tmp_path / "img.bin").write_bytes(b"\x89PNG\x00\x00\x00")
    (tmp_path / "latin1.txt").write_bytes("caf\xe9".encode("latin-1"))
    docs = read_documents([tmp_path])
    assert [d.text for d in docs] == ["first file\n", "one", "two 二", "第二个文件\n"]


def test_split_does_not_overshoot_with_uneven_documents():
    docs = [Document("x" * n, f"d{i}") for i, n in enumerate([5000, 300, 200, 4000, 100, 250, 3000, 150])]
    for seed in range(10):
        train, val = split_documents(docs, 0.1, seed=seed)
        share = sum(len(d.text) for d in val) / 13000
        assert val and train and share <= 0.15, (seed, share)


def test_document_level_split_keeps_documents_whole():
    docs = [Document(f"doc{i} " * 50, f"d{i}") for i in range(20)]
    train, val = split_documents(docs, 0.2, seed=1)
    assert len(train) + len(val) == 20 and 3 <= len(val) <= 5
    assert {d.source for d in train}.isdisjoint({d.source for d in val})
    assert split_documents(docs, 0.2, seed=1)[1] == val  # seeded


@pytest.mark.parametrize("content, message", [
    (None, "not found"),
    (b"", "empty"),
    (b"  \n\t ", "empty"),
    (b"\x00\x01\x02binary", "binary"),
    ("caf\xe9".encode("latin-1"), "not UTF-8"),
])
def test_bad_input_files(tmp_path, content, message):
    f = tmp_path / "in.txt"
    if content is not None:
        f.write_bytes(content)
    with pytest.raises(FoundryError, match=message):
        read_documents([f])


def test_empty_folder_and_bad_jsonl(tmp_path):
    with pytest.raises(FoundryError, match="no readable text"):
        read_documents([tmp_path])
    j = tmp_path / "x.jsonl"
    j.write_text('{"text": "ok"}\n{"text": \n')
    with pytest.raises(FoundryError, match=r"x.jsonl:2: not valid JSON"):
        read_documents([j])
    j.write_text('{"body": "no text field"}\n')
    with pytest.raises(FoundryError, match="text"):
        read_documents([j])


@pytest.mark.parametrize("kind", ["char", "byte", "bpe"])
def test_prepare_writes_shards_and_meta(tmp_path, kind):
    from llm_foundry.data import builtin_corpus

    docs = builtin_corpus()[:30]
    meta = prepare_dataset(docs, kind, tmp_path, vocab_size=600, show_progress=False)
    ds = TokenDataset(tmp_path)
    assert meta["tokenizer"] == kind and ds.tokenizer.vocab_size == meta["vocab_size"]
    train = np.concatenate(ds.split("train"))
    assert len(train) == meta["splits"]["train"]["tokens"] > 0
    assert meta["splits"]["val"]["documents"] >= 1
    # Tokens decode back to the training documents (EOS-separated where the tokenizer has one).
    text = ds.tokenizer.decode(train.tolist())
    assert docs[0].text[:200] in text or docs[1].text[:200] in text


def test_loader_is_deterministic_and_resumable(shakespeare_data):
    ds = TokenDataset(shakespeare_data)
    a = WindowLoader(ds, "train", batch_size=4, seq_len=32, seed=7)
    b = WindowLoader(ds, "train", batch_size=4, seq_len=32, seed=7)
    first = [a.batch(i) for i in range(5)]
    # A fresh loader asked for batch 3 directly (a resumed run) sees the same batch.
    x3, y3 = b.batch(3)
    assert torch.equal(x3, first[3][0]) and torch.equal(y3, first[3][1])
    assert torch.equal(first[0][0][:, 1:], first[0][1][:, :-1])  # y is x shifted by one
    c = WindowLoader(ds, "train", batch_size=4, seq_len=32, seed=8)
    assert not torch.equal(c.batch(0)[0], first[0][0])
    with pytest.raises(FoundryError, match="fewer than one window"):
        WindowLoader(ds, "val", batch_size=4, seq_len=10**7)


def test_truncated_shard_detected(shakespeare_data, tmp_path):
    import shutil

    copy = tmp_path / "d"
    shutil.copytree(shakespeare_data, copy)
    shard = copy / "train_000.bin"
    shard.write_bytes(shard.read_bytes()[:-3])
    with pytest.raises(FoundryError, match="truncated|token count"):
        TokenDataset(copy).split("train")


# ----------------------------------------------------------------------------- streaming prepare (issue 21)
# `foundry prepare` reads its input as a stream: its memory must not grow with the corpus.

def _bench(name: str):
    """A script of bench/ as a module: the RSS test runs the benchmark itself, at a small size."""
    import importlib.util

    from helpers import ROOT

    spec = importlib.util.spec_from_file_location(name, ROOT / "bench" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.skipif(not Path("/proc/self/status").is_file(), reason="reads the peak RSS from /proc")
@pytest.mark.parametrize("layout, kind", [("folder", "byte"), ("single", "byte"),
                                          pytest.param("folder", "bpe", marks=pytest.mark.slow)])
def test_prepare_peak_memory_is_bounded(tmp_path, layout, kind):
    # ~40 MB: the bound is 200 MiB + 3x the largest document. One 40 MB file is one document,
    # so the bound would allow 320 MiB; it is cut into pieces, so it must stay under 200 MiB too.
    pm = _bench("prepare_memory")
    corpus = pm.write_corpus(tmp_path, 40 << 20, layout)
    result = pm.measure(corpus, tmp_path / "data", kind)
    assert result["exit_code"] == 0
    assert result["peak_rss_mib"] <= min(result["bound_mib"], pm.BASE_MIB), result
    if kind == "byte":
        assert sum(result["tokens"].values()) >= corpus["bytes"]  # every byte is a token (plus EOS)


def test_preparing_does_not_import_torch():
    # PyTorch alone is ~200 MB of RSS: the data package loads it only for the training loader.
    code = "import sys, llm_foundry.data, llm_foundry.cli.prepare; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"


def _mixed_folder(root: Path) -> Path:
    """A folder of .txt and .jsonl documents, one of them longer than a piece."""
    from llm_foundry.data.sources import PIECE_CHARS

    rng = random.Random(0)
    words = "the of and model token 模型 语言 数据 streaming 流式 shard".split()
    folder = root / "corpus"
    (folder / "sub").mkdir(parents=True)
    long_lines = [" ".join(rng.choices(words, k=rng.randint(3, 12))) for _ in range(PIECE_CHARS // 15)]
    (folder / "long.txt").write_text("\n".join(long_lines) + "\n")  # > PIECE_CHARS characters
    for i in range(12):
        (folder / "sub" / f"d{i}.txt").write_text(" ".join(rng.choices(words, k=rng.randint(20, 400))))
    with open(folder / "lines.jsonl", "w") as f:
        for _ in range(300):
            f.write(json.dumps({"text": " ".join(rng.choices(words, k=rng.randint(1, 200)))}, ensure_ascii=False) + "\n")
    return folder


def _split_text(ds: TokenDataset, split: str) -> list[str]:
    ids = np.concatenate(ds.split(split)).tolist()
    eos = ds.tokenizer.eos_id
    docs, start = [], 0
    for i, t in enumerate(ids + [eos]):
        if t == eos:
            docs.append(ds.tokenizer.decode(ids[start:i]))
            start = i + 1
    return docs[:-1] if ids and ids[-1] == eos else docs


@pytest.mark.parametrize("kind", ["byte", "bpe"])
def test_streamed_prepare_round_trips_every_document(tmp_path, kind):
    from llm_foundry.data import Corpus

    folder = _mixed_folder(tmp_path)
    meta = prepare_dataset(Corpus.from_inputs([folder]), kind, tmp_path / "d", vocab_size=400, show_progress=False)
    ds = TokenDataset(tmp_path / "d")
    train, val = _split_text(ds, "train"), _split_text(ds, "val")
    # Every document comes back whole, in one split or the other, its end marked by one EOS.
    assert sorted(train + val) == sorted(d.text for d in read_documents([folder]))
    assert (len(train), len(val)) == (meta["splits"]["train"]["documents"], meta["splits"]["val"]["documents"])
    for name, docs in (("train", train), ("val", val)):
        info = meta["splits"][name]
        assert info["tokens"] == sum(len(s) for s in ds.split(name))
        assert info["bytes"] == sum(len(d.encode()) for d in docs)
    total = meta["splits"]["train"]["bytes"] + meta["splits"]["val"]["bytes"]
    assert 0.05 <= meta["splits"]["val"]["bytes"] / total <= 0.15


def test_streamed_single_document_is_cut_contiguously(tmp_path):
    from llm_foundry.data import Corpus
    from llm_foundry.data.sources import PIECE_CHARS

    text = "".join(f"第{i}行 line {i}\n" for i in range(PIECE_CHARS // 6))  # several pieces long
    f = tmp_path / "one.txt"
    f.write_text(text)
    meta = prepare_dataset(Corpus.from_inputs([f]), "char", tmp_path / "d", val_fraction=0.25, show_progress=False)
    ds = TokenDataset(tmp_path / "d")
    train = ds.tokenizer.decode(np.concatenate(ds.split("train")).tolist())
    val = ds.tokenizer.decode(np.concatenate(ds.split("val")).tolist())
    assert train + val == text and len(train) == int(len(text) * 0.75)
    assert meta["splits"]["train"]["tokens"] + meta["splits"]["val"]["tokens"] == len(text)


def test_streamed_prepare_is_deterministic(tmp_path):
    from llm_foundry.data import Corpus

    folder = _mixed_folder(tmp_path)

    def run(seed, name):
        prepare_dataset(Corpus.from_inputs([folder]), "bpe", tmp_path / name, vocab_size=300, seed=seed,
                        tokenizer_sample_bytes=20_000, show_progress=False)
        return {p.name: p.read_bytes() for p in sorted((tmp_path / name).iterdir())}

    first = run(3, "a")
    assert run(3, "b") == first  # same seed: the same split, the same BPE sample, the same bytes
    other = run(4, "c")
    assert other["val_000.bin"] != first["val_000.bin"]


def test_split_keeps_its_semantics_at_scale():
    # 200,000 documents of uneven length: the held-out share stays near the target, never past 1.5x.
    rng = np.random.default_rng(0)
    docs = [Document("x" * int(n), str(i)) for i, n in enumerate(rng.integers(1, 200, 200_000))]
    total = sum(len(d.text) for d in docs)
    for vf in (0.01, 0.1, 0.5):
        train, val = split_documents(docs, vf, seed=5)
        assert len(train) + len(val) == len(docs) and train
        assert vf * 0.99 <= sum(len(d.text) for d in val) / total <= vf * 1.01


def test_streamed_reader_errors_and_offsets(tmp_path):
    from llm_foundry.data import Corpus
    from llm_foundry.data.sources import iter_text

    text = "汉字 and text\n" * 1000
    f = tmp_path / "a.txt"
    f.write_text(text)
    # Multi-byte characters cut by block boundaries decode whole.
    assert "".join(iter_text(f, block_bytes=7)) == text
    # A bad byte far past the first block is reported at its offset, with small blocks too.
    offset = len(text.encode()) - 5
    f.write_bytes(text.encode()[:offset] + b"\xff" + text.encode()[offset:])
    for block in (7, 1 << 20):
        with pytest.raises(FoundryError, match=f"not UTF-8 text \\(bad byte at offset {offset}\\)"):
            "".join(iter_text(f, block_bytes=block))
    # Inside a folder, such a file is skipped whole (none of it prepared), with a warning.
    (tmp_path / "good.txt").write_text("good text\n")
    (tmp_path / "blank.jsonl").write_text("\n\n  \n")
    meta = prepare_dataset(Corpus.from_inputs([tmp_path]), "byte", tmp_path.parent / "out", val_fraction=0,
                           show_progress=False)
    assert meta["sources"] == [str(tmp_path / "good.txt")]
    assert meta["splits"]["train"]["bytes"] == len("good text\n")


@pytest.mark.parametrize("content, message", [
    (b"", "empty"),
    (b"  \n\t " * 100_000, "empty"),
    (b"\x00\x01\x02binary" + b"a" * 3_000_000, "binary"),
    ("caf\xe9".encode("latin-1"), "not UTF-8"),
    (b'{"text": "ok"}\n{"text": \n', "x.jsonl:2: not valid JSON"),
])
def test_prepare_command_bad_inputs(tmp_path, content, message):
    from helpers import one_line_error, run_cli

    f = tmp_path / ("x.jsonl" if b"{" in content else "x.txt")
    f.write_bytes(content)
    one_line_error(run_cli("prepare", f, "--out", tmp_path / "d"), message)
    assert not (tmp_path / "d" / "meta.json").exists()


def test_prepare_command_sample_option(tmp_path):
    from helpers import one_line_error, run_cli

    f = tmp_path / "a.txt"
    f.write_text("some text to learn merges from " * 200)
    one_line_error(run_cli("prepare", f, "--tokenizer", "bpe", "--tokenizer-sample-bytes", "-1", "--out", tmp_path / "d"),
                   "--tokenizer-sample-bytes")
    proc = run_cli("prepare", f, "--tokenizer", "bpe", "--vocab-size", "300", "--tokenizer-sample-bytes", "1000",
                   "--out", tmp_path / "d")
    assert proc.returncode == 0, proc.stderr
    assert TokenDataset(tmp_path / "d").tokenizer.vocab_size > 267  # merges were learned from the sample


def test_split_walk_matches_a_greedy_walk_in_priority_order():
    # The bounded-memory plan gives what sorting all documents by priority and walking them would.
    from llm_foundry.data.split import plan_split, priorities

    rng = np.random.default_rng(1)
    for n, vf in [(2, 0.3), (8, 0.1), (300, 0.1), (70_000, 0.05), (70_000, 0.5)]:
        lengths = (rng.pareto(1.0, n) * 50 + 1).astype(np.int64)

        def blocks():
            for start in range(0, n, 30_000):
                yield start, lengths[start:start + 30_000]

        plan = plan_split(blocks, n, int(lengths.sum()), vf, seed=n)
        got = {i for i, v in enumerate(plan.decisions(blocks)) if v}
        target, want, held = vf * lengths.sum(), set(), 0
        for i in np.argsort(priorities(n, 0, n)):
            if held >= target or len(want) == n - 1:
                break
            if held + lengths[i] <= 1.5 * target:
                want.add(int(i))
                held += lengths[i]
        assert got == (want or got), (n, vf)  # (when nothing fits, the smallest: ties may differ)
        assert got and len(got) < n


def test_length_log_forgets_a_skipped_file_across_its_disk_spill():
    from llm_foundry.data.split import LengthLog

    log = LengthLog()
    for i in range(100_000):  # past the in-memory buffer: part of it is on disk
        log.append(i)
    log.truncate(70_000)  # a folder's file that turned out bad
    for i in range(5):
        log.append(-i)
    got = np.concatenate([b for _, b in log.blocks()])
    assert got.tolist() == list(range(70_000)) + [0, -1, -2, -3, -4]
    log.close()
