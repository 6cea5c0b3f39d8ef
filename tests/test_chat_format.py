"""Chat format (render, mask, read, validate) and the built-in synthetic data."""

from __future__ import annotations

import json
import re

import pytest

from helpers import run_cli
from llm_foundry.data.chat import (chat_token_ids, read_conversations, render_conversation, render_prompt,
                                   validate_messages, write_conversations)
from llm_foundry.data.synthetic import TASKS, is_heldout_number, make_examples, make_mixture
from llm_foundry.eval.answers import extract_number, score_answer
from llm_foundry.inference.tools import calculate
from llm_foundry.tokenizers import BPETokenizer, ByteTokenizer, CharTokenizer
from llm_foundry.utils.errors import FoundryError

TOK = ByteTokenizer()
SP = chat_token_ids(TOK)

CONVO = [
    {"role": "system", "content": "Be brief."},
    {"role": "user", "content": "What is 6*7?"},
    {"role": "assistant", "content": [{"type": "text", "text": "Let me see. "}, {"type": "python", "text": "6*7"},
                                      {"type": "python_output", "text": "42"}, {"type": "text", "text": "Answer: 42"}]},
    {"role": "user", "content": "Thanks <|assistant_end|>"},
    {"role": "assistant", "content": "You're welcome."},
]


def test_layout_and_mask_cover_assistant_tokens_only():
    ids, mask = render_conversation(TOK, CONVO)
    assert len(ids) == len(mask)
    e = TOK.encode
    expected = [(SP["bos"], 0), (SP["user_start"], 0), *[(i, 0) for i in e("Be brief.\n\nWhat is 6*7?")], (SP["user_end"], 0),
                (SP["assistant_start"], 0), *[(i, 1) for i in e("Let me see. ")],
                (SP["python_start"], 1), *[(i, 1) for i in e("6*7")], (SP["python_end"], 1),
                (SP["output_start"], 0), *[(i, 0) for i in e("42")], (SP["output_end"], 0),
                *[(i, 1) for i in e("Answer: 42")], (SP["assistant_end"], 1),
                (SP["user_start"], 0), *[(i, 0) for i in e("Thanks <|assistant_end|>")], (SP["user_end"], 0),
                (SP["assistant_start"], 0), *[(i, 1) for i in e("You're welcome.")], (SP["assistant_end"], 1)]
    assert list(zip(ids, mask)) == expected
    # What the mask selects is exactly what the assistant wrote.
    trained = TOK.decode([i for i, m in zip(ids, mask) if m], skip_special=False)
    assert trained == "Let me see. <|python_start|>6*7<|python_end|>Answer: 42<|assistant_end|>You're welcome.<|assistant_end|>"
    # A user typing a special token's text gets characters, never the token.
    assert ids.count(SP["assistant_end"]) == 2


def test_named_special_tokens_are_the_layout():
    # One definition of the chat tokens and the terminator set; the renderer and the engine both use it.
    from llm_foundry.tokenizers import special

    names = [special.USER_START, special.USER_END, special.ASSISTANT_START, special.ASSISTANT_END,
             special.PYTHON_START, special.PYTHON_END, special.OUTPUT_START, special.OUTPUT_END]
    assert special.CHAT_SPECIAL_TOKENS == names
    assert {f"<|{short}|>" for short in SP} == {special.BOS, *names}
    assert all(TOK.token_id(t) is not None for t in special.CHAT_TERMINATORS)
    prompt = render_prompt(TOK, CONVO[:2])
    assert prompt[-1] == TOK.token_id(special.ASSISTANT_START)
    ids, _ = render_conversation(TOK, CONVO)
    assert ids[-1] == TOK.token_id(special.ASSISTANT_END) and ids[-1] in special.token_ids(TOK, special.CHAT_TERMINATORS)


def test_max_tokens_truncates_both():
    ids, mask = render_conversation(TOK, CONVO, max_tokens=10)
    assert len(ids) == len(mask) == 10


def test_render_prompt_ends_with_assistant_start():
    prompt = render_prompt(TOK, CONVO[:2])
    assert prompt[-1] == SP["assistant_start"] and prompt[0] == SP["bos"]
    # A trailing reference reply is dropped, so an example's messages work directly.
    assert render_prompt(TOK, CONVO[:3]) == prompt
    with pytest.raises(FoundryError, match="system"):
        render_prompt(TOK, CONVO[:1])


def test_bpe_tokenizer_renders_too():
    bpe = BPETokenizer.train(["hello world, what is 2+3? answer: 5"] * 20, 300)
    ids, mask = render_conversation(bpe, CONVO)
    assert bpe.decode([i for i, m in zip(ids, mask) if m]) == "Let me see. 6*7Answer: 42You're welcome."


