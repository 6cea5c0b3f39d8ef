"""Module 9: supervised fine-tuning (SFT), rebuilt — conversations rendered with our chat tokens,
the loss mask that trains the assistant's tokens only, the batches and the masked loss.

Ours: ``src/llm_foundry/data/chat.py`` (``render_conversation``, ``render_prompt``: the layout and
the mask), ``data/chat_batches.py`` (``target_ids``: targets shifted by one, -100 where no loss is
taken) and ``training/stages.py`` (the ``sft`` stage: the trainer of module 7 on those batches).
The layout, in the special tokens of ``src/llm_foundry/tokenizers/special.py``::

    <|bos|> <|user_start|>question<|user_end|> <|assistant_start|>reply<|assistant_end|> ...

An assistant's content is a string, or a list of parts: ``{"type": "text"}`` (what it writes),
``{"type": "python"}`` (a calculator call, ``<|python_start|>expr<|python_end|>``) and
``{"type": "python_output"}`` (the result, ``<|output_start|>…<|output_end|>``, written by the
engine, not by the model).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from llm_foundry.tokenizers.special import (ASSISTANT_END, ASSISTANT_START, BOS, OUTPUT_END, OUTPUT_START, PAD,
                                            PYTHON_END, PYTHON_START, USER_END, USER_START)


def special_ids(tokenizer) -> dict[str, int]:
    """The ids of the chat tokens, by their names in ``tokenizers/special.py`` (``BOS``, ``USER_START``, …).
    Special tokens are inserted by id — never by encoding their text, so a user who types
    "<|assistant_end|>" gets those characters, not the token."""
    names = {"BOS": BOS, "USER_START": USER_START, "USER_END": USER_END, "ASSISTANT_START": ASSISTANT_START,
             "ASSISTANT_END": ASSISTANT_END, "PYTHON_START": PYTHON_START, "PYTHON_END": PYTHON_END,
             "OUTPUT_START": OUTPUT_START, "OUTPUT_END": OUTPUT_END, "PAD": PAD}
    return {name: tokenizer.token_id(tok) for name, tok in names.items()}


def render_conversation(tokenizer, messages: list[dict]) -> tuple[list[int], list[int]]:
    """The token ids of a conversation and its loss mask: 1 exactly on the tokens the assistant
    writes — its text, its python calls (markers included) and its ``<|assistant_end|>`` — and 0 on
    ``<|bos|>``, the user's turns, ``<|assistant_start|>`` and the tool outputs.

    A system message (first, optional) is merged into the first user message: its text, a blank
    line (``"\\n\\n"``), then the user's text.
    """
    # BEGIN SOLUTION render
    # STUB: sp = special_ids(tokenizer)
    # STUB: # start with <|bos|> (mask 0); merge a system message into the first user turn; then per message:
    # STUB: # user: <|user_start|> text <|user_end|>, all 0; assistant: <|assistant_start|> (0), then each part
    # STUB: # (text: 1; python: <|python_start|> expr <|python_end|>, 1; python_output: <|output_start|> … <|output_end|>, 0)
    # STUB: # and <|assistant_end|> (1)
    # STUB: raise NotImplementedError("render")
    sp = special_ids(tokenizer)
    ids, mask = [sp["BOS"]], [0]

    def add(tokens: list[int], m: int) -> None:
        ids.extend(tokens)
        mask.extend([m] * len(tokens))

    if messages and messages[0]["role"] == "system":  # nanochat's layout: the system text opens the first user turn
        system, messages = messages[0]["content"], [dict(m) for m in messages[1:]]
        if messages and system:
            messages[0]["content"] = f"{system}\n\n{messages[0]['content']}"
    for msg in messages:
        if msg["role"] == "user":
            add([sp["USER_START"], *tokenizer.encode(msg["content"]), sp["USER_END"]], 0)
            continue
        add([sp["ASSISTANT_START"]], 0)  # the prompt ends with it: the engine writes it, not the model
        content = msg["content"]
        parts = [{"type": "text", "text": content}] if isinstance(content, str) else content
        for part in parts:
            text = tokenizer.encode(part["text"])
            if part["type"] == "text":
                add(text, 1)
            elif part["type"] == "python":
                add([sp["PYTHON_START"], *text, sp["PYTHON_END"]], 1)
            else:  # the tool's result: the engine writes it; a model trained on it learns to invent results
                add([sp["OUTPUT_START"], *text, sp["OUTPUT_END"]], 0)
        add([sp["ASSISTANT_END"]], 1)  # learned: it is how the model says it is done
    return ids, mask
    # END SOLUTION


def render_prompt(tokenizer, messages: list[dict]) -> list[int]:
    """The conversation so far, then ``<|assistant_start|>``: what a model completes to answer. A last
    assistant message (say, the reference reply of an example) is left out."""
    # BEGIN SOLUTION prompt
    if messages and messages[-1]["role"] == "assistant":
        messages = messages[:-1]
    ids, _ = render_conversation(tokenizer, messages)
    return ids + [special_ids(tokenizer)["ASSISTANT_START"]]
    # END SOLUTION


def sft_batch(tokenizer, conversations: list[list[dict]], seq_len: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One batch, one conversation per row: inputs ``x``, next-token targets ``y`` and the loss mask
    of each target, each ``(len(conversations), seq_len)``. A conversation longer than ``seq_len + 1``
    tokens is cut; a shorter one is padded with ``<|pad|>`` (inputs and targets) and mask 0."""
    # BEGIN SOLUTION batch
    # STUB: # per conversation: render it, cut to seq_len + 1 tokens; x = ids[:-1], y = ids[1:] and the mask of each
    # STUB: # TARGET; pad the three to seq_len (pad id, pad id, 0); stack the rows into long tensors
    # STUB: raise NotImplementedError("batch")
    pad = special_ids(tokenizer)["PAD"]
    xs, ys, ms = [], [], []
    for messages in conversations:
        ids, mask = render_conversation(tokenizer, messages)
        ids, mask = ids[:seq_len + 1], mask[:seq_len + 1]
        # the target of position t is token t + 1, so its mask is that of token t + 1
        x, y, m = ids[:-1], ids[1:], mask[1:]
        fill = seq_len - len(x)
        xs.append(x + [pad] * fill)
        ys.append(y + [pad] * fill)
        ms.append(m + [0] * fill)
    return torch.tensor(xs), torch.tensor(ys), torch.tensor(ms)
    # END SOLUTION


def sft_loss(logits: torch.Tensor, targets: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """The mean cross-entropy over the positions where ``mask`` is 1 — every assistant token weighs
    the same, however many user tokens surround it. ``logits`` ``(batch, time, vocab)``, ``targets``
    and ``mask`` ``(batch, time)``."""
    # BEGIN SOLUTION loss
    # STUB: # per-position cross-entropy (reduction="none"), then the mean over the masked positions only
    # STUB: raise NotImplementedError("loss")
    losses = F.cross_entropy(logits.flatten(0, -2).float(), targets.flatten(), reduction="none")
    m = mask.flatten().to(losses.dtype)
    return (losses * m).sum() / m.sum().clamp(min=1)  # a batch with nothing to learn gives 0, not nan
    # END SOLUTION


def masked_targets(targets: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """The targets as our ``data/chat_batches.py`` keeps them: -100 where ``mask`` is 0, which every
    ``F.cross_entropy(..., ignore_index=-100)`` (your model's own loss) skips — so
    ``model(x, masked_targets(y, m))[1]`` equals ``sft_loss(model(x)[0], y, m)``."""
    return targets.masked_fill(mask == 0, -100)
