"""Tests of your dataset.py: reading and cleaning, the split, the shards and meta.json, each
compared with what our library (src/llm_foundry/data/) does on the same folder.

Run them with:  foundry lab test 3
"""

import json
import random
from pathlib import Path

import numpy as np
import pytest

from dataset import prepare, read_file, read_inputs, split_documents, write_split
from llm_foundry.data import Corpus, TokenDataset, prepare_dataset, read_documents
from llm_foundry.data import split_documents as library_split
from llm_foundry.data.sources import Document
from llm_foundry.lab.testing import check_equal, learner_line
from llm_foundry.tokenizers import ByteTokenizer
from llm_foundry.utils.errors import FoundryError

WORDS = ("the model reads tokens and learns which one comes next so a corpus of text becomes a long "
         "list of ids split into windows 数据 分词 训练 验证 文档").split()


def words(rng: random.Random, n: int) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(n))


def make_corpus(root: Path, seed: int = 0, files: int = 24) -> Path:
    """A folder of generated documents: plain files of very different lengths, a nested folder,
    a .jsonl file, a file with a byte-order mark, and a hidden file that must be left out."""
    rng = random.Random(seed)
    folder = root / "corpus"
    (folder / "nested").mkdir(parents=True)
    for i in range(files):
        sub = folder / "nested" if i % 5 == 0 else folder
        (sub / f"doc{i:02d}.txt").write_text(words(rng, rng.choice([5, 20, 80, 300])) + "\n", encoding="utf-8")
    records = [{"text": words(rng, 30)}, {"text": "   "}, {"content": words(rng, 12)}, {"text": words(rng, 50)}]
    (folder / "records.jsonl").write_text("\n".join(json.dumps(r, ensure_ascii=False) for r in records) + "\n\n",
                                          encoding="utf-8")
    (folder / "bom.txt").write_bytes("\ufeff".encode("utf-8") + "a file saved by Notepad 记事本\n".encode("utf-8"))
    (folder / ".hidden.txt").write_text("never read me", encoding="utf-8")
    return folder


def library_prepare(inputs, out: Path, val_fraction: float, seed: int) -> dict:
    return prepare_dataset(Corpus.from_inputs(inputs), ByteTokenizer(), out, val_fraction=val_fraction, seed=seed,
                           show_progress=False)


def expect_error(call: str, fn, *args, says: str):
    """``fn(*args)`` (one of your functions) must raise a FoundryError whose message contains ``says``."""
    call = f"{call}{learner_line(fn)}"
    try:
        got = fn(*args)
    except NotImplementedError:
        raise
    except FoundryError as e:
        assert says in str(e), f"{call}: the error says {str(e)!r}; expected it to say {says!r}"
        return str(e)
    except Exception as e:
        raise AssertionError(f"{call}: raised {type(e).__name__}: {e}; expected a one-line FoundryError saying "
                             f"{says!r} (a user sees that line, not a traceback)") from None
    raise AssertionError(f"{call}: returned {str(got)[:80]!r}; expected a FoundryError saying {says!r}")


def check_documents(call: str, got, want, folder: Path, where, hint: str = "") -> None:
    """``got`` are ``want``'s documents: their sources (named relative to ``folder``, so that a failure
    stays short), then each text, a difference shown where it starts."""
    def name(source) -> str:
        return Path(source).relative_to(folder).as_posix() if Path(source).is_relative_to(folder) else str(source)

    assert isinstance(got, list) and all(isinstance(d, Document) for d in got), (
        f"{call}{learner_line(where)}: expected a list of Document(text, source), got {str(got)[:80]!r}")
    assert all(isinstance(d.source, str) for d in got), f"{call}: a document's source is str(path), not a Path"
    check_equal(f"the sources of {call}, relative to the folder", [name(d.source) for d in got],
                [name(d.source) for d in want], where=where, hint=hint)
    for mine, ours in zip(got, want):
        if mine.text != ours.text:
            at = next((i for i, (a, b) in enumerate(zip(mine.text, ours.text)) if a != b),
                      min(len(mine.text), len(ours.text)))
            raise AssertionError(f"the text of {name(ours.source)} from {call}{learner_line(where)}: "
                                 f"{len(mine.text)} characters, expected {len(ours.text)}; they differ from character "
                                 f"{at}: expected {ours.text[max(at - 10, 0):at + 30]!r}, got "
                                 f"{mine.text[max(at - 10, 0):at + 30]!r}")


# ----------------------------------------------------------------------------- reading and cleaning


