"""Names of the special tokens every tokenizer can reserve.

The chat tokens follow the conversation layout of the chat pipeline: a document
starts with BOS, each turn is wrapped in start/end markers, and tool calls and
their results have their own blocks so the engine can recognise them.
"""

PAD = "<|pad|>"
UNK = "<|unk|>"
BOS = "<|bos|>"
EOS = "<|eos|>"

CHAT_SPECIAL_TOKENS = [
    "<|user_start|>",
    "<|user_end|>",
    "<|assistant_start|>",
    "<|assistant_end|>",
    "<|python_start|>",
    "<|python_end|>",
    "<|output_start|>",
    "<|output_end|>",
]

# Byte and BPE tokenizers reserve these (pad first, so id 0 is padding).
DEFAULT_SPECIAL_TOKENS = [PAD, BOS, EOS, *CHAT_SPECIAL_TOKENS]
