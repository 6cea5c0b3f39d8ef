"""Module 13 — evaluation tasks (visible tests). Run them with `foundry lab test 13`.

Every number your code produces is compared with what OUR library computes from the same replies:
``llm_foundry.eval.answers.score_answer`` item by item, the mean over tasks as ``foundry eval-chat``
prints it, and — on a real (tiny, untrained) model of your module-5 ``model.py`` — the replies of our
``inference.Engine`` and the accuracy of our ``eval.tasks.evaluate_task``. Accuracies are compared
exactly: they are counts divided by counts, no rounding is involved.
"""

from types import SimpleNamespace

import torch

from llm_foundry.config import ModelConfig
from llm_foundry.data.synthetic import make_examples
from llm_foundry.eval import answers as ours
from llm_foundry.lab.testing import check_close, check_equal, learner_line

from evaluate import Task, compare_table, evaluate, extract_number, model_answer_fn, visible, wilson_interval


def ex(prompt: str, answer: str):
    """An example as our data/synthetic.py makes them: ``.prompt`` (messages) and ``.answer``."""
    return SimpleNamespace(prompt=[{"role": "user", "content": prompt}], answer=answer)


def table_model(replies: dict[str, str]):
    """A stand-in model: it answers each prompt with the reply written for it."""
    return lambda prompt: replies[prompt[-1]["content"]]


def test_visible_drops_tool_blocks_and_special_tokens():
    cases = ["Answer: 7<|assistant_end|>",
             "<|python_start|>37*12<|python_end|><|output_start|>444<|output_end|>Answer: 444",
             "let me see <|python_start|>2+2",
             "plain text, no tokens"]
    for text in cases:
        check_equal(f"visible({text!r})", visible(text), ours._visible(text), where=visible,
                    hint="the calculator's output is written by the engine, not the model: a tool block goes whole")


def test_extract_number_finds_the_final_answer():
    cases = {
        "37*12 = 444": ("the LAST number is the conclusion when there is no marker; the first one is "
                        "usually an operand copied from the question"),
        "Answer: 12. Check: 12 + 3 = 15": "after an answer marker the FIRST number that follows it is the answer",
        "She has 1,234 apples. Answer: 1,234": "drop the thousands separators before float(): 1,234 is 1234",
        "答案：-7": "",
        "#### 3.5": "",
        "<|python_start|>37*12<|python_end|><|output_start|>444<|output_end|>": (
            "the 444 is the calculator's output, not something the model wrote: a reply that only calls the "
            "tool has no answer (None) — use visible(text) first"),
        "I do not know": "",
    }
    for text, hint in cases.items():
        check_equal(f"extract_number({text!r})", extract_number(text), ours.extract_number(text),
                    where=extract_number, hint=hint)


CHECK_CASES = [  # (task, the reference answer, a reply, what to look at when yours disagrees with ours)
    ("arithmetic", "444", "Answer: 444", "numeric: compare extract_number of the reply with the answer's number"),
    ("arithmetic", "444", "<|python_start|>37*12<|python_end|><|output_start|>444<|output_end|>",
     "numeric: a reply that only calls the calculator has not answered"),
    ("arithmetic", "444", "Answer: 445", ""),
    ("arithmetic", "1234", "Answer: 1,234", "numeric: 1,234 and 1234 are the same number"),
    ("count_letters", "3", "there are 3 r's", ""),
    ("spelling", "a-p-p-l-e", "a-p-p-l-e", "spelling: the last dash-spelled sequence, dashes and spaces removed, "
     "is the word"),
    ("spelling", "a-p-p-l-e", "Sure: A - P - P - L - E", "spelling: letters may be upper case and spaced"),
    ("spelling", "a-p-p-l-e", "apple", "spelling: the word written plainly is not spelled out"),
    ("spelling", "a-p-p-l-e", "a-p-p-l", ""),
    ("identity", "Foundry Mini", "I am Foundry Mini.", "contains: the name appears in the reply"),
    ("identity", "Foundry Mini", "i am foundry mini", "contains: names match whatever their case (casefold both)"),
    ("identity", "Foundry Mini", "I am a model.", ""),
    ("copy", "hello world", "hello world", ""),
    ("copy", "hello world", "Hello  World.<|assistant_end|>", "exact: compare normalise(reply) with normalise(answer)"),
    ("copy", "hello world", "hello", ""),
    ("facts", "Paris", "The capital is Paris.", "word: the answer as a whole word of the reply"),
    ("facts", "Paris", "paris", "word: an answer of three letters or more matches whatever its case"),
    ("facts", "Fe", "The symbol is Fe.", ""),
    ("facts", "Fe", "The symbol is fe.", "word: a symbol of one or two letters keeps its case (fe is not Fe)"),
    ("facts", "Fe", "The symbol is Few.", "word: a whole word only (Few does not contain the symbol Fe)"),
    ("facts", "巴黎", "首都是巴黎。", "word: an answer without Latin letters is found anywhere in the reply"),
]


