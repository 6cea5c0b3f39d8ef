"""The built-in fact world and the readers of a user's facts and questions."""

from __future__ import annotations

import re
from collections import Counter

import pytest

from llm_foundry.memory.facts import (RELATION_BY_NAME, RELATIONS, UNSEEN_RELATIONS, FactWorld, build_world,
                                      read_facts_jsonl, read_questions_jsonl, render)
from llm_foundry.utils.errors import FoundryError


@pytest.fixture(scope="module")
def world() -> FactWorld:
    return build_world(seed=0, n_train=60, n_memory_only=40)


def test_relations_have_values_and_phrasings_in_both_languages():
    assert len(RELATIONS) >= 20 and len(set(RELATION_BY_NAME)) == len(RELATIONS)
    assert set(UNSEEN_RELATIONS) < set(RELATION_BY_NAME)
    for r in RELATIONS:
        for lang in ("en", "zh"):
            assert len(r.values[lang]) >= 4 and len(set(r.values[lang])) == len(r.values[lang]), (r.name, lang)
            assert len(r.statements[lang]) >= 3 and len(r.questions[lang]) >= 4, (r.name, lang)
            assert all("{s}" in t and "{o}" in t for t in r.statements[lang]), (r.name, lang)
            assert all("{s}" in t and "{o}" not in t for t in r.questions[lang]), (r.name, lang)  # no answer leak
            assert len(set(r.questions[lang])) == len(r.questions[lang])


def test_the_world_has_both_languages_and_disjoint_splits(world):
    train, mem = world.facts("train"), world.facts("memory_only")
    assert {f.lang for f in train} == {f.lang for f in mem} == {"en", "zh"}
    assert not {f.subject for f in train} & {f.subject for f in mem}
    for facts in (train, mem):
        # One value per (subject, relation): every question has one right answer.
        assert len({(f.subject, f.relation) for f in facts}) == len(facts)
        assert all(f.object in f.text and f.subject in f.text for f in facts)
        assert len({f.text for f in facts}) == len(facts)
    zh = [f for f in mem if f.lang == "zh"]
    assert all(re.search(r"[\u4e00-\u9fff]", f.subject) for f in zh)
    assert all(re.fullmatch(r"[A-Z][\w .&]+", f.subject) for f in mem if f.lang == "en")
    # Enough variety for training: many relations, every statement phrasing used.
    assert len({f.relation for f in mem}) == len(RELATIONS)
    assert {f.phrasing for f in mem} == {0, 1, 2}


def test_the_world_is_deterministic_for_a_seed():
    a, b = build_world(3, 20, 20), build_world(3, 20, 20)
    assert a.facts("memory_only") == b.facts("memory_only") and a.questions("train") == b.questions("train")
    assert a.distractors(500, seed=1) == b.distractors(500, seed=1)
    assert build_world(4, 20, 20).facts("train") != a.facts("train")
    assert a.distractors(500, seed=2) != a.distractors(500, seed=1)
    only_en = build_world(3, 10, 10, langs=("en",))
    assert {f.lang for f in only_en.facts("train")} == {"en"}


def test_modules_only_entities_are_new_names_that_change_no_other_split():
    plain, more = build_world(5, 30, 20), build_world(5, 30, 20, n_modules_only=50)
    # adding them leaves the backbone's (train) and the evaluation's (memory-only) facts as they were
    assert more.facts("train") == plain.facts("train") and more.facts("memory_only") == plain.facts("memory_only")
    extra = more.facts("modules_only")
    assert plain.facts("modules_only") == [] and {f.lang for f in extra} == {"en", "zh"}
    assert len({f.subject for f in extra}) == 100
    assert not {f.subject for f in extra} & {f.subject for s in ("train", "memory_only") for f in more.facts(s)}
    assert not {f.relation for f in extra} & set(UNSEEN_RELATIONS)  # they train the modules: no unseen relation


def test_held_out_relations_never_reach_training(world):
    train_facts = world.facts("train")
    assert not {f.relation for f in train_facts} & set(UNSEEN_RELATIONS)
    for phrasing in ("train", "heldout"):
        assert world.questions("train", phrasing, relations="unseen") == []
        assert not {q.relation for q in world.questions("train", phrasing)} & set(UNSEEN_RELATIONS)
    unseen = world.questions("memory_only", relations="unseen")
    assert unseen and {q.relation for q in unseen} == set(UNSEEN_RELATIONS)
    assert not {q.relation for q in world.questions("memory_only")} & set(UNSEEN_RELATIONS)


def test_held_out_question_phrasings_are_absent_from_training_questions(world):
    def template_of(q) -> str:
        fact = world.facts("train")[q.fact]
        return next(t for t in RELATION_BY_NAME[q.relation].questions[q.lang]
                    if (t.format(s=fact.subject)[0].upper() + t.format(s=fact.subject)[1:] if q.lang == "en"
                        else t.format(s=fact.subject)) == q.question)

    trained = Counter(template_of(q) for q in world.questions("train", "train"))
    heldout = {template_of(q) for q in world.questions("train", "heldout")}
    assert heldout and not heldout & set(trained)
    assert all(RELATION_BY_NAME[q.relation].questions[q.lang][-1] == template_of(q)
               for q in world.questions("train", "heldout"))
    # Each question asks about its own fact and expects its value.
    for q in world.questions("memory_only", "heldout"):
        fact = world.facts("memory_only")[q.fact]
        assert q.answer == fact.object and fact.subject in q.question


