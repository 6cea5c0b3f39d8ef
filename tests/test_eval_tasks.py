"""Evaluation tasks: readers of public formats, generative and multiple-choice scoring, `foundry eval-chat`."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F

from helpers import one_line_error, overfit_on, run_cli
from llm_foundry import MiniLLM
from llm_foundry.config import load_config
from llm_foundry.data.chat import render_prompt
from llm_foundry.eval.readers import detect_format, read_arc, read_gsm8k, read_mmlu
from llm_foundry.eval.tasks import builtin_task, choice_logprobs, evaluate_task, load_task
from llm_foundry.inference.engine import Engine
from llm_foundry.tokenizers import ByteTokenizer
from llm_foundry.models import save_model_dir
from llm_foundry.utils.errors import FoundryError

TOK = ByteTokenizer()
LESSON = [{"role": "user", "content": "What is 2+3?"},
          {"role": "assistant", "content": [{"type": "python", "text": "2+3"}, {"type": "python_output", "text": "5"},
                                            {"type": "text", "text": "Answer: 5"}]}]


def tiny_model(seed: int = 0) -> MiniLLM:
    cfg, _ = load_config("tiny", ["model.dim=64", "model.n_layers=2", "model.n_heads=4", "model.max_seq_len=256"])
    cfg.vocab_size = TOK.vocab_size
    torch.manual_seed(seed)
    return MiniLLM(cfg)


@pytest.fixture(scope="module")
def random_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("random_chat_model")
    save_model_dir(folder, tiny_model(), TOK)
    return folder


@pytest.fixture(scope="module")
def lesson_dir(tmp_path_factory):
    """A tiny model that learned one tool-using conversation by heart."""
    model = tiny_model(seed=1)
    overfit_on(model, TOK, LESSON)
    folder = tmp_path_factory.mktemp("lesson_model")
    save_model_dir(folder, model, TOK)
    return folder


def write_lines(path, rows) -> None:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows), encoding="utf-8")


def test_gsm8k_reader(tmp_path):
    f = tmp_path / "gsm8k_test.jsonl"
    write_lines(f, [{"question": "Tom has 3 apples and buys 4. How many?", "answer": "3+4=7\n#### 7"},
                    {"question": "Big?", "answer": "so #### 1,234"}])
    assert detect_format(f) == "gsm8k"
    items = read_gsm8k(f)
    assert [i.answer for i in items] == ["7", "1234"]
    assert items[0].messages == [{"role": "user", "content": "Tom has 3 apples and buys 4. How many?"}]
    write_lines(f, [{"question": "ok", "answer": "#### 1"}, {"question": "no marker", "answer": "7"}])
    with pytest.raises(FoundryError, match=r"gsm8k_test\.jsonl:2: .*####"):
        read_gsm8k(f)


def test_mmlu_readers(tmp_path):
    csv_file = tmp_path / "astronomy_test.csv"
    csv_file.write_text('What is the Sun?,A planet,"A star, a big one",A moon,A comet,B\n2+2?,3,4,5,6,B\n', encoding="utf-8")
    assert detect_format(csv_file) == "mmlu"
    items = read_mmlu(csv_file)
    assert items[0].choices == ["A", "B", "C", "D"] and items[0].answer == "B"
    assert "B. A star, a big one" in items[0].messages[0]["content"]
    jl = tmp_path / "mmlu.jsonl"
    write_lines(jl, [{"question": "2+2?", "choices": ["3", "4", "5", "6"], "answer": 1, "subject": "math"},
                     {"question": "1+1?", "A": "2", "B": "3", "C": "4", "D": "5", "answer": "A"}])
    assert detect_format(jl) == "mmlu"
    assert [i.answer for i in read_mmlu(jl)] == ["B", "A"]
    write_lines(jl, [{"question": "2+2?", "choices": ["3", "4"], "answer": 7}])
    with pytest.raises(FoundryError, match=r"mmlu\.jsonl:1: answer 7 names none"):
        read_mmlu(jl)
    csv_file.write_text("question,A,B,C,D,answer\nonly,two\n", encoding="utf-8")
    with pytest.raises(FoundryError, match=r"astronomy_test\.csv:2:"):
        read_mmlu(csv_file)


def test_arc_reader_both_layouts(tmp_path):
    f = tmp_path / "arc.jsonl"
    write_lines(f, [
        {"id": "1", "question": {"stem": "Which is a gas?", "choices": [{"text": "ice", "label": "A"},
                                                                         {"text": "steam", "label": "B"}]},
         "answerKey": "B"},
        {"id": "2", "question": "Which is hot?", "choices": {"text": ["sun", "snow", "ice"], "label": ["1", "2", "3"]},
         "answerKey": "1"},
    ])
    assert detect_format(f) == "arc"
    items = read_arc(f)
    assert [(i.answer, i.choices) for i in items] == [("B", ["A", "B"]), ("A", ["A", "B", "C"])]
    write_lines(f, [{"question": {"stem": "x", "choices": []}, "answerKey": "Z"}])
    with pytest.raises(FoundryError, match=r"arc\.jsonl:1: answerKey 'Z'"):
        read_arc(f)


def test_unknown_format_and_missing_file(tmp_path):
    f = tmp_path / "weird.jsonl"
    write_lines(f, [{"text": "hello"}])
    with pytest.raises(FoundryError, match=r"weird\.jsonl:1: cannot tell the format"):
        detect_format(f)
    with pytest.raises(FoundryError, match="unknown task"):
        load_task(str(tmp_path / "nope.jsonl"))


def test_choice_logprobs_match_a_direct_computation():
    engine = Engine(tiny_model(), TOK, precision="fp32")
    prompt = render_prompt(TOK, [{"role": "user", "content": "Pick one"}])
    choices = [TOK.encode("A"), TOK.encode("Bee"), TOK.encode("see you")]
    got = choice_logprobs(engine, prompt, choices)
    for c, value in zip(choices, got):
        seq = torch.tensor([prompt + c])
        with torch.no_grad():
            logits, _ = engine.model(seq)
        logp = F.log_softmax(logits[0, :-1].float(), -1)
        want = sum(float(logp[len(prompt) - 1 + k, t]) for k, t in enumerate(c))
        assert value == pytest.approx(want, abs=1e-4)


def test_generative_task_on_a_model_that_knows_the_answer(lesson_dir, tmp_path):
    f = tmp_path / "lesson.jsonl"
    write_lines(f, [{"messages": LESSON, "answer": "5", "scorer": "numeric"}] * 3)
    task = load_task(str(f))
    assert task.kind == "generative" and task.scorer == "numeric" and len(task.items) == 3
    engine = Engine.from_pretrained(lesson_dir, device="cpu", precision="fp32")
    result = evaluate_task(engine, task, batch_size=2, max_tokens=32)
    assert result.accuracy == 1.0 and result.total == 3
    assert result.samples[0]["completion"].startswith("<|python_start|>2+3<|python_end|><|output_start|>5")
    # The CLI, with and without the tool.
    proc = run_cli("eval-chat", lesson_dir, "--task", f, "--json")
    assert proc.returncode == 0, proc.stderr
    with_tools = json.loads(proc.stdout)
    assert with_tools["tasks"][0]["accuracy"] == 1.0 and with_tools["aggregate"] == 1.0
    proc = run_cli("eval-chat", lesson_dir, "--task", f, "--json", "--no-tools")
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["tools"] is False


def test_builtin_tasks_and_cli_table(random_dir, tmp_path):
    engine = Engine.from_pretrained(random_dir, device="cpu", precision="fp32")
    task = builtin_task("arithmetic", 6)
    result = evaluate_task(engine, task, batch_size=4, max_tokens=16)
    assert result.total == 6 and 0.0 <= result.accuracy <= 1.0 and len(result.samples) == 6
    mmlu = tmp_path / "mmlu.jsonl"
    write_lines(mmlu, [{"question": "2+2?", "choices": ["3", "4", "5", "6"], "answer": 1}] * 2)
    proc = run_cli("eval-chat", random_dir, "--task", "count_letters", "--task", mmlu, "-n", "3", "--max-tokens", "8",
                   "--samples", "1")
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[0].split()[:3] == ["task", "accuracy", "correct"]
    assert lines[1].startswith("count_letters") and "/3" in lines[1]
    assert lines[2].startswith("mmlu") and "/2" in lines[2]
    assert lines[3].startswith("aggregate")
    one_line_error(run_cli("eval-chat", random_dir, "--task", "poetry"), "unknown task 'poetry'")
    one_line_error(run_cli("eval-chat", random_dir, "--batch-size", "0"), "--batch-size")
