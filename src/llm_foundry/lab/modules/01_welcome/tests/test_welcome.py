"""Tests of your welcome.py: the greeting, your environment, the map of the library, and a tiny
model trained with it.

Run them with:  foundry lab test 1
"""

import math
import platform

import torch

import llm_foundry
from llm_foundry.lab.testing import check_equal
from llm_foundry.utils.device import resolve_device
from welcome import check_environment, hello, pick_device, tiny_demo, where_defined


def python_docs(*topics: str) -> str:
    """Text every Python install has: topics of Python's own reference documentation."""
    from pydoc_data.topics import topics as all_topics

    return "".join(all_topics[t] for t in topics)


def run_demo(text: str, steps: int, seed: int) -> tuple[list[float], str]:
    """``tiny_demo(text, steps, seed)``, checked to return ``(list of float losses, str)``."""
    call = f"tiny_demo(text, steps={steps}, seed={seed})"
    got = tiny_demo(text, steps, seed)
    assert isinstance(got, tuple) and len(got) == 2, (
        f"{call} (your welcome.py) returned {type(got).__name__} {str(got)[:60]!r}: expected a pair (losses, sample)")
    losses, sample = got
    assert isinstance(losses, list) and all(isinstance(x, float) for x in losses), (
        f"{call}: losses should be a list of floats (loss.item() of each step), got {str(losses)[:80]!r}")
    check_equal(f"len(losses) of {call}", len(losses), steps, where=tiny_demo, hint="one loss per training step")
    assert isinstance(sample, str), f"{call}: the sample should be a str (Generator.generate), got {type(sample).__name__}"
    return losses, sample


def test_hello():
    check_equal('hello("llm-foundry")', hello("llm-foundry"), "Hello, llm-foundry! 你好，llm-foundry！", where=hello,
                hint="the Chinese half uses the full-width comma ， and exclamation mark ！")


def test_pick_device_prefers_cuda_then_mps():
    for cuda, mps, want in ((True, True, "cuda"), (True, False, "cuda"), (False, True, "mps"), (False, False, "cpu")):
        check_equal(f"pick_device(cuda={cuda}, mps={mps})", pick_device(cuda, mps), want, where=pick_device,
                    hint="CUDA comes first, then MPS, then the CPU (src/llm_foundry/utils/device.py: resolve_device)")


def test_check_environment():
    env = check_environment()
    assert isinstance(env, dict), f"check_environment() (your welcome.py) returned {type(env).__name__}: expected a dict"
    want = {"python": platform.python_version(), "torch": torch.__version__, "llm_foundry": llm_foundry.__version__,
            "device": resolve_device("auto").type, "threads": torch.get_num_threads()}
    for key, value in want.items():
        check_equal(f"check_environment()[{key!r}]", env.get(key), value, where=check_environment)
    print("your environment:", env)


def test_where_defined():
    check_equal('where_defined("MiniLLM")', where_defined("MiniLLM"), "models/minillm.py", where=where_defined,
                hint="the path of the defining file relative to src/llm_foundry/ (Path.relative_to), with / between parts")
    check_equal('where_defined("data.split_documents")', where_defined("data.split_documents"), "data/split.py",
                where=where_defined, hint="llm_foundry.data re-exports split_documents; inspect.getsourcefile finds "
                                          "the file that defines it")
    try:
        where_defined("NoSuchThing")
    except ValueError as e:
        assert "NoSuchThing" in str(e), f'where_defined("NoSuchThing"): the ValueError {e!r} should name NoSuchThing'
    else:
        raise AssertionError('where_defined("NoSuchThing") (your welcome.py) raised nothing: expected a ValueError')


def test_tiny_demo_learns():
    text = python_docs("if", "while", "for")
    vocab = len(set(text)) + 2  # the characters, and <|pad|> and <|unk|>
    losses, sample = run_demo(text, 60, 0)
    print(f"losses: first {losses[0]:.3f} (ln {vocab} = {math.log(vocab):.3f}), last {losses[-1]:.3f}")
    print(f"sample: {text[:8]!r} + {sample!r}")
    late = sum(losses[-10:]) / 10
    assert late > 0.5, (f"tiny_demo: the last losses average {late:.3f}, impossibly low for 60 steps: the targets must "
                        f"be the inputs shifted by one (y = data[s + 1:s + 33]), or the model only copies its input")
    assert abs(losses[0] - math.log(vocab)) < 0.6, (
        f"tiny_demo: the first loss is {losses[0]:.3f}; an untrained model guesses uniformly over the {vocab} ids, "
        f"a loss near ln({vocab}) = {math.log(vocab):.3f}. Is vocab_size=tok.vocab_size?")
    assert late < losses[0] - 1.0, (f"tiny_demo: the loss went from {losses[0]:.3f} to {late:.3f} (mean of the last 10); "
                                    f"it should fall by more than 1. Call optimizer.zero_grad(), loss.backward() and "
                                    f"optimizer.step() every step")
    assert set(sample) <= set(text), f"tiny_demo: the sample {sample!r} has characters the text does not have"
