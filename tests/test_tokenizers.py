import pytest

from llm_foundry.tokenizers import BPETokenizer, ByteTokenizer, CharTokenizer, build_tokenizer, load_tokenizer
from llm_foundry.tokenizers.special import CHAT_SPECIAL_TOKENS
from llm_foundry.utils.errors import FoundryError

SAMPLES = [
    "Hello, world!  Two spaces, a tab\tand a newline\n",
    "床前明月光，疑是地上霜。举头望明月，低头思故乡。",
    "emoji: 🚀🔥👨‍👩‍👧 and flags 🇨🇳",
    "mixed 中文 English 123 ½ — «quotes» \r\n end",
    "",
]


@pytest.fixture(scope="module")
def bpe(tmp_path_factory):
    from llm_foundry.data import builtin_corpus

    corpus = [d.text for d in builtin_corpus()[:20]] + ["春眠不觉晓，处处闻啼鸟。" * 20]
    return BPETokenizer.train(corpus, vocab_size=400)


@pytest.mark.parametrize("text", SAMPLES)
def test_round_trip_exact(text, bpe):
    byte = ByteTokenizer()
    char = CharTokenizer()
    char.add_chars(text)
    for tok in (byte, char, bpe):
        assert tok.decode(tok.encode(text)) == text, tok.kind


def test_save_load_keeps_ids(tmp_path, bpe):
    char = CharTokenizer()
    char.add_chars("abc中")
    for tok in (ByteTokenizer(), char, bpe):
        path = tmp_path / f"{tok.kind}.json"
        tok.save(path)
        back = load_tokenizer(path)
        assert type(back) is type(tok)
        assert back.vocab_size == tok.vocab_size
        assert back.special_tokens == tok.special_tokens
        text = "abc中 🚀"
        assert back.encode(text) == tok.encode(text)


def test_char_tokenizer_grows_with_stable_ids():
    tok = CharTokenizer()
    assert tok.vocab_size == 2 and tok.pad_id == 0 and tok.unk_id == 1
    first = tok.encode("ab", grow=True)
    assert first == [2, 3]
    assert tok.encode("xa") == [tok.unk_id, 2]  # unseen -> UNK unless grow
    new = tok.add_chars("好ab🚀")
    assert new == ["好", "🚀"]
    assert tok.encode("ab") == first and tok.vocab_size == 6


def test_special_tokens_reserved_for_chat(bpe):
    for tok in (ByteTokenizer(), bpe):
        for name in CHAT_SPECIAL_TOKENS:
            assert tok.token_id(name) is not None
        ids = tok.encode("hi", bos=True, eos=True)
        assert ids[0] == tok.bos_id and ids[-1] == tok.eos_id
        assert tok.decode(ids) == "hi"
        assert "<|bos|>" in tok.decode(ids, skip_special=False)
    # Special strings typed by a user are plain text, never special ids.
    for tok in (ByteTokenizer(), bpe):
        ids = tok.encode("hi <|eos|>")
        assert tok.eos_id not in ids and tok.decode(ids) == "hi <|eos|>"


def test_bpe_vocab_size_and_batch(bpe):
    assert bpe.vocab_size == 400
    texts = ["the fox", "春眠", ""]
    assert bpe.encode_batch(texts) == [bpe.encode(t) for t in texts]
    assert len(bpe.encode("the quick brown fox")) < len("the quick brown fox")  # merges happened
    with pytest.raises(FoundryError, match="at least"):
        build_tokenizer("bpe", ["abc"], vocab_size=100)


def test_corrupt_tokenizer_files(tmp_path):
    p = tmp_path / "tokenizer.json"
    p.write_bytes(b"\xff\xfe garbage")
    with pytest.raises(FoundryError, match="corrupt"):
        load_tokenizer(p)
    p.write_text('{"something": 1}')
    with pytest.raises(FoundryError, match="not a tokenizer"):
        load_tokenizer(p)
    p.write_text('{"llm_foundry_tokenizer": "char", "tokens": ["a"], "special_tokens": []}')
    with pytest.raises(FoundryError):
        load_tokenizer(p)
    with pytest.raises(FoundryError, match="not found"):
        load_tokenizer(tmp_path / "missing.json")


def test_bpe_trains_from_a_one_pass_stream(tmp_path):
    # `prepare` feeds BPE a generator over pieces of files it reads from disk: one pass, never a list.
    from llm_foundry.data.sources import iter_text, split_pieces

    f = tmp_path / "corpus.txt"
    f.write_text("".join(f"line {i}: the tokenizer streams 流式分词 {i % 7}\n" for i in range(20_000)))
    pieces = split_pieces(iter_text(f, block_bytes=4096), max_chars=10_000)
    tok = BPETokenizer.train(pieces, vocab_size=500)
    assert tok.vocab_size == 500
    text = "line 12: the tokenizer streams 流式分词 5\n"
    assert tok.decode(tok.encode(text)) == text and len(tok.encode(text)) < len(text) // 2


def test_long_documents_encode_the_same_in_pieces(bpe):
    # A document longer than a piece is cut where byte-level BPE splits words anyway (before a line
    # or a word), so its ids are those of the whole text.
    from llm_foundry.data.sources import split_pieces

    lines = [f"{'    ' * (i % 3)}word{i} 中文{i}  end{'.' * (i % 4)}" for i in range(3000)]
    text = "\n".join(lines) + " single spaced words " * 500
    pieces = list(split_pieces((text,), max_chars=1000))
    assert len(pieces) > 50 and "".join(pieces) == text and max(map(len, pieces)) <= 1000
    assert [i for p in pieces for i in bpe.encode(p)] == bpe.encode(text)