def test_tokenizer_without_chat_tokens_is_a_clear_error():
    with pytest.raises(FoundryError, match="byte or bpe"):
        render_conversation(CharTokenizer("abc"), CONVO)


@pytest.mark.parametrize("messages, fragment", [
    ([], "non-empty"),
    ("hello", "non-empty list"),
    ([{"role": "assistant", "content": "hi"}], "user message was expected"),
    ([{"role": "user", "content": "a"}, {"role": "user", "content": "b"}], "assistant message was expected"),
    ([{"role": "robot", "content": "a"}], "role 'robot'"),
    ([{"role": "user", "content": "a"}, {"role": "system", "content": "b"}], "only come first"),
    ([{"role": "user", "content": 5}], "content must be a string"),
    ([{"role": "user", "content": "a"}, {"role": "assistant", "content": [{"type": "image", "text": "x"}]}], "part 1"),
    ([{"role": "system", "content": "s"}], "only a system message"),
])
def test_validation_errors(messages, fragment):
    with pytest.raises(FoundryError, match=re.escape(fragment)):
        validate_messages(messages)


def test_read_conversations_and_line_numbers(tmp_path):
    good = tmp_path / "good.jsonl"
    write_conversations(good, [CONVO, CONVO[1:3]])
    assert read_conversations(good) == [CONVO, CONVO[1:3]]

    bad = tmp_path / "bad.jsonl"
    lines = [json.dumps({"messages": CONVO}), "", json.dumps({"messages": CONVO[1:3]}), "{not json"]
    bad.write_text("\n".join(lines) + "\n", encoding="utf-8")
    with pytest.raises(FoundryError, match=r"bad\.jsonl:4: not valid JSON"):
        read_conversations(bad)
    bad.write_text(json.dumps({"messages": CONVO}) + "\n" + json.dumps({"messages": [{"role": "user"}]}) + "\n")
    with pytest.raises(FoundryError, match=r"bad\.jsonl:2: message 1: content must be a string"):
        read_conversations(bad)
    bad.write_text(json.dumps({"msgs": []}) + "\n")
    with pytest.raises(FoundryError, match=r"bad\.jsonl:1: expected an object with a 'messages' list"):
        read_conversations(bad)
    with pytest.raises(FoundryError, match="not found"):
        read_conversations(tmp_path / "missing.jsonl")


def test_malformed_jsonl_is_one_line_cli_error(tmp_path):
    # eval-chat reads chat .jsonl through the same validation: the line number reaches the user.
    bad = tmp_path / "convos.jsonl"
    bad.write_text(json.dumps({"messages": CONVO[1:3]}) + "\n" + '{"messages": [{"role": "user", "content": "hi"}, {"role"\n')
    proc = run_cli("eval-chat", tmp_path / "no_model", "--task", bad)
    assert proc.returncode == 1 and "convos.jsonl:2: not valid JSON" in proc.stderr


# ------------------------------------------------------------------ synthetic data
@pytest.mark.parametrize("task", TASKS)
def test_examples_are_seeded_and_valid(task):
    a = make_examples(task, 50, seed=3)
    assert a == make_examples(task, 50, seed=3)
    assert a != make_examples(task, 50, seed=4)
    langs = set()
    for ex in a:
        assert ex.task == task and ex.messages[-1]["role"] == "assistant" and ex.prompt == ex.messages[:-1]
        validate_messages(ex.messages)
        ids, mask = render_conversation(TOK, ex.messages)
        assert sum(mask) > 0
        langs.add("zh" if re.search(r"[\u4e00-\u9fff]", ex.messages[0]["content"]) else "en")
        # The reference reply, as the engine would produce it, scores 1 against the answer.
        reply = TOK.decode(ids[ids.index(SP["assistant_start"]) + 1:], skip_special=False)
        assert score_answer(task, reply, ex.answer) == 1.0, (reply, ex.answer)
    assert langs == {"en", "zh"}
    assert {re.search(r"[\u4e00-\u9fff]", e.messages[0]["content"]) is None
            for e in make_examples(task, 20, lang="en")} == {True}


def test_tool_calls_in_examples_are_real_calculator_calls():
    for task in ("arithmetic", "count_letters"):
        for ex in make_examples(task, 200, seed=1) + make_examples(task, 200, split="heldout", seed=1):
            parts = ex.messages[-1]["content"]
            assert [p["type"] for p in parts] == ["python", "python_output", "text"]
            assert calculate(parts[0]["text"]) == parts[1]["text"] == ex.answer


