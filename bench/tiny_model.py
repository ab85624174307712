"""A tiny Llama with its own BPE tokenizer and chat template, built locally.

The model has random weights, so its text is noise, but everything a server
relies on is real: the chat template, the tokenizer, vLLM's scheduler, prefix
cache, sampling and detokenizer. Nothing is downloaded, so tests and benchmarks
can serve it on a machine without access to a model hub.

``build_tiny_llama(path)`` writes config, weights and tokenizer into ``path``;
the result loads with ``transformers`` and with vLLM (``--model path``).
transformers, tokenizers and torch are imported only when building.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerFast

# The model's context length (max_position_embeddings).
MAX_POSITIONS = 512
BOS_ID = 1
EOS_ID = 2

_SENTENCES = [
    "The quick brown fox jumps over the lazy dog.",
    "Hello, how are you today? I am fine, thank you very much!",
    "Streams of tokens flow through the gateway to every tenant.",
    "Numbers: 0 1 2 3 4 5 6 7 8 9 and letters a b c d e f g.",
]
# Trained in this order, so <s> is id 1 and </s> is id 2 (BOS_ID, EOS_ID).
_SPECIAL = ["<unk>", "<s>", "</s>", "<|system|>", "<|user|>", "<|assistant|>", "<|end|>"]
# Roles wrap each message; tools, when given, are listed in a system turn first.
# An assistant's tool calls follow its text in the Hermes format, and a tool
# result names the call it answers, so a tool round trip shows in the prompt.
CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{% if tools %}<|system|>tools:{% for tool in tools %} {{ tool['function']['name'] }}{% endfor %}<|end|>{% endif %}"
    "{% for message in messages %}<|{{ message['role'] }}|>"
    "{% if message['tool_call_id'] is defined %}[{{ message['tool_call_id'] }}] {% endif %}"
    "{% if message['content'] is not none %}{{ message['content'] }}{% endif %}"
    "{% for call in message['tool_calls'] or [] %}<tool_call>"
    "{{ {'name': call['function']['name'], 'arguments': call['function']['arguments']} | tojson }}</tool_call>"
    "{% endfor %}<|end|>{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)


def build_tokenizer(path: Path) -> PreTrainedTokenizerFast:
    """Train a byte-level BPE tokenizer on a few sentences and save it in ``path``."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    bpe = Tokenizer(models.BPE(unk_token="<unk>"))
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=400, special_tokens=_SPECIAL, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    bpe.train_from_iterator(_SENTENCES * 4, trainer)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=bpe, unk_token="<unk>", bos_token="<s>", eos_token="</s>", pad_token="</s>"
    )
    tokenizer.chat_template = CHAT_TEMPLATE
    tokenizer.save_pretrained(path)
    return tokenizer


def build_model(path: Path, vocab_size: int) -> None:
    """Save a two-layer Llama with seeded random weights in ``path``."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    # head_dim 64: vLLM's CPU attention kernels do not take smaller heads.
    config = LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=128,
        intermediate_size=256,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=2,
        head_dim=64,
        max_position_embeddings=MAX_POSITIONS,
        bos_token_id=BOS_ID,
        eos_token_id=EOS_ID,
        pad_token_id=EOS_ID,
        tie_word_embeddings=False,
    )
    torch.manual_seed(0)
    model = LlamaForCausalLM(config)
    with torch.no_grad():
        # Wide logit gaps keep greedy decoding stable across batch shapes and
        # prefix-cache hits; a damped EOS row keeps answers from ending at once.
        model.lm_head.weight.normal_(0.0, 1.0)
        model.lm_head.weight[EOS_ID].mul_(0.1)
    model.save_pretrained(path)


def build_tiny_llama(path: Path) -> Path:
    """Write the tokenizer and the model into ``path`` (created if missing); return it."""
    path.mkdir(parents=True, exist_ok=True)
    tokenizer = build_tokenizer(path)
    build_model(path, vocab_size=len(tokenizer))
    return path
