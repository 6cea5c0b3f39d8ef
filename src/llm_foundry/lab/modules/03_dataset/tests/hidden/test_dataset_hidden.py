"""Hidden tests of module 3: other inputs, tokenizers and split settings than the visible tests."""

import json
import random
import sys
from pathlib import Path

import numpy as np

from dataset import prepare, read_file, split_documents, write_split
from llm_foundry.data import split_documents as library_split
from llm_foundry.data.sources import Document
from llm_foundry.lab.testing import check_equal
from llm_foundry.tokenizers import ByteTokenizer, CharTokenizer

# The visible tests' helpers, next to this file in the run folder's tests/, whatever pytest's import mode.
sys.path.insert(0, str(Path(__file__).parent))
from test_dataset import check_split, generated_documents, library_prepare, make_corpus, words  # noqa: E402


def test_prepare_matches_for_other_inputs(tmp_path):
    rng = random.Random(7)
    folder = make_corpus(tmp_path, seed=11, files=9)
    single = tmp_path / "one_book.txt"
    single.write_text("\n".join(words(rng, 40) for _ in range(30)), encoding="utf-8")
    jsonl = tmp_path / "chat.jsonl"
    jsonl.write_text("\n".join(json.dumps({"text": words(rng, 25)}) for _ in range(12)), encoding="utf-8")
    for k, (inputs, val_fraction, seed) in enumerate([([single], 0.1, 0), ([jsonl], 0.25, 5),
                                                      ([folder, jsonl], 0.15, 123), ([folder], 0.0, 1)]):
        mine = prepare(inputs, tmp_path / f"mine{k}", ByteTokenizer(), val_fraction=val_fraction, seed=seed)
        ours = library_prepare(inputs, tmp_path / f"ours{k}", val_fraction, seed)
        check_equal(f"prepare({[p.name for p in inputs]}, val_fraction={val_fraction}, seed={seed})", mine, ours,
                    where=prepare, hint="a split with no documents gets no entry; a single document is cut")
        for name in ours["splits"]:
            shard = f"{name}_000.bin"
            assert (tmp_path / f"mine{k}" / shard).read_bytes() == (tmp_path / f"ours{k}" / shard).read_bytes(), (
                f"{shard} of prepare({[p.name for p in inputs]}) differs from our library's")


def test_prepare_with_a_char_tokenizer(tmp_path):
    folder = make_corpus(tmp_path, seed=3, files=6)
    tok = CharTokenizer()
    tok.add_chars("".join(words(random.Random(0), 200)))  # some characters of the corpus are not in it
    mine = prepare([folder], tmp_path / "mine", tok, val_fraction=0.3, seed=9)
    from llm_foundry.data import Corpus, prepare_dataset

    ours = prepare_dataset(Corpus.from_inputs([folder]), tok, tmp_path / "ours", val_fraction=0.3, seed=9,
                           show_progress=False)
    check_equal("prepare([folder], out, CharTokenizer, 0.3, seed=9)", mine, ours, where=prepare,
                hint="count <|unk|> ids in unknown_tokens; a char tokenizer has no EOS, so nothing separates documents")


def test_ids_need_uint32_past_65535():
    class BigVocab(ByteTokenizer):
        @property
        def vocab_size(self) -> int:
            return 70_000

    import tempfile

    with tempfile.TemporaryDirectory() as d:
        info = write_split(Path(d), "val", [Document("abc", "x")], BigVocab())
        data = (Path(d) / "val_000.bin").read_bytes()
    check_equal("bytes in val_000.bin for 4 ids of a 70,000-id vocabulary", len(data), 16, where=write_split,
                hint="uint16 holds ids up to 65535: a larger vocabulary needs uint32 (4 bytes an id)")
    check_equal("write_split(...)['tokens']", info["tokens"], 4, where=write_split)
    check_equal("the ids", np.frombuffer(data, np.uint32).tolist(), [97, 98, 99, 258], where=write_split)


def test_split_more_seeds_and_sizes():
    for seed in (7, 42, 2**40 + 3):
        for n in (2, 5, 200):
            docs = generated_documents(seed, n)
            for val_fraction in (0.05, 0.5):
                check_split(f"split_documents({n} documents, {val_fraction}, seed={seed})", docs,
                            split_documents(docs, val_fraction, seed), library_split(docs, val_fraction, seed),
                            val_fraction)
    docs = [Document("x" * 1000, "big"), Document("y" * 10, "small"), Document("z" * 20, "mid")]
    check_split("split_documents([1000, 10, 20 characters], 0.001)", docs, split_documents(docs, 0.001, 0),
                library_split(docs, 0.001, 0), 0.001)


def test_read_file_content_field_and_strings(tmp_path):
    path = tmp_path / "mixed.jsonl"
    path.write_text('"a bare string"\n{"content": "from content"}\n{"text": "", "content": "x"}\n', encoding="utf-8")
    got = read_file(path)
    check_equal("read_file(mixed.jsonl)", got, ["a bare string", "from content"], where=read_file,
                hint='a record may be a JSON string; a "text" field that is empty is left out, even with a "content"')
