"""Welcome to the Lab: say hello, check your environment, find your way around the library,
and train a (very) small language model with it.

Everything you write here calls llm-foundry itself, the library this course rebuilds piece
by piece: `import llm_foundry` is the code in src/llm_foundry/.

Run the tests with:  foundry lab test 1
"""

from __future__ import annotations

import importlib
import inspect
import platform
from pathlib import Path

import torch

import llm_foundry
from llm_foundry import CharTokenizer, Generator, MiniLLM, ModelConfig


def hello(name: str) -> str:
    """A greeting in English and Chinese.

    Example: ``hello("llm-foundry")`` is ``"Hello, llm-foundry! 你好，llm-foundry！"`` (the
    Chinese half uses the full-width comma ``，`` and exclamation mark ``！``).
    """
    # BEGIN SOLUTION hello
    return f"Hello, {name}! 你好，{name}！"
    # END SOLUTION


def pick_device(cuda: bool, mps: bool) -> str:
    """The device our library picks for ``device: auto`` (src/llm_foundry/utils/device.py).

    An NVIDIA (or AMD ROCm) GPU first, then Apple's Metal (MPS), else the CPU.

    Args:
        cuda: whether ``torch.cuda.is_available()``.
        mps: whether ``torch.backends.mps.is_available()``.

    Returns:
        ``"cuda"``, ``"mps"`` or ``"cpu"``.
    """
    # BEGIN SOLUTION device
    if cuda:
        return "cuda"
    if mps:
        return "mps"
    return "cpu"
    # END SOLUTION


def check_environment() -> dict:
    """What the rest of the course runs on.

    Returns:
        ``{"python": "3.12.3", "torch": torch.__version__, "llm_foundry": llm_foundry.__version__,
        "device": pick_device(...) on this machine, "threads": torch.get_num_threads()}``;
        ``python`` is ``platform.python_version()``.
    """
    # BEGIN SOLUTION environment
    mps = getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available()
    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "llm_foundry": llm_foundry.__version__,
        "device": pick_device(torch.cuda.is_available(), mps),
        "threads": torch.get_num_threads(),
    }
    # END SOLUTION


def where_defined(name: str) -> str:
    """The file of src/llm_foundry/ that defines ``name``, relative to that folder.

    ``name`` is a public name of the package (``"BPETokenizer"``) or of one of its parts
    (``"data.split_documents"`` is ``split_documents`` of ``llm_foundry.data``).
    Examples: ``where_defined("MiniLLM")`` is ``"models/minillm.py"``,
    ``where_defined("utils.errors.FoundryError")`` is ``"utils/errors.py"``.

    Raises:
        ValueError: the package has no such name (the message names it).
    """
    # BEGIN SOLUTION where
    # STUB: package = Path(llm_foundry.__file__).parent  # src/llm_foundry/
    # STUB: raise NotImplementedError("where_defined")
    part, _, attr = name.rpartition(".")
    try:
        module = importlib.import_module(f"llm_foundry.{part}" if part else "llm_foundry")
        obj = getattr(module, attr)
    except (ImportError, AttributeError):
        raise ValueError(f"llm_foundry has no {name!r}") from None
    package = Path(llm_foundry.__file__).parent
    # A re-exported name lives where it is defined, not where it is imported from.
    return Path(inspect.getsourcefile(obj)).relative_to(package).as_posix()
    # END SOLUTION


def tiny_demo(text: str, steps: int = 60, seed: int = 0) -> tuple[list[float], str]:
    """Train a tiny character-level MiniLLM on ``text`` for ``steps`` steps, then sample from it.

    The recipe (the task text explains each line): ``torch.manual_seed(seed)``; a CharTokenizer
    grown on ``text``; ``MiniLLM(ModelConfig(vocab_size=tok.vocab_size, dim=32, n_layers=1,
    n_heads=2, max_seq_len=32))``; ``torch.optim.AdamW(model.parameters(), lr=1e-2)``; each
    step 8 random windows of 32 ids (inputs) and the same windows shifted by one (targets),
    ``_, loss = model(x, y)``, zero the gradients, backward, step. Then
    ``Generator(model, tok).generate(text[:8], max_new_tokens=40, seed=seed)``.

    Returns:
        ``(losses, sample)``: the ``steps`` training losses (floats, in order) and the text
        the model wrote after the prompt ``text[:8]``.
    """
    # BEGIN SOLUTION demo
    # STUB: torch.manual_seed(seed)  # the same seed, the same model, the same windows, the same losses
    # STUB: tok = CharTokenizer()
    # STUB: tok.add_chars(text)
    # STUB: data = torch.tensor(tok.encode(text))
    # STUB: losses: list[float] = []
    # STUB: raise NotImplementedError("tiny_demo: the model, the optimizer, the training loop, the sample")
    torch.manual_seed(seed)
    tok = CharTokenizer()
    tok.add_chars(text)
    data = torch.tensor(tok.encode(text))
    model = MiniLLM(ModelConfig(vocab_size=tok.vocab_size, dim=32, n_layers=1, n_heads=2, max_seq_len=32))
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    losses: list[float] = []
    for _ in range(steps):
        starts = torch.randint(0, len(data) - 32, (8,)).tolist()
        x = torch.stack([data[s:s + 32] for s in starts])
        y = torch.stack([data[s + 1:s + 33] for s in starts])  # the next character of each position
        _, loss = model(x, y)
        optimizer.zero_grad()  # gradients add up across backward() calls unless cleared
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    sample = Generator(model, tok).generate(text[:8], max_new_tokens=40, seed=seed)
    return losses, sample
    # END SOLUTION
