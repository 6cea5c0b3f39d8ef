"""Module 12 — tool use (visible tests). Run them with `foundry lab test 12`.

The calculator is checked on plain arithmetic (the text must be exactly ours), on expressions that
must be refused, and on hostile ones that would take forever or fill the memory if computed: each of
those runs in a child process of its own with 2 s of CPU time and 256 MiB more memory than it started
with, so a calculator that tries to compute 9**9**9 is stopped and named, not left to hang the run.

The injection is checked with a *puppet*: your MiniLLM (module 5) whose output head is overridden by
a script that decides the next token from everything the model has read so far. The script writes a
python block, then copies whatever it reads between <|output_start|> and <|output_end|> — so the
reply shows exactly what your engine injected and fed to the model.
"""

import json
import os
import resource
import signal

import torch

from llm_foundry.config import ModelConfig
from llm_foundry.lab.testing import check_equal, learner_line
from llm_foundry.tokenizers import ByteTokenizer
from llm_foundry.tokenizers.special import (ASSISTANT_END, ASSISTANT_START, BOS, OUTPUT_END, OUTPUT_START, PYTHON_END,
                                            PYTHON_START, USER_END, USER_START)

from model import MiniLLM
from tools import calculate, evaluate, generate_with_tools, parse

TOK = ByteTokenizer()
ID = {name: TOK.token_id(name) for name in (BOS, USER_START, USER_END, ASSISTANT_START, ASSISTANT_END, PYTHON_START,
                                            PYTHON_END, OUTPUT_START, OUTPUT_END)}


def test_arithmetic_gives_our_text():
    cases = {"6*7": "42", "2**10": "1024", "7/2": "3.5", "8/2": "4", "7//2": "3", "-7//2": "-4", "7 % 3": "1",
             "(1 + 2) * 3": "9", "2**-1": "0.5", "1e3 + 1": "1001", "0.1 + 0.2": "0.3", "-(3)": "-3", "+5": "5",
             "2 ** 0.5": "1.41421356237", "10**20": "100000000000000000000", " 12 * 12 ": "144"}
    for expr, want in cases.items():
        check_equal(f"calculate({expr!r})", calculate(expr), want, where=calculate)


def test_code_is_never_run():
    for expr in ("__import__('os').system('touch pwned')", "open('pwned', 'w').write('x')",
                 "().__class__.__bases__[0].__subclasses__()", "(1).__class__"):
        got = calculate(expr)
        assert isinstance(got, str) and got.startswith("error: ") and not os.path.exists("pwned"), (
            f"calculate({expr!r}){learner_line(calculate)} returned {str(got)[:120]!r}"
            + (" and created a file" if os.path.exists("pwned") else "") + ": this must be refused. An attribute chain "
            "reaches every class in Python, so an empty __builtins__ does not make eval safe: never hand the text "
            "to eval/exec, walk the tree and allow only the nodes you know")


def test_what_is_not_arithmetic_is_refused():
    for expr in ("x + 1", "len('abc')", "'a' * 3", "[1, 2][0]", "1 < 2", "1 if 1 else 2", "lambda: 1", "True + 1",
                 "(y := 2)", "f'{1}'", "", "   ", "1 +", "import os"):
        got = calculate(expr)
        assert isinstance(got, str) and got.startswith("error: "), (
            f"calculate({expr!r}){learner_line(calculate)}: expected a refusal ('error: <why>'), got {got!r}: only "
            "numbers, + - * / // % ** and parentheses are allowed")