def test_read_file_plain_jsonl_and_bom(tmp_path):
    folder = make_corpus(tmp_path)
    text = (folder / "doc01.txt").read_text(encoding="utf-8")
    check_equal("read_file(doc01.txt)", read_file(folder / "doc01.txt"), [text], where=read_file,
                hint="a plain file is ONE document: its whole text, unchanged")
    check_equal("read_file(bom.txt)", read_file(folder / "bom.txt"), ["a file saved by Notepad 记事本\n"],
                where=read_file, hint="drop a UTF-8 byte-order mark (BOM, '\\ufeff') at the start: it is not text")
    got = read_file(folder / "records.jsonl")
    lines = (folder / "records.jsonl").read_text(encoding="utf-8").splitlines()
    want = [json.loads(lines[0])["text"], json.loads(lines[2])["content"], json.loads(lines[3])["text"]]
    check_equal("read_file(records.jsonl)", got, want, where=read_file,
                hint='one document per record: its "text" (or "content") field; blank lines and whitespace-only '
                     'texts are left out')


def test_read_file_bad_input_is_a_clear_error(tmp_path):
    (tmp_path / "empty.txt").write_text("  \n\t\n", encoding="utf-8")
    expect_error("read_file(empty.txt)", read_file, tmp_path / "empty.txt", says="input is empty")
    (tmp_path / "latin1.txt").write_bytes("café au lait".encode("latin-1"))
    msg = expect_error("read_file(latin1.txt)", read_file, tmp_path / "latin1.txt", says="not UTF-8")
    assert "offset 3" in msg and "latin1.txt" in msg, (
        f"read_file(latin1.txt): the error {msg!r} should name the file and the bad byte's offset (3): "
        f"UnicodeDecodeError.start")
    (tmp_path / "image.png").write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR")
    expect_error("read_file(image.png)", read_file, tmp_path / "image.png", says="binary")
    expect_error("read_file(missing.txt)", read_file, tmp_path / "missing.txt", says="not found")
    (tmp_path / "bad.jsonl").write_text('{"text": "ok"}\n\n{"text": oops}\n', encoding="utf-8")
    expect_error("read_file(bad.jsonl)", read_file, tmp_path / "bad.jsonl", says="bad.jsonl:3: not valid JSON")


def test_read_inputs_walks_a_folder_in_order(tmp_path, capsys):
    folder = make_corpus(tmp_path)
    (folder / "broken.txt").write_bytes(b"\xff\xfe broken")
    try:
        docs = read_inputs([folder])
    except FoundryError as e:
        raise AssertionError(f"read_inputs([folder]) (your dataset.py) raised {e}: skip a bad file inside a folder "
                             f"(print a warning) and read the others; only a file named directly must be good") from None
    want = read_documents([folder])
    check_documents("read_inputs([folder])", docs, want, folder, where=read_inputs,
                    hint="files in sorted(folder.rglob('*')) order, hidden ones left out, a bad file skipped")
    err = capsys.readouterr().err
    assert "warning: skipped:" in err and "broken.txt" in err, (
        f"read_inputs([folder]) (your dataset.py) skipped broken.txt silently: print 'warning: skipped: <error>' "
        f"to stderr, so the user knows; stderr was {err!r}")
    expect_error("read_inputs([folder of bad files])", read_inputs, [_bad_folder(tmp_path)],
                 says="folder has no readable text files")


def _bad_folder(root: Path) -> Path:
    bad = root / "bad"
    bad.mkdir()
    (bad / "empty.txt").write_text("", encoding="utf-8")
    return bad


# ----------------------------------------------------------------------------- the split


def generated_documents(seed: int, n: int) -> list[Document]:
    rng = random.Random(seed)
    # Lengths spread over two orders of magnitude: some documents are bigger than the target.
    return [Document(words(rng, rng.choice([3, 10, 40, 150, 600])), f"doc{i}") for i in range(n)]


def check_split(call: str, docs, got, want, val_fraction):
    train, val = got
    key = lambda ds: [(d.source, d.text) for d in ds]  # noqa: E731
    everything = sorted(key(train) + key(val))
    assert everything == sorted(key(docs)), (
        f"{call}: train + val is not the documents you were given, each once: no document may be in both "
        f"splits, none may be lost")
    total = sum(len(d.text) for d in docs)
    held = sum(len(d.text) for d in val)
    if len(docs) > 1 and held > 1.5 * val_fraction * total and len(val) > 1:
        raise AssertionError(f"{call}: {held} of {total} characters held out, more than 1.5x the target "
                             f"{val_fraction} x {total}: pass over a document that would go past the cap")
    check_equal(call, ([d.source for d in train], [d.source for d in val]),
                ([d.source for d in want[0]], [d.source for d in want[1]]), where=split_documents,
                hint="visit the documents in priority order (sorted by priority(seed, i)) and hold them out while "
                     "the held-out characters are below val_fraction of all characters")


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_split_is_our_librarys_split(seed):
    docs = generated_documents(seed, 40)
    for val_fraction in (0.1, 0.3):
        got = split_documents(docs, val_fraction, seed)
        check_split(f"split_documents(40 documents, {val_fraction}, seed={seed})", docs, got,
                    library_split(docs, val_fraction, seed), val_fraction)
    again = split_documents(docs, 0.1, seed)
    check_equal(f"split_documents(..., seed={seed}) twice", [d.source for d in again[1]],
                [d.source for d in split_documents(docs, 0.1, seed)[1]], where=split_documents,
                hint="the split must depend on the seed only, never on a global random state")


