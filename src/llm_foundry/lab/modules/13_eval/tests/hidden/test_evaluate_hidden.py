"""Module 13 — evaluation tasks (hidden tests): many generated replies checked against ours, the
prompt the model is shown, empty tasks, other confidence levels, a whole baseline-vs-model report."""

import math
import random

import torch

from llm_foundry.data.synthetic import make_examples
from llm_foundry.eval import answers as ours
from llm_foundry.lab.testing import check_close, check_equal, learner_line

from evaluate import Task, compare_table, evaluate, extract_number, model_answer_fn, visible, wilson_interval
from test_evaluate import ex, table_model, tiny_model

PIECES = ["Answer:", "answer is", "答案：", "答案是", "####", "37", "-4", "1,234", "3.5", ".5", "the", "apples", " ",
          "\n", "=", "+", "<|python_start|>12*3<|python_end|>", "<|output_start|>36<|output_end|>",
          "<|python_start|>2+", "<|assistant_end|>", "-", ",", "ANSWER :"]


def test_extract_number_on_generated_replies():
    rng = random.Random(0)
    for _ in range(400):
        text = "".join(rng.choice(PIECES) for _ in range(rng.randint(0, 7)))
        check_equal(f"extract_number({text!r})", extract_number(text), ours.extract_number(text), where=extract_number)
        check_equal(f"visible({text!r})", visible(text), ours._visible(text), where=visible)


def reply_text(message: dict) -> str:
    """An assistant message of our synthetic data as the engine's decoded text (tool blocks as tokens)."""
    content = message["content"]
    if isinstance(content, str):
        return content
    wrap = {"python": "<|python_start|>{}<|python_end|>", "python_output": "<|output_start|>{}<|output_end|>",
            "text": "{}"}
    return "".join(wrap[p["type"]].format(p["text"]) for p in content)


def variants(text: str, rng: random.Random) -> list[str]:
    """The reference reply and wrong or reworded versions of it."""
    out = [text, text.upper(), text.lower(), text[:-1], text + ".", "  " + text + "  ", text.replace("-", " - "),
           text.replace("-", ""), text + " Answer: 0", "I think " + text, text.split("<|output_end|>")[0]]
    digits = [c for c in text if c.isdigit()]
    if digits:
        out.append(text.replace(digits[-1], str((int(digits[-1]) + 1) % 10)))
    return out + [rng.choice(out)[::-1]]


def test_check_on_generated_replies_to_our_tasks():
    rng = random.Random(1)
    for name in ("arithmetic", "count_letters", "spelling", "identity", "copy", "facts"):
        task = Task(name, [])
        for e in make_examples(name, 25, split="heldout", seed=3, lang="mixed"):
            for reply in variants(reply_text(e.messages[-1]), rng):
                check_equal(f"Task({name!r}, ...).check(example with answer {e.answer!r}, {reply!r})",
                            bool(task.check(e, reply)), bool(ours.score_answer(name, reply, e.answer)), where=Task.check)


def test_the_model_sees_the_prompt_once_and_never_the_answer():
    examples = make_examples("facts", 5, split="heldout", seed=4, lang="en")
    asked = []

    def answer_fn(prompt):
        assert prompt and prompt[-1]["role"] == "user", (
            f"evaluate{learner_line(evaluate)} gave the model a conversation ending with "
            f"{prompt[-1]['role'] if prompt else 'nothing'!r}: pass example.prompt — example.messages ends with "
            "the reference answer, so the model would be shown what it must find")
        asked.append(prompt[-1]["content"])
        return "I do not know"

    got = evaluate(answer_fn, [Task("facts", examples)])
    check_equal(f"the prompts evaluate(answer_fn, [facts (5 examples)]){learner_line(evaluate)} asked", asked,
                [e.prompt[-1]["content"] for e in examples], hint="ask each example's prompt once, in order")
    check_equal("its accuracy", got["tasks"]["facts"]["accuracy"], 0.0)


