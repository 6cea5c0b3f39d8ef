import pytest
import torch

from llm_foundry import Generator
from llm_foundry.inference import sample_next
from llm_foundry.config.sampling import check_sampling
from llm_foundry.config.sampling import GREEDY_TEMPERATURE, MAX_SEED
from llm_foundry.utils.errors import FoundryError


@pytest.fixture(scope="module")
def gen(trained_run):
    return Generator.from_pretrained(trained_run, precision="fp32")


def naive_greedy(model, ids, n):
    # Full recompute every step, no cache: the reference the cached path must match.
    ids = list(ids)
    out = []
    for _ in range(n):
        logits, _ = model(torch.tensor([ids[-model.cfg.max_seq_len:]]))
        logits = logits[0, -1].clone()
        logits[[0, 1]] = float("-inf")  # the generator never emits PAD/UNK
        out.append(int(logits.argmax()))
        ids.append(out[-1])
    return out


def test_cached_greedy_equals_full_recompute(gen):
    prompt = "ROMEO:\nWhat"
    text = gen.generate(prompt, max_new_tokens=30, temperature=0)
    ids = naive_greedy(gen.model, gen.tokenizer.encode(prompt), 30)
    assert text == gen.tokenizer.decode(ids)


def test_seeds_and_streaming(gen):
    kw = dict(max_new_tokens=40, temperature=1.0, top_p=0.9, top_k=20)
    a = gen.generate("KING", seed=3, **kw)
    assert a == gen.generate("KING", seed=3, **kw)
    assert a != gen.generate("KING", seed=4, **kw)
    pieces = list(gen.stream("KING", seed=3, **kw))
    assert len(pieces) > 1 and "".join(pieces) == a


def test_stop_strings_and_context_overflow(gen):
    full = gen.generate("First", max_new_tokens=60, temperature=0)
    stop = full[10:12]
    cut = gen.generate("First", max_new_tokens=60, temperature=0, stop=[stop])
    assert cut == full[:full.index(stop)]
    # More tokens than the model's context: the cache is rebuilt, generation goes on.
    long = gen.generate("First", max_new_tokens=gen.model.cfg.max_seq_len * 2, temperature=0.8, seed=1)
    assert len(long) == gen.model.cfg.max_seq_len * 2


def test_unknown_characters_become_unk_with_a_warning(gen, capsys):
    out = gen.generate("你好 ROMEO", max_new_tokens=5, temperature=0)
    assert len(out) == 5
    assert "unknown to the tokenizer" in capsys.readouterr().err


def test_sampling_filters():
    logits = torch.tensor([[0.0, 1.0, 2.0, 3.0]])
    assert int(sample_next(logits, temperature=0)[0]) == 3
    g = torch.Generator().manual_seed(0)
    picks = {int(sample_next(logits, 1.0, top_k=2, generator=g)[0]) for _ in range(200)}
    assert picks == {2, 3}
    picks = {int(sample_next(logits, 1.0, top_p=0.5, generator=g)[0]) for _ in range(200)}
    assert picks == {3}  # p(3) = 0.64 already covers 0.5
    assert int(sample_next(logits, GREEDY_TEMPERATURE / 10, generator=g)[0]) == 3  # tiny temperature: greedy
    picks = {int(sample_next(logits, 1.0, top_k=0, top_p=1.0, generator=g)[0]) for _ in range(200)}
    assert picks == {0, 1, 2, 3}  # top_k 0 and top_p 1 are off


def test_generator_is_text_over_the_engine(gen):
    # The Engine is the one token loop: the Generator's text is its tokens, decoded.
    assert gen.engine.mode == "text"
    ids = gen.encode_prompt("ROMEO:")
    tokens, _ = gen.engine.generate(ids, max_tokens=30, temperature=0.9, top_k=20, seed=5)
    assert gen.generate("ROMEO:", max_new_tokens=30, temperature=0.9, top_k=20, seed=5) == gen.tokenizer.decode(tokens[0])
    # A temperature too small to divide by is greedy.
    assert gen.generate("ROMEO:", max_new_tokens=20, temperature=1e-9) == gen.generate("ROMEO:", max_new_tokens=20,
                                                                                       temperature=0)


@pytest.mark.parametrize("bad, message", [
    (dict(temperature=2.5), "temperature must be a number from 0 to 2"),
    (dict(temperature=-0.1), "temperature must be"),
    (dict(temperature=float("nan")), "temperature must be"),
    (dict(top_k=-1), "top_k must be an integer >= 0"),
    (dict(top_k=2.5), "top_k must be an integer"),
    (dict(top_p=0.0), "top_p must be a number in (0, 1]"),
    (dict(top_p=1.5), "top_p must be"),
    (dict(max_new_tokens=0), "max_new_tokens must be an integer >= 1"),
    (dict(seed=-1), "seed must be an integer from 0"),
    (dict(seed=MAX_SEED + 1), "seed must be"),
    (dict(seed=True), "seed must be"),
])
def test_sampling_bounds(gen, bad, message):
    with pytest.raises(FoundryError) as e:
        check_sampling(**bad)
    assert str(e.value).startswith(message) and "\n" not in str(e.value)
    with pytest.raises(FoundryError, match=r"^" + message.split()[0]):  # the Python API checks the same bounds
        gen.generate("A", **{"max_new_tokens": 5, **bad})
    # Command-line spelling on request; the edges themselves are fine.
    with pytest.raises(FoundryError, match=r"^--max-new-tokens must be"):
        check_sampling(max_new_tokens=0, as_flags=True)
    check_sampling(temperature=0, top_k=0, top_p=1, max_new_tokens=1, seed=0)
    check_sampling(temperature=2, seed=MAX_SEED)