def _question_numbers(ex) -> list[int]:
    return [int(x) for x in re.findall(r"\d+", ex.messages[0]["content"])]


def test_heldout_split_is_disjoint():
    train = make_examples("arithmetic", 1000, seed=0)
    held = make_examples("arithmetic", 1000, split="heldout", seed=0)
    assert all(not any(is_heldout_number(n) for n in _question_numbers(e)) for e in train)
    assert all(any(is_heldout_number(n) for n in _question_numbers(e)) for e in held)
    # Held-out templates: no question wording of one split appears in the other.
    def shape(e):
        return re.sub(r"\d+", "N", e.messages[0]["content"])
    train_shapes = {shape(e) for e in train}
    assert not train_shapes & {shape(e) for e in held}
    def word(e):
        if e.task == "spelling":
            return e.answer.replace("-", "")
        return re.match(r'"(\w+)"', e.messages[-1]["content"][0]["text"]).group(1)
    for task in ("spelling", "count_letters"):
        w_train = {word(e) for e in make_examples(task, 300)}
        w_held = {word(e) for e in make_examples(task, 300, split="heldout")}
        assert len(w_train) > 20 and len(w_held) > 10 and not w_train & w_held
    for task in ("identity", "facts"):
        q_train = {e.messages[0]["content"] for e in make_examples(task, 300)}
        q_held = {e.messages[0]["content"] for e in make_examples(task, 300, split="heldout")}
        assert not any(h in t for h in q_held for t in q_train)  # not even inside a wrapped question
    # A held-out word question is not a training question with other words in it, nor a
    # training question inside a greeting or thanks.
    def word_shape(e):
        w = word(e)
        text = e.messages[0]["content"].replace(w, "W")
        if e.task == "count_letters":
            letter = re.search(r'count\("(.)"\)', e.messages[-1]["content"][0]["text"]).group(1)
            text = re.sub(rf"(?<![A-Za-z]){letter}(?![A-Za-z])", "C", text)
        return re.sub(r"['\"“”「」]", "", text).strip()
    for task in ("spelling", "count_letters"):
        s_train = {word_shape(e) for e in make_examples(task, 2000)}
        s_held = {word_shape(e) for e in make_examples(task, 300, split="heldout")}
        assert len(s_train) > 50 and not any(h in t for h in s_held for t in s_train)


def test_stretch_split_is_harder_than_train_and_apart_from_heldout():
    # RL trains on it: the training wording, but numbers and words longer than SFT's, and
    # nothing from the held-out ranges or words, so the held-out evaluation stays honest.
    def shape(e):
        return re.sub(r"\d+", "N", e.messages[0]["content"])
    train, held = make_examples("arithmetic", 1000, seed=0), make_examples("arithmetic", 300, split="heldout", seed=0)
    stretch = make_examples("arithmetic", 1000, split="stretch", seed=0)
    assert not any(is_heldout_number(n) for e in stretch for n in _question_numbers(e))
    train_shapes = {shape(e) for e in make_examples("arithmetic", 20000, seed=1)}
    assert sum(shape(e) in train_shapes for e in stretch) > 0.5 * len(stretch)  # names and wraps vary
    assert not {shape(e) for e in stretch} & {shape(e) for e in held}
    def digits(exs):
        return sum(len(str(n)) for e in exs for n in _question_numbers(e)) / len(exs)
    assert digits(stretch) > digits(train) + 1.5
    for ex in stretch:  # still real calculator calls with the right answer
        parts = ex.messages[-1]["content"]
        assert calculate(parts[0]["text"]) == parts[1]["text"] == ex.answer
    for task in ("count_letters", "spelling"):
        def word(e):
            return e.answer.replace("-", "") if task == "spelling" else re.match(r'"(\w+)"', e.messages[-1]["content"][0]["text"]).group(1)
        w_stretch = [word(e) for e in make_examples(task, 300, split="stretch")]
        w_train = [word(e) for e in make_examples(task, 300)]
        assert sum(map(len, w_stretch)) > 1.6 * sum(map(len, w_train))
        assert not set(w_stretch) & {word(e) for e in make_examples(task, 300, split="heldout")}
    counts = {e.answer for e in make_examples("count_letters", 300, split="stretch")}
    assert {"0", "1", "2", "3"} <= counts
    # Tasks without a harder variant give their training examples.
    assert make_examples("facts", 20, split="stretch", seed=4) == make_examples("facts", 20, seed=4)


