"""Local test fixtures that need no model hub: a tiny random-weight Llama with its own tokenizer."""

from __future__ import annotations

import sysconfig
from pathlib import Path

CHAT_TEMPLATE = (
    "{% for message in messages %}<|{{ message['role'] }}|>\n{{ message['content'] }}</s>\n{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
)


def build_tiny_llama(
    target: str | Path,
    vocab_size: int = 2048,
    seed: int = 0,
    hidden_size: int = 64,
    intermediate_size: int = 128,
    layers: int = 2,
    heads: int = 2,
    dtype: str = "float32",
) -> Path:
    """Write a Llama with random weights (default: 2 layers, head dim 32) and a byte-level BPE
    tokenizer trained on the Python standard library's sources into `target`; return it. About 1 MB,
    1-2 s; `build_random_llama` makes a larger one."""
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    target = Path(target)
    if (target / "config.json").exists() and (target / "tokenizer.json").exists():
        return target
    target.mkdir(parents=True, exist_ok=True)
    sources = sorted(Path(sysconfig.get_paths()["stdlib"]).glob("*.py"))[:200]
    tokenizer = Tokenizer(models.BPE(unk_token=None))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=["<s>", "</s>", "<unk>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tokenizer.train([str(p) for p in sources], trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tokenizer, bos_token="<s>", eos_token="</s>", unk_token="<unk>")
    fast.chat_template = CHAT_TEMPLATE
    fast.save_pretrained(str(target))
    (target / "chat_template.jinja").write_text(CHAT_TEMPLATE)
    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=len(fast),
        hidden_size=hidden_size,
        intermediate_size=intermediate_size,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=heads,
        max_position_embeddings=512,
        bos_token_id=fast.bos_token_id,
        eos_token_id=fast.eos_token_id,
        tie_word_embeddings=False,
    )
    model = LlamaForCausalLM(config).to(getattr(torch, dtype))
    model.save_pretrained(str(target), safe_serialization=True, max_shard_size="10GB")
    return target


def build_random_llama(target: str | Path, layers: int = 24, seed: int = 0) -> Path:
    """A Llama large enough that reading its weights shows in a start: hidden size 1024, 16 heads,
    `layers` layers (24: about 310 M parameters, 0.62 GB of bfloat16 safetensors)."""
    return build_tiny_llama(
        target, seed=seed, hidden_size=1024, intermediate_size=2816, layers=layers, heads=16, dtype="bfloat16"
    )