def test_split_of_one_document_is_a_cut():
    doc = Document("0123456789" * 10, "one.txt")
    got = split_documents([doc], 0.25)
    check_equal("split_documents([one document of 100 characters], 0.25)",
                ([d.text for d in got[0]], [d.text for d in got[1]]), ([doc.text[:75]], [doc.text[75:]]),
                where=split_documents, hint="a single document is cut: its first int(100 * (1 - 0.25)) characters "
                                            "train, the rest validates")
    expect_error("split_documents(docs, 1.0)", split_documents, [doc], 1.0, says="val-fraction")


# ----------------------------------------------------------------------------- shards and meta.json


def test_write_split_makes_one_shard(tmp_path):
    docs = [Document("hi", "a"), Document("数据", "b")]
    tok = ByteTokenizer()
    info = write_split(tmp_path, "train", docs, tok)
    want_ids = [104, 105, tok.eos_id] + list("数据".encode("utf-8")) + [tok.eos_id]
    check_equal('write_split(folder, "train", ["hi", "数据"], ByteTokenizer())', info,
                {"shards": ["train_000.bin"], "tokens": len(want_ids), "documents": 2, "bytes": 8, "unknown_tokens": 0},
                where=write_split, hint="each document's ids, then the EOS id; bytes counts the UTF-8 bytes")
    shard = tmp_path / "train_000.bin"
    assert shard.is_file(), "write_split(...) wrote no train_000.bin"
    check_equal("the ids in train_000.bin", np.fromfile(shard, dtype=np.uint16).tolist(), want_ids, where=write_split,
                hint="each document's ids followed by the EOS id, as uint16, in one flat array")


def test_prepare_writes_what_our_library_writes(tmp_path):
    folder = make_corpus(tmp_path)
    meta = prepare([folder], tmp_path / "mine", ByteTokenizer(), val_fraction=0.2, seed=3)
    want = library_prepare([folder], tmp_path / "ours", val_fraction=0.2, seed=3)
    on_disk = json.loads((tmp_path / "mine" / "meta.json").read_text(encoding="utf-8"))
    for key in want:
        check_equal(f"meta.json[{key!r}]", on_disk.get(key), want[key], where=prepare)
    check_equal("prepare(...) return value", meta, on_disk, where=prepare, hint="return the meta you wrote")
    for name in ("train", "val"):
        shard = f"{name}_000.bin"
        mine, ours = (tmp_path / "mine" / shard).read_bytes(), (tmp_path / "ours" / shard).read_bytes()
        assert mine == ours, (f"{shard}: your {len(mine) // 2} ids differ from our library's {len(ours) // 2} "
                              f"(first difference at id {_first_difference(mine, ours)}): same documents, same "
                              f"order, each followed by the EOS id")
    data = TokenDataset(tmp_path / "mine")  # the folder opens as every part of llm-foundry reads it
    assert sum(len(a) for a in data.split("val")) == want["splits"]["val"]["tokens"]


def _first_difference(a: bytes, b: bytes) -> int:
    x, y = np.frombuffer(a, np.uint16), np.frombuffer(b, np.uint16)
    n = min(len(x), len(y))
    diff = np.flatnonzero(x[:n] != y[:n])
    return int(diff[0]) if len(diff) else n


def test_prepare_refuses_bad_input(tmp_path):
    (tmp_path / "latin1.txt").write_bytes("naïve".encode("latin-1"))
    expect_error("prepare([latin1.txt], out, ...)", prepare, [tmp_path / "latin1.txt"], tmp_path / "out",
                 ByteTokenizer(), says="not UTF-8")
    assert not (tmp_path / "out" / "meta.json").exists(), "prepare wrote meta.json for input it refused"
    expect_error("prepare([folder with only an empty file], ...)", prepare, [_bad_folder(tmp_path)],
                 tmp_path / "out", ByteTokenizer(), says="no readable text files")
