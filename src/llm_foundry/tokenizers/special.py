"""Names of the special tokens every tokenizer can reserve, and which of them end a reply.

The chat tokens follow the conversation layout of the chat pipeline: a document
starts with BOS, each turn is wrapped in start/end markers, and tool calls and
their results have their own blocks so the engine can recognise them. Code that
needs one of these tokens imports its name from here (and asks the tokenizer for
its id: ``tokenizer.token_id(ASSISTANT_END)``); nothing spells the strings itself.
"""

PAD = "<|pad|>"
UNK = "<|unk|>"
BOS = "<|bos|>"
EOS = "<|eos|>"

USER_START = "<|user_start|>"
USER_END = "<|user_end|>"
ASSISTANT_START = "<|assistant_start|>"
ASSISTANT_END = "<|assistant_end|>"
PYTHON_START = "<|python_start|>"    # the assistant calls the calculator: <|python_start|>expr<|python_end|>
PYTHON_END = "<|python_end|>"
OUTPUT_START = "<|output_start|>"    # the tool's answer, written by the engine: <|output_start|>result<|output_end|>
OUTPUT_END = "<|output_end|>"

CHAT_SPECIAL_TOKENS = [USER_START, USER_END, ASSISTANT_START, ASSISTANT_END,
                       PYTHON_START, PYTHON_END, OUTPUT_START, OUTPUT_END]

# Byte and BPE tokenizers reserve these (pad first, so id 0 is padding).
DEFAULT_SPECIAL_TOKENS = [PAD, BOS, EOS, *CHAT_SPECIAL_TOKENS]

# The terminator set: a chat reply ends at the assistant's end marker, at the start of a new
# document, or when the model starts writing the user's next turn itself. The ending token is
# not part of the reply.
CHAT_TERMINATORS = (ASSISTANT_END, BOS, EOS, USER_START)

# Plain text (``foundry generate``, an Engine in text mode) ends at the end of its document, or
# where a new one would begin (where BOS is not masked out of sampling). The server's chat engine
# ends ``/v1/completions`` at the chat terminators too: its model writes chat turns.
TEXT_TERMINATORS = (EOS, BOS)

# Never sampled: they decode to nothing useful. Plain text also never samples BOS (a
# continuation does not start a new document); a chat reply ends there instead.
NEVER_SAMPLED = (PAD, UNK)


def token_ids(tokenizer, names) -> set[int]:
    """The ids of those of ``names`` that ``tokenizer`` has (a char tokenizer lacks most)."""
    return {i for name in names if (i := tokenizer.token_id(name)) is not None}


def document_start(tokenizer) -> list[int]:
    """What an empty prompt becomes, so the model has a position to continue from: BOS where the
    tokenizer has one, else a line break (empty if the tokenizer has neither)."""
    bos = tokenizer.token_id(BOS)
    return [bos] if bos is not None else tokenizer.encode("\n")