def run_bounded(expression, cpu_s=2, extra_bytes=256 << 20):
    """``calculate(expression)`` in a child process with ``cpu_s`` seconds of CPU and ``extra_bytes``
    more address space than it starts with: ``("ok", result)``, ``("cpu", None)``, ``("memory", None)``
    or ``("raised", text)``. No clock is read: the CPU limit stops a calculation that never ends."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: limits first, then the call, then the answer on the pipe
        try:
            os.close(r)
            with open("/proc/self/statm") as f:
                size = int(f.read().split()[0]) * os.sysconf("SC_PAGE_SIZE")
            resource.setrlimit(resource.RLIMIT_AS, (size + extra_bytes, size + extra_bytes))
            resource.setrlimit(resource.RLIMIT_CPU, (cpu_s, cpu_s + 1))
            try:
                out = ["ok", calculate(expression)]
                out[1] = out[1][:200] if isinstance(out[1], str) else repr(out[1])[:200]
            except MemoryError:
                out = ["memory", None]
            except BaseException as e:  # noqa: BLE001 — whatever it was, the parent names it
                out = ["raised", f"{type(e).__name__}: {e}"[:200]]
            os.write(w, json.dumps(out).encode())
        finally:
            os._exit(0)
    os.close(w)
    data = b""
    while chunk := os.read(r, 65536):
        data += chunk
    os.close(r)
    _, status = os.waitpid(pid, 0)
    if os.WIFSIGNALED(status) and os.WTERMSIG(status) in (signal.SIGXCPU, signal.SIGKILL):
        return "cpu", None
    if not data:
        return "raised", f"the child ended with status {status} and no answer"
    kind, value = json.loads(data)
    return kind, value


HOSTILE = {
    "9**9**9": "a power tower: 9**387420489 has 370 million digits",
    "2**10**10": "a power with ten billion bits",
    "(-9) ** 9**9": "a negative base: as large as 9**387420489",
    "10**4000 * 10**4000": "powers far past the size limit",
    "(2**4000) * (2**4000)": "a product of two numbers at the size limit: 8,001 bits",
    "(2**4000)*(2**4000)*(2**4000)*(2**4000)*(2**4000)*(2**4000)": "a chain of products",
    "-" * 499 + "1": "499 nested minus signs",
    "(" * 240 + "1" + ")" * 240: "240 nested parentheses, past the parser's limit",
    "1" + "+1" * 5000: "10,001 characters",
    "1e308 * 10": "a float past its range (inf)",
    "2.0 ** 100000": "a float power past its range",
    "(-8) ** 0.5": "a complex result",
    "1 / 0": "a division by zero",
    "'a' * 10**9": "a string of a billion characters",
    "[1] * 10**9": "a list of a billion items",
}


def test_hostile_expressions_are_refused_in_bounded_time_and_memory():
    for expr, what in HOSTILE.items():
        kind, value = run_bounded(expr)
        shown = expr if len(expr) <= 40 else expr[:37] + "..."
        call = f"calculate({shown!r}){learner_line(calculate)} ({what})"
        if kind == "cpu":
            raise AssertionError(f"{call} was still computing after 2 s of CPU time: the size must be checked BEFORE "
                                 "the power or product is computed (check_size estimates it from the operands' bits)")
        if kind == "memory":
            raise AssertionError(f"{call} ran out of memory (256 MiB): refuse it before building anything large")
        if kind == "raised":
            raise AssertionError(f"{call} raised {value}: calculate must return 'error: <why>', never raise")
        assert value.startswith("error: "), (
            f"{call} returned {value[:60]!r}: expected a refusal ('error: <why>')"
            + (": a product, too, can grow past MAX_INT_BITS — bound it by the operands' bits"
               if "*" in expr and "**" in expr and "'" not in expr and "[" not in expr else ""))


def test_size_limits_sit_where_ours_do():
    check_equal("calculate('2**4000')", calculate("2**4000"), str(2 ** 4000), where=calculate,
                hint="4,001 bits is under MAX_INT_BITS (4096): allowed")
    for expr in ("2**5000", "3**3000", "(2**3000) * (2**3000)"):
        got = calculate(expr)
        assert got.startswith("error: "), f"calculate({expr!r}){learner_line(calculate)}: expected a refusal, got {got[:40]!r}..."
    tree = parse("1 + 2")
    check_equal("evaluate(parse('1 + 2').body)", evaluate(tree.body), 3, where=evaluate)


# ----------------------------------------------------------------------------------------- the puppet
class Puppet:
    """Your MiniLLM whose next token is chosen by ``script(reply)``: the tokens read since the prompt.

    Two hooks: one on ``tok_embeddings`` records every token the model reads (one step at a time with a
    cache, or the whole sequence again without one); one on ``output`` replaces the logits so that
    the script's token has all the probability.
    """

    def __init__(self, script, max_seq_len=256):
        torch.manual_seed(0)
        cfg = ModelConfig(vocab_size=TOK.vocab_size, dim=32, n_layers=1, n_heads=2, max_seq_len=max_seq_len)
        self.model = MiniLLM(cfg).eval()
        self.script, self.read = script, []
        self.model.tok_embeddings.register_forward_pre_hook(self._read)
        self.model.output.register_forward_hook(self._write)

    def _read(self, module, args):
        ids = args[0][0].tolist()
        if len(ids) > len(self.read) and ids[:len(self.read)] == self.read:
            self.read = ids  # the whole sequence again: no cache
        else:
            self.read = self.read + ids

    def _write(self, module, args, logits):
        out = torch.full_like(logits, -30.0)
        out[..., self.script(self.read[self.prompt_len:])] = 30.0
        return out

    def reply(self, prompt, max_new_tokens=60, **sampling):
        self.read, self.prompt_len = [], len(prompt)
        return generate_with_tools(self.model, TOK, prompt, max_new_tokens, **sampling)


def chat_prompt(text):
    return [ID[BOS], ID[USER_START], *TOK.encode(text), ID[USER_END], ID[ASSISTANT_START]]


def tool_user(expression, before="x="):
    """A script: write ``before``, call the calculator on ``expression``, then copy what the engine
    injected between <|output_start|> and <|output_end|> after an "=", then end the reply."""
    plan = TOK.encode(before) + [ID[PYTHON_START], *TOK.encode(expression), ID[PYTHON_END]]

    def script(reply):
        if len(reply) < len(plan):
            return plan[len(reply)]
        rest = reply[len(plan):]
        if ID[OUTPUT_END] not in rest:
            return TOK.encode("?")[0]  # waiting: the engine should be forcing the tool's answer now
        end = rest.index(ID[OUTPUT_END])
        start = rest.index(ID[OUTPUT_START]) + 1 if ID[OUTPUT_START] in rest[:end] else 0
        copy = TOK.encode("=") + rest[start:end] + [ID[ASSISTANT_END]]
        done = rest[end + 1:]
        return copy[len(done)] if len(done) < len(copy) else ID[ASSISTANT_END]
    return script


def show(ids):
    return TOK.decode(ids, skip_special=False)


def diagnose(reply, expression, result):
    """A sentence naming what went wrong in a reply of the tool_user script."""
    text = show(reply)
    after = text.split(PYTHON_END, 1)[1] if PYTHON_END in text else ""
    if PYTHON_END not in text:
        return "the reply stopped before the python block closed"
    if after.startswith("?"):
        return ("after <|python_end|> the model went on alone: the engine must force <|output_start|>result"
                "<|output_end|> into the reply as soon as the block closes")
    if not after.startswith(OUTPUT_START):
        return (f"after <|python_end|> comes {after[:30]!r}: the result must be wrapped in <|output_start|> ... "
                "<|output_end|>, so the model (and the user interface) can tell the tool's words from its own")
    inside = after[len(OUTPUT_START):].split(OUTPUT_END, 1)[0]
    if inside.startswith("error") and not result.startswith("error"):
        return (f"the calculator answered {inside!r} for the block {expression!r}: decode only the ids between "
                "<|python_start|> and <|python_end|> — the expression, not the reply so far")
    return ""


def test_the_tool_answer_is_injected_and_read_by_the_model():
    puppet = Puppet(tool_user("6*7"))
    got = puppet.reply(chat_prompt("What is 6 times 7?"))
    want = TOK.encode("x=") + [ID[PYTHON_START], *TOK.encode("6*7"), ID[PYTHON_END],
                               ID[OUTPUT_START], *TOK.encode("42"), ID[OUTPUT_END], *TOK.encode("=42")]
    check_equal("the reply of generate_with_tools (decoded with special tokens)", show(got), show(want),
                where=generate_with_tools, hint=diagnose(got, "6*7", "42"))
    check_equal("its token ids", got, want, where=generate_with_tools,
                hint="the reply ends at <|assistant_end|>, which is not returned")


def test_a_reply_without_tools_is_the_model_alone():
    words = TOK.encode("hello there") + [ID[ASSISTANT_END]]
    puppet = Puppet(lambda reply: words[len(reply)] if len(reply) < len(words) else ID[ASSISTANT_END])
    got = puppet.reply(chat_prompt("hi"))
    check_equal("generate_with_tools on a reply with no python block", show(got), "hello there",
                where=generate_with_tools)