def test_counterfactual_keeps_subject_relation_and_phrasing(world):
    for f in world.facts("memory_only")[:200]:
        c = world.counterfactual(f)
        assert (c.subject, c.relation, c.lang, c.phrasing) == (f.subject, f.relation, f.lang, f.phrasing)
        assert c.object != f.object and c.object in RELATION_BY_NAME[f.relation].values[f.lang]
        assert c.text == render(RELATION_BY_NAME[f.relation], f.subject, c.object, f.lang, f.phrasing)
        assert world.counterfactual(f) == c


def test_forty_thousand_distractors_about_other_entities(world):
    texts = world.distractors(40_000, seed=0)
    assert len(texts) == 40_000 and len(set(texts)) > 39_000
    assert sum(bool(re.search(r"[\u4e00-\u9fff]", t)) for t in texts) > 15_000  # both languages
    subjects = {f.subject for split in ("train", "memory_only") for f in world.facts(split)}
    en_subjects = sorted(s for s in subjects if s.isascii())
    # No distractor is about a world entity (an English name followed by a space or an apostrophe is one).
    pattern = re.compile("|".join(re.escape(s) + r"(?=[ '.])" for s in en_subjects))
    assert not any(pattern.search(t) for t in texts[:5000])
    assert world.distractors(0) == []


@pytest.mark.slow
def test_a_million_distractors_for_the_largest_store():
    texts = build_world(0, 50, 50).distractors(1_000_000, seed=0)
    assert len(texts) == 1_000_000 and len(set(texts)) > 990_000


def test_bad_world_arguments(world):
    with pytest.raises(FoundryError, match="unknown split"):
        world.facts("test")
    with pytest.raises(FoundryError, match="phrasing"):
        world.questions("train", phrasing="other")
    with pytest.raises(FoundryError, match="relations"):
        world.questions("train", relations="all")
    with pytest.raises(FoundryError, match="languages"):
        build_world(0, 1, 1, langs=("fr",))


# ----------------------------------------------------------------------------- readers
def test_read_facts_jsonl_takes_text_and_triples(tmp_path):
    path = tmp_path / "facts.jsonl"
    path.write_text('{"text": "  Velmora Quist was born in Oslo. "}\n\n'
                    '{"subject": "Tarsk", "relation": "capital of", "object": "Norland"}\n'
                    '{"subject": "岚墨城", "relation": "capital_of", "object": "北原国"}\n'
                    '{"subject": "Ada", "relation": "lucky number", "object": "7"}\n'
                    '{"subject": "阿达", "relation": "幸运数字", "object": "七"}\n', encoding="utf-8")
    assert read_facts_jsonl(path) == ["Velmora Quist was born in Oslo.", "Tarsk is the capital of Norland.",
                                      "岚墨城是北原国的首都。", "The lucky number of Ada is 7.", "阿达的幸运数字是七。"]


def test_read_questions_jsonl(tmp_path):
    path = tmp_path / "q.jsonl"
    path.write_text('{"question": "Where was Velmora Quist born?", "answer": "Oslo"}\n'
                    '{"question": "岚墨城是哪个国家的首都？", "answer": "北原国", "extra": 1}\n', encoding="utf-8")
    qs = read_questions_jsonl(path)
    assert [(q.question, q.answer, q.fact) for q in qs] == [("Where was Velmora Quist born?", "Oslo", None),
                                                           ("岚墨城是哪个国家的首都？", "北原国", None)]


@pytest.mark.parametrize("content, message", [
    (b"", "empty"),
    (b"\n  \n", "empty"),
    (b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR", "binary"),
    (b'{"text": "caf\xe9"}\n', "not UTF-8"),
    (b'{"text": "fine"}\n{"text": broken\n', ":2: not valid JSON"),
    (b'{"text": "fine"}\n["a list"]\n', ":2: expected"),
    (b'{"subject": "A", "relation": "r"}\n', ":1: expected"),
    (b'{"subject": "A", "relation": "r", "object": 5}\n', ":1: expected"),
    (b'{"text": "  "}\n', ":1: an entry's text is empty"),
    (b'{"text": 7}\n', ":1: an entry's text must be a string"),
    (b'{"text": "a\\u0000b"}\n', ":1: an entry's text contains a NUL"),
    (b'{"text": "\\ud800"}\n', ":1: an entry's text contains a lone surrogate"),
], ids=["empty", "blank", "binary", "latin1", "bad-json", "not-object", "missing-field", "non-string",
        "blank-text", "int-text", "nul", "surrogate"])
def test_bad_facts_files_are_one_line(tmp_path, content, message):
    path = tmp_path / "facts.jsonl"
    path.write_bytes(content)
    with pytest.raises(FoundryError, match=re.escape(message)) as e:
        read_facts_jsonl(path)
    assert "\n" not in str(e.value)


@pytest.mark.parametrize("content, message", [
    (b"", "empty"),
    (b'{"question": "q?"}\n', ":1: expected"),
    (b'{"question": "q?", "answer": ""}\n', ":1: expected"),
    (b'{"question": "q?", "answer": "a"}\n{oops}\n', ":2: not valid JSON"),
    (b'"just a string"\n', ":1: expected"),
], ids=["empty", "no-answer", "empty-answer", "bad-json", "not-object"])
def test_bad_questions_files_are_one_line(tmp_path, content, message):
    path = tmp_path / "q.jsonl"
    path.write_bytes(content)
    with pytest.raises(FoundryError, match=re.escape(message)):
        read_questions_jsonl(path)


def test_a_missing_file_is_one_line(tmp_path):
    with pytest.raises(FoundryError, match="not found"):
        read_facts_jsonl(tmp_path / "nope.jsonl")
