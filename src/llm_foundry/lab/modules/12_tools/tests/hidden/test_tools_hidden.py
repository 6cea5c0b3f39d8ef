"""Module 12 — tool use (hidden tests: a hostile expression written by the model, two calls in one
reply, a budget that ends inside the tool's answer, a stray <|python_end|>, sampling settings)."""

from llm_foundry.lab.testing import check_equal, learner_line
from llm_foundry.tokenizers.special import ASSISTANT_END, OUTPUT_END, OUTPUT_START, PYTHON_END, PYTHON_START

from test_tools import ID, TOK, Puppet, calculate, chat_prompt, diagnose, generate_with_tools, run_bounded, show, tool_user


def test_a_hostile_expression_from_the_model_is_answered_with_an_error():
    expr = "__import__('os').system('touch pwned')"
    got = Puppet(tool_user(expr, before="")).reply(chat_prompt("run it"), max_new_tokens=200)
    text = show(got)
    inside = text.split(OUTPUT_START, 1)[-1].split(OUTPUT_END, 1)[0] if OUTPUT_START in text else ""
    assert inside.startswith("error: "), (
        f"generate_with_tools{learner_line(generate_with_tools)}: the model wrote the block {expr!r} and the reply is "
        f"{text[:200]!r}: the engine must inject the calculator's refusal, <|output_start|>error: ...<|output_end|>. "
        + diagnose(got, expr, "error"))
    assert text.endswith("=" + inside), f"the model did not read the injected answer back: {text[-80:]!r}"


def test_two_calls_in_one_reply():
    first, second = tool_user("2+3"), tool_user("10//4", before=" and ")
    state = {}

    def script(reply):
        n = state.setdefault("split", None)
        if n is None:
            r = first(reply)
            if r == ID[ASSISTANT_END]:  # the first call is done: go on with the second
                state["split"] = len(reply)
                return second([])
            return r
        return second(reply[n:])
    got = Puppet(script).reply(chat_prompt("two sums"), max_new_tokens=120)
    check_equal("a reply with two python blocks", show(got),
                f"x={PYTHON_START}2+3{PYTHON_END}{OUTPUT_START}5{OUTPUT_END}=5 and {PYTHON_START}10//4{PYTHON_END}"
                f"{OUTPUT_START}2{OUTPUT_END}=2", where=generate_with_tools,
                hint="after an answer is injected, the next <|python_start|> opens a new block")


def test_forced_tokens_count_toward_the_budget():
    prompt = chat_prompt("6*7?")
    got = Puppet(tool_user("6*7", before="")).reply(prompt, max_new_tokens=7)
    want = [ID[PYTHON_START], *TOK.encode("6*7"), ID[PYTHON_END], ID[OUTPUT_START], *TOK.encode("4")]
    check_equal("generate_with_tools(..., max_new_tokens=7)", show(got), show(want), where=generate_with_tools,
                hint="every returned token counts, the forced ones too, as in our Engine")
    got = Puppet(tool_user("6*7", before=""), max_seq_len=len(prompt) + 8).reply(prompt, max_new_tokens=50)
    check_equal("generate_with_tools with only 8 positions left in the context", show(got), show(want + TOK.encode("2")),
                where=generate_with_tools)


def test_a_stray_python_end_and_sampling_settings():
    words = TOK.encode("ok") + [ID[PYTHON_END]] + TOK.encode("!") + [ID[ASSISTANT_END]]
    got = Puppet(lambda r: words[len(r)] if len(r) < len(words) else ID[ASSISTANT_END]).reply(chat_prompt("?"))
    check_equal("a <|python_end|> with no open block", show(got), f"ok{PYTHON_END}!", where=generate_with_tools,
                hint="only a block opened by <|python_start|> is evaluated")
    got = Puppet(tool_user("1+1")).reply(chat_prompt("1+1"), temperature=0.8, top_k=5, top_p=0.9, seed=3)
    check_equal("generate_with_tools(..., temperature=0.8, top_k=5, top_p=0.9, seed=3)", show(got),
                f"x={PYTHON_START}1+1{PYTHON_END}{OUTPUT_START}2{OUTPUT_END}=2", where=generate_with_tools)


def test_more_arithmetic_and_refusals():
    for expr, want in {"2**4095 // 2**4094": "2", "-2**2": "-4", "(-2)**3": "-8", "1e-3 * 1000": "1",
                       "10 % -3": "-2", "0x10 + 0b11": "19", "1_000 * 3": "3000", "7.5 // 2": "3"}.items():
        check_equal(f"calculate({expr!r})", calculate(expr), want, where=calculate)
    for expr in ("{1: 2}", "(1, 2)", "~5", "1 << 10", "5 & 3", "not 1", "1 and 2", "print(1)", "'x'.upper()",
                 "exec('1')", "1; 2", "a = 1", "1e309 - 1e309"):
        got = calculate(expr)
        assert isinstance(got, str) and got.startswith("error: "), (
            f"calculate({expr!r}){learner_line(calculate)}: expected a refusal, got {got!r}")
    kind, value = run_bounded("(" + "2**4000*" * 60 + "1)")
    assert kind == "ok" and value.startswith("error: "), (
        f"calculate('(2**4000*2**4000*... 60 times)'){learner_line(calculate)}: expected a quick refusal, got {kind} "
        f"{value!r}")