def test_check_agrees_with_ours_on_every_builtin_task():
    for name, answer, reply, hint in CHECK_CASES:
        task = Task(name, [])
        got = task.check(ex("q", answer), reply)
        check_equal(f"Task({name!r}, ...).check(example with answer {answer!r}, {reply!r})", bool(got),
                    bool(ours.score_answer(name, reply, answer)), where=Task.check, hint=hint)


def test_evaluate_counts_and_averages_like_ours():
    # Two tasks of different sizes: the macro mean (each task counts once) and the micro share (each
    # example counts once) differ, so neither can stand in for the other.
    arith = Task("arithmetic", [ex(f"{a}+{a}?", str(2 * a)) for a in range(1, 11)])
    ident = Task("identity", [ex(f"who are you {i}?", "Mini") for i in range(4)])
    replies = {f"{a}+{a}?": f"Answer: {2 * a if a % 3 else 2 * a + 1}" for a in range(1, 11)}  # 3, 6, 9 wrong
    replies.update({f"who are you {i}?": "I am Mini." if i == 0 else "I am a model." for i in range(4)})
    got = evaluate(table_model(replies), [arith, ident])
    want = {}
    for task in (arith, ident):
        right = sum(ours.score_answer(task.name, replies[e.prompt[0]["content"]], e.answer) for e in task.examples)
        want[task.name] = (right / len(task.examples), int(right), len(task.examples))
    call = f"evaluate(answer_fn, [arithmetic (10 examples), identity (4)]){learner_line(evaluate)}"
    assert isinstance(got, dict) and isinstance(got.get("tasks"), dict), (
        f"{call}: expected a dict with 'tasks' (name -> its numbers), 'macro' and 'micro'; got {got!r}")
    for name, (acc, right, total) in want.items():
        r = got["tasks"].get(name)
        assert isinstance(r, dict), f"{call}: no entry for task {name!r} in result['tasks']: {got['tasks']!r}"
        check_equal(f"{call}['tasks'][{name!r}]", {k: r.get(k) for k in ("accuracy", "correct", "total")},
                    {"accuracy": acc, "correct": right, "total": total})
    macro = sum(a for a, _, _ in want.values()) / 2
    micro = sum(r for _, r, _ in want.values()) / sum(t for _, _, t in want.values())
    hint = ""
    if abs(got.get("macro", -1) - micro) < 1e-12:
        hint = ("your macro is the share over all examples (that is micro): macro is the plain mean of the "
                "tasks' accuracies, so a small task weighs as much as a big one")
    check_close(f"{call}['macro']", torch.tensor(float(got.get("macro", -1))), torch.tensor(macro), atol=1e-12,
                rtol=0, hint=hint)
    check_close(f"{call}['micro']", torch.tensor(float(got.get("micro", -1))), torch.tensor(micro), atol=1e-12,
                rtol=0, hint="micro is (all answers right) / (all examples)")


def test_wilson_interval():
    cases = [((0, 10), (0.0, 0.2775)), ((10, 10), (0.7225, 1.0)), ((5, 10), (0.2366, 0.7634)), ((45, 50), (0.7864, 0.9565))]
    for (correct, total), want in cases:
        got = wilson_interval(correct, total)
        hint = ""
        if correct in (0, total) and isinstance(got, tuple) and len(got) == 2 and abs(got[1] - got[0]) < 1e-9:
            hint = ("your interval is a single point: that is the normal (Wald) approximation p ± z·sqrt(p(1−p)/n), "
                    "which says 0/10 right is certainly 0 %; Wilson's interval never collapses")
        check_close(f"wilson_interval({correct}, {total})", torch.tensor(tuple(float(v) for v in got)),
                    torch.tensor(want), atol=1e-4, rtol=0, where=wilson_interval, hint=hint)


def test_compare_table():
    base = {"tasks": {"arithmetic": {"accuracy": 0.25, "correct": 5, "total": 20},
                      "identity": {"accuracy": 0.5, "correct": 2, "total": 4}}, "macro": 0.375, "micro": 7 / 24}
    mine = {"tasks": {"arithmetic": {"accuracy": 0.45, "correct": 9, "total": 20},
                      "identity": {"accuracy": 0.25, "correct": 1, "total": 4}}, "macro": 0.35, "micro": 10 / 24}
    got = compare_table(base, mine)
    want = ("| task | baseline | yours | change |\n"
            "|---|---|---|---|\n"
            "| arithmetic | 25.0% (5/20) | 45.0% (9/20) | +20.0 |\n"
            "| identity | 50.0% (2/4) | 25.0% (1/4) | -25.0 |\n"
            "| macro | 37.5% | 35.0% | -2.5 |\n"
            "| micro | 29.2% | 41.7% | +12.5 |\n")
    hint = ""
    if isinstance(got, str) and "-20.0" in got:
        hint = "the change is yours minus the baseline: a better model shows a + sign"
    check_equal("compare_table(baseline, yours)", got, want, where=compare_table, hint=hint)