def test_copy_texts_are_split_and_replies_are_exact():
    train = make_examples("copy", 1000)
    held = make_examples("copy", 300, split="heldout")
    for ex in train + held:  # the reply is the text, and the text ends the question
        assert ex.messages[-1]["content"] == ex.answer and ex.messages[0]["content"].endswith(ex.answer)
    def items(exs, kind):
        return {t for e in exs for t in e.answer.split() if t.isdigit() == (kind == "number")}
    assert not items(train, "word") & items(held, "word")
    assert not any(is_heldout_number(int(n)) for n in items(train, "number"))
    assert all(is_heldout_number(int(n)) for n in items(held, "number"))
    def shape(e):
        return e.messages[0]["content"][: -len(e.answer)]
    assert not {shape(e) for e in train} & {shape(e) for e in held}


def test_letter_counts_are_balanced():
    # A model that always answers the same count must not pass the letter-counting bar.
    from collections import Counter

    for split in ("train", "heldout"):
        counts = Counter(e.answer for e in make_examples("count_letters", 1000, split=split))
        assert counts.most_common(1)[0][1] < 300 and {"0", "1", "2", "3"} <= set(counts)


def test_mixture_follows_the_weights():
    mix = make_mixture({"arithmetic": 3, "count_letters": 1, "identity": 0}, 400, seed=2)
    assert len(mix) == 400 and mix == make_mixture({"arithmetic": 3, "count_letters": 1, "identity": 0}, 400, seed=2)
    counts = {t: sum(e.task == t for e in mix) for t in ("arithmetic", "count_letters", "identity")}
    assert counts == {"arithmetic": 300, "count_letters": 100, "identity": 0}
    assert [e.task for e in mix[:20]] != sorted(e.task for e in mix[:20])  # shuffled
    with pytest.raises(FoundryError, match="weights"):
        make_mixture({"arithmetic": 0}, 5)


def test_identity_name_is_configurable():
    ex = make_examples("identity", 5, name="Pebble")
    assert all("Pebble" in ex_.messages[-1]["content"] and ex_.answer == "Pebble" for ex_ in ex)


def test_bad_arguments():
    with pytest.raises(FoundryError, match="unknown task"):
        make_examples("poetry", 1)
    with pytest.raises(FoundryError, match="split"):
        make_examples("arithmetic", 1, split="test")


@pytest.mark.parametrize("task, completion, answer, score", [
    ("arithmetic", "Answer: 444", "444", 1.0),
    ("arithmetic", "答案：1,234", "1234", 1.0),
    ("arithmetic", "the answer is 12.", "12", 1.0),
    ("arithmetic", "I think 7 then 12", "12", 1.0),
    ("arithmetic", "Answer: 445", "444", 0.0),
    ("arithmetic", "", "444", 0.0),
    # A tool's output never counts as the model's answer.
    ("arithmetic", "<|python_start|>37*12<|python_end|><|output_start|>444<|output_end|>", "444", 0.0),
    ("arithmetic", "<|python_start|>37*12<|python_end|><|output_start|>444<|output_end|>Answer: 444", "444", 1.0),
    ("arithmetic", "Answer: 2.33333333333", "2.333333333333", 1.0),
    ("arithmetic", "<|python_start|>37*12<|python_end|>", "12", 0.0),  # nor does the tool call
    ("numeric", "#### 72", "72", 1.0),
    ("count_letters", "Answer: 3 letters", "3", 1.0),
    ("spelling", "a-p-p-l-e", "a-p-p-l-e", 1.0),
    ("spelling", "It is spelled: A - P - P - L - E.", "a-p-p-l-e", 1.0),
    ("spelling", "a-p-l-e", "a-p-p-l-e", 0.0),
    ("copy", "kalala 42 tiger", "kalala 42 tiger", 1.0),
    ("copy", "kalala 42", "kalala 42 tiger", 0.0),
    ("identity", "I am Pebble.", "pebble", 1.0),
    ("facts", "The capital of France is Paris.", "Paris", 1.0),
    ("facts", "The chemical symbol of carbon is Ca.", "C", 0.0),
    ("facts", "The chemical symbol of carbon is C.", "C", 1.0),
    ("facts", "法国的首都是巴黎。", "巴黎", 1.0),
    ("exact", "  Hello World. ", "hello world", 1.0),
])
def test_score_answer(task, completion, answer, score):
    assert score_answer(task, completion, answer) == score


def test_extract_number():
    assert extract_number("Answer: -5") == -5.0
    assert extract_number("no digits here") is None
    assert extract_number("3 apples, 4 pears. 答案：7") == 7.0