def test_empty_task_and_intervals_in_the_result():
    arith = Task("arithmetic", [ex(f"{a}*2?", str(2 * a)) for a in range(7)])
    empty = Task("copy", [])
    got = evaluate(table_model({f"{a}*2?": f"Answer: {2 * a if a < 5 else 0}" for a in range(7)}), [arith, empty])
    call = f"evaluate(answer_fn, [arithmetic (7 examples), copy (no examples)]){learner_line(evaluate)}"
    check_equal(f"{call}['tasks']['copy']", {k: got["tasks"]["copy"][k] for k in ("accuracy", "correct", "total")},
                {"accuracy": 0.0, "correct": 0, "total": 0})
    check_equal(f"{call}['macro'] (an empty task is left out)", got["macro"], 5 / 7)
    check_equal(f"{call}['micro']", got["micro"], 5 / 7)
    check_close(f"{call}['tasks']['arithmetic']['interval']",
                torch.tensor([float(v) for v in got["tasks"]["arithmetic"]["interval"]]),
                torch.tensor(list(wilson_ref(5, 7))), atol=1e-9, rtol=0)


def wilson_ref(c, n, z=1.96):
    p = c / n
    d = 1 + z * z / n
    centre, half = (p + z * z / (2 * n)) / d, z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / d
    return max(0.0, centre - half), min(1.0, centre + half)


def test_wilson_interval_other_levels():
    for c, n in ((0, 1), (1, 1), (3, 7), (99, 100), (1, 1000)):
        for z in (1.0, 2.576):
            check_close(f"wilson_interval({c}, {n}, z={z})", torch.tensor([float(v) for v in wilson_interval(c, n, z)]),
                        torch.tensor(list(wilson_ref(c, n, z))), atol=1e-9, rtol=0, where=wilson_interval)
    check_equal("wilson_interval(0, 0)", tuple(wilson_interval(0, 0)), (0.0, 1.0), where=wilson_interval,
                hint="with no examples nothing is known: the whole range [0, 1]")


def test_compare_table_missing_tasks_names_and_no_change():
    base = {"tasks": {"copy": {"accuracy": 0.5, "correct": 1, "total": 2},
                      "facts": {"accuracy": 1.0, "correct": 3, "total": 3}}, "macro": 0.75, "micro": 0.8}
    mine = {"tasks": {"copy": {"accuracy": 0.5, "correct": 1, "total": 2}}, "macro": 0.5, "micro": 0.5}
    want = ("| task | SFT | RL | change |\n|---|---|---|---|\n| copy | 50.0% (1/2) | 50.0% (1/2) | +0.0 |\n"
            "| facts | 100.0% (3/3) | – | – |\n| macro | 75.0% | 50.0% | -25.0 |\n| micro | 80.0% | 50.0% | -30.0 |\n")
    check_equal("compare_table(baseline, yours, names=('SFT', 'RL'))", compare_table(base, mine, ("SFT", "RL")), want,
                where=compare_table)


def test_report_of_two_models_from_our_numbers():
    from llm_foundry.eval.tasks import builtin_task, evaluate_task
    from llm_foundry.inference.engine import Engine
    from llm_foundry.models import MiniLLM as OurMiniLLM

    kw = dict(split="heldout", seed=5, lang="en")
    results, rows = [], []
    for seed in (0, 1):
        model, tok, cfg = tiny_model()
        if seed:  # the second model: the same weights, shuffled
            torch.manual_seed(seed)
            with torch.no_grad():
                for p in model.parameters():
                    p.copy_(p.flatten()[torch.randperm(p.numel())].view_as(p))
        theirs = OurMiniLLM(cfg)
        theirs.load_state_dict(model.state_dict())
        engine = Engine(theirs, tok, precision="fp32", tools=False)
        tasks = [("count_letters", 4), ("spelling", 3)]
        results.append(evaluate(model_answer_fn(model, tok, max_new_tokens=8),
                                [Task(t, make_examples(t, n, **kw)) for t, n in tasks]))
        rows.append([evaluate_task(engine, builtin_task(t, n, **kw), max_tokens=8) for t, n in tasks])
    for mine, theirs in zip(results, rows):
        for r in theirs:
            check_equal(f"evaluate(model_answer_fn(...), ...)['tasks'][{r.name!r}]['accuracy']",
                        mine["tasks"][r.name]["accuracy"], r.accuracy, where=evaluate)
    table = compare_table(results[0], results[1])
    assert table.startswith("| task | baseline | yours | change |\n|---|---|---|---|\n") and table.count("\n") == 6, (
        f"compare_table{learner_line(compare_table)}: a header, a separator, 2 task rows, macro and micro; got\n{table}")
