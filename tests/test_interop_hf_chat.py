"""A chat model exported to Hugging Face chats in `transformers` as it does with us.

``tokenizer.apply_chat_template(messages, add_generation_prompt=True)`` gives exactly the ids
of our renderer (system, multi-turn, tool call and result, Chinese; our parts and OpenAI
``tool_calls``), and greedy ``model.generate`` gives the reply of our Engine and stops at the
same terminator (``generation_config.json`` lists every chat terminator).
"""

from __future__ import annotations

import json
import os

import pytest
import torch

# Nothing here may reach a hub: set before transformers (and huggingface_hub) are imported.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
transformers = pytest.importorskip("transformers")

from helpers import overfit_on  # noqa: E402
from llm_foundry import MiniLLM, ModelConfig  # noqa: E402
from llm_foundry.data.chat import render_conversation, render_prompt  # noqa: E402
from llm_foundry.export import export_hf  # noqa: E402
from llm_foundry.inference.engine import Engine  # noqa: E402
from llm_foundry.models.model_dir import save_model_dir  # noqa: E402
from llm_foundry.tokenizers import BPETokenizer, ByteTokenizer  # noqa: E402
from llm_foundry.tokenizers.special import CHAT_TERMINATORS  # noqa: E402

LESSON = [{"role": "system", "content": "Answer briefly."}, {"role": "user", "content": "What is 2+3?"},
          {"role": "assistant", "content": "It is 5."}]
TOOL_PARTS = [{"type": "python", "text": "37*12"}, {"type": "python_output", "text": "444"},
              {"type": "text", "text": "37*12 = 444."}]
CONVERSATIONS = {
    "plain": [{"role": "user", "content": "Hello there!"}],
    "system": LESSON[:2],
    "multi_turn": [*LESSON, {"role": "user", "content": "And 3+4?"}, {"role": "assistant", "content": "7."},
                   {"role": "user", "content": "Thanks  \n bye"}],
    "tool_parts": [{"role": "user", "content": "37*12?"}, {"role": "assistant", "content": TOOL_PARTS},
                   {"role": "user", "content": "ok"}],
    "chinese": [{"role": "system", "content": "你是一个诗人。"}, {"role": "user", "content": "床前明月光，下一句是什么？"},
                {"role": "assistant", "content": "疑是地上霜。"}, {"role": "user", "content": "谢谢 😀"}],
}
# The same tool turn as OpenAI/transformers messages (as the server reads them).
OPENAI_TOOLS = [{"role": "user", "content": "37*12?"},
                {"role": "assistant", "content": "37*12 = 444.", "tool_calls": [
                    {"type": "function", "function": {"name": "calculator", "arguments": {"expression": "37*12"}}}]},
                {"role": "tool", "content": "444"}, {"role": "user", "content": "ok"}]
BPE_CORPUS = ["What is 2+3? It is 5. Answer briefly. Hello there! Thanks bye " * 4,
              "床前明月光，疑是地上霜。你是一个诗人。谢谢" * 3, "37*12 = 444. ok " * 3]


@pytest.fixture(scope="module", params=["byte", "bpe"])
def chat_model(request, tmp_path_factory):
    """(tokenizer, our model folder, exported folder) of a tiny model that learned LESSON."""
    root = tmp_path_factory.mktemp(f"chat_{request.param}")
    tok = ByteTokenizer() if request.param == "byte" else BPETokenizer.train(BPE_CORPUS, 330)
    torch.manual_seed(0)
    model = MiniLLM(ModelConfig(vocab_size=tok.vocab_size, dim=64, n_layers=2, n_heads=4, max_seq_len=128))
    assert overfit_on(model, tok, LESSON, steps=120) < 0.1
    save_model_dir(root / "model", model.eval(), tok)
    return tok, root / "model", export_hf(root / "model", root / "hf")


def hf_template_ids(hf_tok, messages, **kwargs) -> list[int]:
    out = hf_tok.apply_chat_template(messages, add_generation_prompt=True, **kwargs)
    return list(out["input_ids"] if hasattr(out, "keys") else out)  # a BatchEncoding in transformers 5


def test_chat_template_ids_equal_ours(chat_model):
    tok, _, dst = chat_model
    hf_tok = transformers.AutoTokenizer.from_pretrained(dst)
    for name, messages in CONVERSATIONS.items():
        assert hf_template_ids(hf_tok, messages) == render_prompt(tok, messages), name
    # OpenAI tool_calls + a tool message: the same ids as our parts.
    assert hf_template_ids(hf_tok, OPENAI_TOOLS) == render_prompt(tok, CONVERSATIONS["tool_parts"])
    # A whole conversation (no generation prompt) is our training layout.
    ids = hf_tok.apply_chat_template(CONVERSATIONS["multi_turn"][:-1], add_generation_prompt=False)
    ids = list(ids["input_ids"] if hasattr(ids, "keys") else ids)
    assert ids == render_conversation(tok, CONVERSATIONS["multi_turn"][:-1])[0]
    # The agent loop: call, tool result, then the model continues its own turn.
    loop = OPENAI_TOOLS[:3]
    loop[1] = {**loop[1], "content": ""}
    expected = render_conversation(tok, [loop[0], {"role": "assistant", "content": TOOL_PARTS[:2]}])[0][:-1]
    assert hf_template_ids(hf_tok, loop) == expected  # no <|assistant_end|>: the reply goes on


def test_generation_config_lists_every_terminator(chat_model):
    tok, _, dst = chat_model
    gc = json.loads((dst / "generation_config.json").read_text())
    assert gc["eos_token_id"] == [tok.token_id(t) for t in CHAT_TERMINATORS]
    assert tok.token_id("<|bos|>") not in gc["suppress_tokens"]  # a reply may end there, so it may be emitted


def test_greedy_reply_and_stop_equal_ours(chat_model):
    tok, src, dst = chat_model
    from llm_foundry.models.model_dir import load_model_dir

    bundle = load_model_dir(src)
    engine = Engine(bundle.model, bundle.tokenizer, precision="fp32", tools=False)
    model = transformers.AutoModelForCausalLM.from_pretrained(dst, dtype=torch.float32).eval()
    hf_tok = transformers.AutoTokenizer.from_pretrained(dst)
    terminators = {tok.token_id(t) for t in CHAT_TERMINATORS}
    stopped = 0
    for name, messages in CONVERSATIONS.items():
        prompt = render_prompt(tok, messages)
        steps = list(engine.stream(prompt, max_tokens=24, temperature=0))
        ours = [t[0] for t, _ in steps]  # the ending token included
        ids = torch.tensor([hf_template_ids(hf_tok, messages)])
        out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=24, do_sample=False)
        theirs = out[0, ids.shape[1]:].tolist()
        assert theirs == ours, name
        if ours[-1] in terminators:
            stopped += 1
    # The lesson's own question is answered and ended with <|assistant_end|>, in both.
    steps = [t[0] for t, _ in engine.stream(render_prompt(tok, LESSON), max_tokens=24, temperature=0)]
    assert tok.decode(steps) == "It is 5." and steps[-1] == tok.token_id("<|assistant_end|>")
    assert stopped >= 1
