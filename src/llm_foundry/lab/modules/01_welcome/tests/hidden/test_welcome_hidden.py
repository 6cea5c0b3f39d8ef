"""Hidden tests of module 1: other names, every public name of the package, and the demo's seed."""

import inspect
import sys
from pathlib import Path

import llm_foundry
from llm_foundry.lab.testing import check_equal
from welcome import hello, where_defined

# The visible tests' helpers, next to this file in the run folder's tests/, whatever pytest's import mode.
sys.path.insert(0, str(Path(__file__).parent))
from test_welcome import python_docs, run_demo  # noqa: E402


def test_hello_other_names():
    for name in ("世界", "Ada"):
        check_equal(f"hello({name!r})", hello(name), f"Hello, {name}! 你好，{name}！", where=hello)


def test_where_defined_every_public_name():
    package = Path(llm_foundry.__file__).parent
    for name in [n for n in llm_foundry.__all__ if n != "__version__"] + ["utils.io.atomic_write_json",
                                                                          "tokenizers.bpe.BPETokenizer"]:
        obj = llm_foundry
        for part in name.split("."):
            obj = getattr(obj, part) if hasattr(obj, part) else __import__(f"{obj.__name__}.{part}", fromlist=["_"])
        want = Path(inspect.getsourcefile(obj)).relative_to(package).as_posix()
        check_equal(f"where_defined({name!r})", where_defined(name), want, where=where_defined)
    for bad in ("nothing.Here", "data.no_such_function"):
        try:
            where_defined(bad)
        except ValueError as e:
            assert bad in str(e), f"where_defined({bad!r}): the ValueError {e!r} should name {bad!r}"
        else:
            raise AssertionError(f"where_defined({bad!r}) raised nothing: expected a ValueError naming it")


def test_tiny_demo_same_seed_same_run():
    text = python_docs("try", "with")
    first = run_demo(text, 12, 3)
    again = run_demo(text, 12, 3)
    check_equal("tiny_demo(text, 12, seed=3) run twice: the losses", again[0], first[0],
                hint="the same seed must give the same run: call torch.manual_seed(seed) before building the model")
    check_equal("tiny_demo(text, 12, seed=3) run twice: the sample", again[1], first[1])
    other = run_demo(text, 12, 4)
    assert other[0] != first[0], "tiny_demo: seeds 3 and 4 gave the same losses: use the seed (torch.manual_seed(seed))"
