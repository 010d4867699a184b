"""The shared tokenizer: byte-level BPE (GPT-2's pre-tokenizer, so llama.cpp's ``gpt2``
tokenizer splits text the same way) trained with ``tokenizers`` on generated examples."""

from __future__ import annotations

import json
import random
from pathlib import Path

from training.render import BOS, EOS, SPECIAL_TOKENS, coder_example, reasoner_example, sample_module

# R1's template, cut down to user/assistant turns: earlier answers lose their thinking, and the
# generation prompt opens the think block ("<think>\n"), as DeepSeek recommends for R1.
REASONER_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}"
    "{% if message['role'] == 'system' %}{{ message['content'] }}"
    "{% elif message['role'] == 'user' %}{{ '<｜User｜>' + message['content'] }}"
    "{% elif message['role'] == 'assistant' %}{% set content = message['content'] %}"
    "{% if '</think>' in content %}{% set content = content.split('</think>')[-1].lstrip() %}{% endif %}"
    "{{ '<｜Assistant｜>' + content + '<｜end▁of▁sentence｜>' }}{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<｜Assistant｜><think>\\n' }}{% endif %}"
)
CODER_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}"
    "{% if message['role'] == 'system' %}{{ message['content'] }}"
    "{% elif message['role'] == 'user' %}{{ '<｜User｜>' + message['content'] }}"
    "{% elif message['role'] == 'assistant' %}{{ '<｜Assistant｜>' + message['content'] + '<｜end▁of▁sentence｜>' }}"
    "{% endif %}{% endfor %}{% if add_generation_prompt %}{{ '<｜Assistant｜>' }}{% endif %}"
)


def corpus(seed: int, n: int):
    rng = random.Random(seed)
    for i in range(n):
        m = sample_module(rng, "train")
        e = reasoner_example(rng, m) if i % 2 == 0 else coder_example(rng, m)
        yield e.prompt + e.target


def train_tokenizer(seed: int = 1, vocab_size: int = 1024, n_texts: int = 3000):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=SPECIAL_TOKENS,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    texts = [t for t in corpus(seed, n_texts)]
    # specials are added tokens: split out before BPE, never merged
    tok.train_from_iterator(texts, trainer)
    return tok


def save_tokenizer(tok, folder: Path, *, reasoning: bool) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    tok.save(str(folder / "tokenizer.json"))
    cfg = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "bos_token": BOS,
        "eos_token": EOS,
        "pad_token": EOS,
        "add_bos_token": False,
        "add_eos_token": False,
        "model_max_length": 2048,
        "clean_up_tokenization_spaces": False,
        "chat_template": REASONER_TEMPLATE if reasoning else CODER_TEMPLATE,
    }
    (folder / "tokenizer_config.json").write_text(json.dumps(cfg, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