# ---------------------------------------------------------------- on a real model
def tiny_model():
    """Your module-5 MiniLLM, tiny and untrained, and our byte tokenizer with the chat tokens.

    Its weights are drawn here (seeded, the same whatever your model's own init), and the output head
    is zero for every token but printable ASCII: the greedy replies are gibberish, but readable and
    different from prompt to prompt — enough to check the plumbing against ours.
    """
    from llm_foundry.tokenizers.byte import ByteTokenizer
    from model import MiniLLM

    tok = ByteTokenizer()
    torch.manual_seed(0)
    cfg = ModelConfig(vocab_size=tok.vocab_size, dim=32, n_layers=1, n_heads=2, max_seq_len=192)
    model = MiniLLM(cfg)
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0.0, 0.5)
        model.output.weight[[i for i in range(tok.vocab_size) if not 32 <= i < 127]] = 0.0
    return model, tok, cfg


def test_model_answer_fn_replies_as_our_engine():
    from llm_foundry.data.chat import render_prompt
    from llm_foundry.inference.engine import Engine
    from llm_foundry.models import MiniLLM as OurMiniLLM

    model, tok, cfg = tiny_model()
    theirs = OurMiniLLM(cfg)
    theirs.load_state_dict(model.state_dict())
    engine = Engine(theirs, tok, precision="fp32", tools=False)
    answer = model_answer_fn(model, tok, max_new_tokens=12)
    assert callable(answer), f"model_answer_fn(model, tokenizer){learner_line(model_answer_fn)} must return a function of the prompt"
    for e in make_examples("identity", 3, split="heldout", seed=1, lang="en"):
        want = tok.decode(engine.generate_batch([render_prompt(tok, e.prompt)], max_tokens=12, temperature=0.0)[0],
                          skip_special=False)
        check_equal(f"model_answer_fn(model, tokenizer, max_new_tokens=12)({e.prompt[-1]['content']!r})",
                    answer(e.prompt), want, where=model_answer_fn,
                    hint="render the prompt with render_prompt (it ends with <|assistant_start|>) and decode with "
                         "skip_special=False")


def name_said_by_some(replies: list[str]) -> str:
    """Two characters that some of the replies contain and some do not (casefolded): as the model's
    "name", they make the identity task's accuracy neither 0 nor 1 on an untrained model."""
    texts = [ours._visible(r).casefold() for r in replies]
    for text in texts:
        for i in range(len(text) - 1):
            piece = text[i:i + 2]
            if piece.isprintable() and piece.strip() == piece and 0 < sum(piece in t for t in texts) < len(texts):
                return piece
    return "llm-foundry mini model"


def test_evaluate_on_a_model_matches_our_evaluate_task():
    from llm_foundry.eval.tasks import builtin_task, evaluate_task
    from llm_foundry.inference.engine import Engine
    from llm_foundry.models import MiniLLM as OurMiniLLM

    model, tok, cfg = tiny_model()
    theirs = OurMiniLLM(cfg)
    theirs.load_state_dict(model.state_dict())
    engine = Engine(theirs, tok, precision="fp32", tools=False)
    probe = builtin_task("identity", 6, split="heldout", seed=2, lang="en")
    replies = [s["completion"] for s in evaluate_task(engine, probe, max_tokens=10).samples]
    name = name_said_by_some(replies)
    kw = dict(split="heldout", seed=2, lang="en")
    specs = [("identity", 6, dict(identity=name)), ("copy", 3, {}), ("arithmetic", 4, {})]
    mine = evaluate(model_answer_fn(model, tok, max_new_tokens=10),
                    [Task(t, make_examples(t, n, name=o.get("identity", "x"), **kw)) for t, n, o in specs])
    results = [evaluate_task(engine, builtin_task(t, n, **kw, **o), max_tokens=10) for t, n, o in specs]
    call = f"evaluate(model_answer_fn(model, tokenizer, 10), [identity (name {name!r}), copy, arithmetic]){learner_line(evaluate)}"
    for r in results:
        check_equal(f"{call}['tasks'][{r.name!r}]['accuracy']", mine["tasks"][r.name]["accuracy"], r.accuracy)
    check_equal(f"{call}['macro']", mine["macro"], sum(r.accuracy for r in results) / len(results))
