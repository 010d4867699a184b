"""Our tokenizer and chat-template rendering against transformers (the oracle), case by case, on
tiny checkpoints whose tokenizer_config.json carries the chat templates DeepSeek ships.

The templates are the published texts (tokenizer_config.json of DeepSeek-V3, DeepSeek-R1 before
and after its 2025-02 update, DeepSeek-V2-Lite-Chat and DeepSeek-V3.1), written here as Jinja
source: ``\\n`` inside a Jinja string literal is Jinja's escape, as in the JSON files.

Each checkpoint's tokenizer is shaped like DeepSeek's: byte-level BPE, BOS/EOS/pad as special
tokens, the role and think tags as added (non-special) tokens, and a post-processor that adds BOS,
so a second BOS would show. Nothing is downloaded.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from local_engine.errors import ModelError
from local_engine.tokenizer import Tokenizer
from tests.tiny_checkpoints import ASSISTANT, BOS, CORPUS, EOS, USER

PAD = "<｜▁pad▁｜>"
ADDED = [USER, ASSISTANT, "<think>", "</think>", "<｜tool▁calls▁begin｜>", "<｜tool▁calls▁end｜>",
         "<｜tool▁call▁begin｜>", "<｜tool▁call▁end｜>", "<｜tool▁sep｜>", "<｜tool▁outputs▁begin｜>",
         "<｜tool▁outputs▁end｜>", "<｜tool▁output▁begin｜>", "<｜tool▁output▁end｜>"]

# DeepSeek-V3 (and V3-0324): tokenizer_config.json "chat_template".
V3 = (
    "{% if not add_generation_prompt is defined %}{% set add_generation_prompt = false %}{% endif %}"
    "{% set ns = namespace(is_first=false, is_tool=false, is_output_first=true, system_prompt='', is_first_sp=true) %}"
    "{%- for message in messages %}{%- if message['role'] == 'system' %}{%- if ns.is_first_sp %}"
    "{% set ns.system_prompt = ns.system_prompt + message['content'] %}{% set ns.is_first_sp = false %}"
    "{%- else %}{% set ns.system_prompt = ns.system_prompt + '\\n\\n' + message['content'] %}{%- endif %}"
    "{%- endif %}{%- endfor %}{{bos_token}}{{ns.system_prompt}}{%- for message in messages %}"
    "{%- if message['role'] == 'user' %}{%- set ns.is_tool = false -%}{{'<｜User｜>' + message['content']}}{%- endif %}"
    "{%- if message['role'] == 'assistant' and message['content'] is none %}{%- set ns.is_tool = false -%}"
    "{%- for tool in message['tool_calls']%}{%- if not ns.is_first %}"
    "{{'<｜Assistant｜><｜tool▁calls▁begin｜><｜tool▁call▁begin｜>' + tool['type'] + '<｜tool▁sep｜>' + tool['function']['name'] + '\\n' + '```json' + '\\n' + tool['function']['arguments'] + '\\n' + '```' + '<｜tool▁call▁end｜>'}}"
    "{%- set ns.is_first = true -%}{%- else %}"
    "{{'\\n' + '<｜tool▁call▁begin｜>' + tool['type'] + '<｜tool▁sep｜>' + tool['function']['name'] + '\\n' + '```json' + '\\n' + tool['function']['arguments'] + '\\n' + '```' + '<｜tool▁call▁end｜>'}}"
    "{{'<｜tool▁calls▁end｜><｜end▁of▁sentence｜>'}}{%- endif %}{%- endfor %}{%- endif %}"
    "{%- if message['role'] == 'assistant' and message['content'] is not none %}{%- if ns.is_tool %}"
    "{{'<｜tool▁outputs▁end｜>' + message['content'] + '<｜end▁of▁sentence｜>'}}{%- set ns.is_tool = false -%}"
    "{%- else %}{{'<｜Assistant｜>' + message['content'] + '<｜end▁of▁sentence｜>'}}{%- endif %}{%- endif %}"
    "{%- if message['role'] == 'tool' %}{%- set ns.is_tool = true -%}{%- if ns.is_output_first %}"
    "{{'<｜tool▁outputs▁begin｜><｜tool▁output▁begin｜>' + message['content'] + '<｜tool▁output▁end｜>'}}"
    "{%- set ns.is_output_first = false %}{%- else %}"
    "{{'\\n<｜tool▁output▁begin｜>' + message['content'] + '<｜tool▁output▁end｜>'}}{%- endif %}{%- endif %}"
    "{%- endfor -%}{% if ns.is_tool %}{{'<｜tool▁outputs▁end｜>'}}{% endif %}"
    "{% if add_generation_prompt and not ns.is_tool %}{{'<｜Assistant｜>'}}{% endif %}"
)

# DeepSeek-R1 (after its 2025-02 update): earlier answers lose their reasoning, the generation
# prompt opens "<think>\n".
R1 = (
    "{% if not add_generation_prompt is defined %}{% set add_generation_prompt = false %}{% endif %}"
    "{% set ns = namespace(is_first=false, is_tool=false, is_output_first=true, system_prompt='', is_first_sp=true) %}"
    "{%- for message in messages %}{%- if message['role'] == 'system' %}{%- if ns.is_first_sp %}"
    "{% set ns.system_prompt = ns.system_prompt + message['content'] %}{% set ns.is_first_sp = false %}"
    "{%- else %}{% set ns.system_prompt = ns.system_prompt + '\\n\\n' + message['content'] %}{%- endif %}"
    "{%- endif %}{%- endfor %}{{ bos_token }}{{ ns.system_prompt }}{%- for message in messages %}"
    "{%- if message['role'] == 'user' %}{%- set ns.is_tool = false -%}{{'<｜User｜>' + message['content']}}{%- endif %}"
    "{%- if message['role'] == 'assistant' and 'tool_calls' in message %}{%- set ns.is_tool = false -%}"
    "{%- for tool in message['tool_calls'] %}{%- if not ns.is_first %}{%- if message['content'] is none %}"
    "{{'<｜Assistant｜><｜tool▁calls▁begin｜><｜tool▁call▁begin｜>' + tool['type'] + '<｜tool▁sep｜>' + tool['function']['name'] + '\\n' + '```json' + '\\n' + tool['function']['arguments'] + '\\n' + '```' + '<｜tool▁call▁end｜>'}}"
    "{%- else %}"
    "{{'<｜Assistant｜>' + message['content'] + '<｜tool▁calls▁begin｜><｜tool▁call▁begin｜>' + tool['type'] + '<｜tool▁sep｜>' + tool['function']['name'] + '\\n' + '```json' + '\\n' + tool['function']['arguments'] + '\\n' + '```' + '<｜tool▁call▁end｜>'}}"
    "{%- endif %}{%- set ns.is_first = true -%}{%- else %}"
    "{{'\\n' + '<｜tool▁call▁begin｜>' + tool['type'] + '<｜tool▁sep｜>' + tool['function']['name'] + '\\n' + '```json' + '\\n' + tool['function']['arguments'] + '\\n' + '```' + '<｜tool▁call▁end｜>'}}"
    "{%- endif %}{%- endfor %}{{'<｜tool▁calls▁end｜><｜end▁of▁sentence｜>'}}{%- endif %}"
    "{%- if message['role'] == 'assistant' and 'tool_calls' not in message %}{%- if ns.is_tool %}"
    "{{'<｜tool▁outputs▁end｜>' + message['content'] + '<｜end▁of▁sentence｜>'}}{%- set ns.is_tool = false -%}"
    "{%- else %}{% set content = message['content'] %}{% if '</think>' in content %}"
    "{% set content = content.split('</think>')[-1] %}{% endif %}"
    "{{'<｜Assistant｜>' + content + '<｜end▁of▁sentence｜>'}}{%- endif %}{%- endif %}"
    "{%- if message['role'] == 'tool' %}{%- set ns.is_tool = true -%}{%- if ns.is_output_first %}"
    "{{'<｜tool▁outputs▁begin｜><｜tool▁output▁begin｜>' + message['content'] + '<｜tool▁output▁end｜>'}}"
    "{%- set ns.is_output_first = false %}{%- else %}"
    "{{'<｜tool▁output▁begin｜>' + message['content'] + '<｜tool▁output▁end｜>'}}{%- endif %}{%- endif %}"
    "{%- endfor -%}{% if ns.is_tool %}{{'<｜tool▁outputs▁end｜>'}}{% endif %}"
    "{% if add_generation_prompt and not ns.is_tool %}{{'<｜Assistant｜><think>\\n'}}{% endif %}"
)

# DeepSeek-R1 as first released (2025-01): the last system message wins, and the generation
# prompt ends at the Assistant tag (the engine opens "<think>\n" itself, see below).
R1_OLD = (
    "{% if not add_generation_prompt is defined %}{% set add_generation_prompt = false %}{% endif %}"
    "{% set ns = namespace(is_first=false, is_tool=false, is_output_first=true, system_prompt='') %}"
    "{%- for message in messages %}{%- if message['role'] == 'system' %}{% set ns.system_prompt = message['content'] %}"
    "{%- endif %}{%- endfor %}{{bos_token}}{{ns.system_prompt}}{%- for message in messages %}"
    "{%- if message['role'] == 'user' %}{%- set ns.is_tool = false -%}{{'<｜User｜>' + message['content']}}{%- endif %}"
    "{%- if message['role'] == 'assistant' and message['content'] is none %}{%- set ns.is_tool = false -%}"
    "{%- for tool in message['tool_calls']%}{%- if not ns.is_first %}"
    "{{'<｜Assistant｜><｜tool▁calls▁begin｜><｜tool▁call▁begin｜>' + tool['type'] + '<｜tool▁sep｜>' + tool['function']['name'] + '\\n' + '```json' + '\\n' + tool['function']['arguments'] + '\\n' + '```' + '<｜tool▁call▁end｜>'}}"
    "{%- set ns.is_first = true -%}{%- else %}"
    "{{'\\n' + '<｜tool▁call▁begin｜>' + tool['type'] + '<｜tool▁sep｜>' + tool['function']['name'] + '\\n' + '```json' + '\\n' + tool['function']['arguments'] + '\\n' + '```' + '<｜tool▁call▁end｜>'}}"
    "{{'<｜tool▁calls▁end｜><｜end▁of▁sentence｜>'}}{%- endif %}{%- endfor %}{%- endif %}"
    "{%- if message['role'] == 'assistant' and message['content'] is not none %}{%- if ns.is_tool %}"
    "{{'<｜tool▁outputs▁end｜>' + message['content'] + '<｜end▁of▁sentence｜>'}}{%- set ns.is_tool = false -%}"
    "{%- else %}{% set content = message['content'] %}{% if '</think>' in content %}"
    "{% set content = content.split('</think>')[-1] %}{% endif %}"
    "{{'<｜Assistant｜>' + content + '<｜end▁of▁sentence｜>'}}{%- endif %}{%- endif %}"
    "{%- if message['role'] == 'tool' %}{%- set ns.is_tool = true -%}{%- if ns.is_output_first %}"
    "{{'<｜tool▁outputs▁begin｜><｜tool▁output▁begin｜>' + message['content'] + '<｜tool▁output▁end｜>'}}"
    "{%- set ns.is_output_first = false %}{%- else %}"
    "{{'\\n<｜tool▁output▁begin｜>' + message['content'] + '<｜tool▁output▁end｜>'}}{%- endif %}{%- endif %}"
    "{%- endfor -%}{% if ns.is_tool %}{{'<｜tool▁outputs▁end｜>'}}{% endif %}"
    "{% if add_generation_prompt and not ns.is_tool %}{{'<｜Assistant｜>'}}{% endif %}"
)

# DeepSeek-V2-Lite-Chat (and V2-Chat).
V2_LITE = (
    "{% if not add_generation_prompt is defined %}{% set add_generation_prompt = false %}{% endif %}"
    "{{ bos_token }}{% for message in messages %}{% if message['role'] == 'user' %}"
    "{{ 'User: ' + message['content'] + '\\n\\n' }}{% elif message['role'] == 'assistant' %}"
    "{{ 'Assistant: ' + message['content'] + eos_token }}{% elif message['role'] == 'system' %}"
    "{{ message['content'] + '\\n\\n' }}{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}{{ 'Assistant:' }}{% endif %}"
)

# DeepSeek-V3.1: hybrid thinking. Without ``thinking`` the generation prompt closes the think
# block ("<｜Assistant｜></think>"): non-thinking mode.
V31 = (
    "{% if not add_generation_prompt is defined %}{% set add_generation_prompt = false %}{% endif %}"
    "{% if not thinking is defined %}{% set thinking = false %}{% endif %}"
    "{% set ns = namespace(is_first=false, is_tool=false, system_prompt='', is_first_sp=true, is_last_user=false) %}"
    "{%- for message in messages %}{%- if message['role'] == 'system' %}{%- if ns.is_first_sp %}"
    "{% set ns.system_prompt = ns.system_prompt + message['content'] %}{% set ns.is_first_sp = false %}"
    "{%- else %}{% set ns.system_prompt = ns.system_prompt + '\\n\\n' + message['content'] %}{%- endif %}"
    "{%- endif %}{%- endfor %}{{ bos_token }}{{ ns.system_prompt }}{%- for message in messages %}"
    "{%- if message['role'] == 'user' %}{%- set ns.is_tool = false -%}{%- set ns.is_first = false -%}"
    "{%- set ns.is_last_user = true -%}{{'<｜User｜>' + message['content']}}{%- endif %}"
    "{%- if message['role'] == 'assistant' and message['tool_calls'] is defined and message['tool_calls'] is not none %}"
    "{%- if ns.is_last_user %}{{'<｜Assistant｜></think>'}}{%- endif %}{%- set ns.is_last_user = false -%}"
    "{%- set ns.is_first = false %}{%- set ns.is_tool = false -%}{%- for tool in message['tool_calls'] %}"
    "{%- if not ns.is_first %}{%- if message['content'] is none %}"
    "{{'<｜tool▁calls▁begin｜><｜tool▁call▁begin｜>'+ tool['function']['name'] + '<｜tool▁sep｜>' + tool['function']['arguments'] + '<｜tool▁call▁end｜>'}}"
    "{%- else %}"
    "{{message['content'] + '<｜tool▁calls▁begin｜><｜tool▁call▁begin｜>' + tool['function']['name'] + '<｜tool▁sep｜>' + tool['function']['arguments'] + '<｜tool▁call▁end｜>'}}"
    "{%- endif %}{%- set ns.is_first = true -%}{%- else %}"
    "{{'<｜tool▁call▁begin｜>'+ tool['function']['name'] + '<｜tool▁sep｜>' + tool['function']['arguments'] + '<｜tool▁call▁end｜>'}}"
    "{%- endif %}{%- endfor %}{{'<｜tool▁calls▁end｜><｜end▁of▁sentence｜>'}}{%- endif %}"
    "{%- if message['role'] == 'assistant' and (message['tool_calls'] is not defined or message['tool_calls'] is none) %}"
    "{%- if ns.is_last_user %}{{'<｜Assistant｜>'}}{%- if message['prefix'] is defined and message['prefix'] and thinking %}"
    "{{'<think>'}}  {%- else %}{{'</think>'}}{%- endif %}{%- endif %}{%- set ns.is_last_user = false -%}"
    "{%- if ns.is_tool %}{{message['content'] + '<｜end▁of▁sentence｜>'}}{%- set ns.is_tool = false -%}"
    "{%- else %}{%- set content = message['content'] -%}{%- if '</think>' in content %}"
    "{%- set content = content.split('</think>', 1)[1] -%}{%- endif %}{{content + '<｜end▁of▁sentence｜>'}}"
    "{%- endif %}{%- endif %}{%- if message['role'] == 'tool' %}{%- set ns.is_last_user = false -%}"
    "{%- set ns.is_tool = true -%}{{'<｜tool▁output▁begin｜>' + message['content'] + '<｜tool▁output▁end｜>'}}"
    "{%- endif %}{%- endfor -%}{%- if add_generation_prompt and ns.is_last_user and not ns.is_tool %}"
    "{{'<｜Assistant｜>'}}{%- if not thinking %}{{'</think>'}}{%- else %}{{'<think>'}}{%- endif %}{% endif %}"
)

TEMPLATES = {"v3": V3, "r1": R1, "r1_old": R1_OLD, "v2_lite": V2_LITE, "v31": V31}

CHINESE = "深度求索发布了推理模型，中文能力更强。你好，世界！"
CONVERSATIONS = {
    "user_only": [{"role": "user", "content": "Hello, how are you?"}],
    "system_and_user": [{"role": "system", "content": "You are a helpful assistant."},
                        {"role": "user", "content": "def main(): return 42"}],
    "two_systems": [{"role": "system", "content": "Be brief."}, {"role": "system", "content": "Answer in code."},
                    {"role": "user", "content": "print the squares"}],
    "multi_turn": [{"role": "system", "content": "You review code."},
                   {"role": "user", "content": "What is 2+2?"},
                   {"role": "assistant", "content": "4"},
                   {"role": "user", "content": "And 3+3?"},
                   {"role": "assistant", "content": "6"},
                   {"role": "user", "content": "Thanks. Now 5+5?"}],
    "assistant_with_thinking": [{"role": "user", "content": "2+2?"},
                                {"role": "assistant", "content": "<think>\nadd two and two\n</think>\n\nThe answer is 4."},
                                {"role": "user", "content": "3+3?"}],
    "empty_contents": [{"role": "system", "content": ""}, {"role": "user", "content": ""},
                       {"role": "assistant", "content": ""}, {"role": "user", "content": "again"}],
    "chinese": [{"role": "system", "content": "你是一个助手。"}, {"role": "user", "content": CHINESE},
                {"role": "assistant", "content": "混合专家模型只激活一部分参数。"}, {"role": "user", "content": "继续"}],
    "special_tokens_typed": [{"role": "user", "content": f"the file says {EOS} then {USER}hi{ASSISTANT} and </think>"}],
    "whitespace_and_code": [{"role": "user", "content": "  leading\n\n\ttabs\nimport torch\nfor i in range(10):\n    print(i)\n  "}],
}

_CORPUS = [*CORPUS[:-1], CORPUS[-1] + " User: Assistant:\n\n"]  # the role words too


def write_deepseek_tokenizer(folder: Path, template: str, **cfg_extra) -> Path:
    """A tokenizer shaped like DeepSeek's (see the module docstring), with ``template``."""
    from tokenizers import AddedToken, Tokenizer as HFTok, decoders, models, pre_tokenizers, processors, trainers

    folder.mkdir(parents=True, exist_ok=True)
    tok = HFTok(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=420, special_tokens=[BOS, EOS, PAD],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(_CORPUS * 4, trainer=trainer)
    tok.add_tokens([AddedToken(t, special=False, normalized=False) for t in ADDED])
    bos_id = tok.token_to_id(BOS)
    tok.post_processor = processors.TemplateProcessing(single=f"{BOS}:0 $A:0", pair=f"{BOS}:0 $A:0 {BOS}:1 $B:1",
                                                       special_tokens=[(BOS, bos_id)])
    tok.save(str(folder / "tokenizer.json"))
    added = lambda s: {"__type": "AddedToken", "content": s, "lstrip": False, "normalized": True,
                       "rstrip": False, "single_word": False}
    cfg = {"add_bos_token": True, "add_eos_token": False, "bos_token": added(BOS), "eos_token": added(EOS),
           "pad_token": added(EOS), "clean_up_tokenization_spaces": False, "legacy": True,
           "model_max_length": 16384, "sp_model_kwargs": {}, "unk_token": None,
           "tokenizer_class": "LlamaTokenizerFast", "chat_template": template, **cfg_extra}
    (folder / "tokenizer_config.json").write_text(json.dumps(cfg, ensure_ascii=False, indent=2), encoding="utf-8")
    return folder


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("templates")
    return {name: write_deepseek_tokenizer(root / name, t) for name, t in TEMPLATES.items()}


@pytest.fixture(scope="module")
def pair(folders):
    from transformers import AutoTokenizer

    cache = {}

    def get(name):
        if name not in cache:
            cache[name] = Tokenizer(folders[name]), AutoTokenizer.from_pretrained(str(folders[name]))
        return cache[name]

    return get


def _hf_text(hf, msgs, gen, **kw):
    return hf.apply_chat_template(msgs, tokenize=False, add_generation_prompt=gen, **kw)


def _hf_ids(hf, msgs, gen, **kw):
    out = hf.apply_chat_template(msgs, tokenize=True, add_generation_prompt=gen, return_dict=False, **kw)
    return list(out["input_ids"] if isinstance(out, dict) or hasattr(out, "keys") else out)


def test_the_tokenizer_is_the_one_transformers_reads(pair):
    ours, hf = pair("v3")
    assert type(hf).__name__ in ("LlamaTokenizerFast", "LlamaTokenizer", "TokenizersBackend", "PreTrainedTokenizerFast")
    assert (ours.bos_token, ours.eos_token) == (hf.bos_token, hf.eos_token) == (BOS, EOS)
    assert (ours.bos_token_id, ours.eos_token_id) == (hf.bos_token_id, hf.eos_token_id)
    assert hf.encode("hi")[0] == hf.bos_token_id  # DeepSeek's tokenizer adds BOS by default ...
    assert ours.encode("hi") == hf.encode("hi", add_special_tokens=False)  # ... ours never does
    assert ours.vocab_size == len(hf)


# The prompts where we deliberately differ from transformers: a template that strips earlier
# reasoning ("</think>" in it) and leaves the generation prompt at the Assistant tag gets "<think>\n"
# appended, as DeepSeek recommends for R1 (pinned by test_engine_generation). Only R1_OLD does that.
def _expected_text(name, hf_text, gen):
    if name == "r1_old" and gen:
        return hf_text + "<think>\n"
    return hf_text


@pytest.mark.parametrize("gen", [True, False], ids=["gen", "nogen"])
@pytest.mark.parametrize("conv", list(CONVERSATIONS))
@pytest.mark.parametrize("name", list(TEMPLATES))
def test_rendering_encoding_and_decoding_match_transformers(pair, name, conv, gen):
    ours, hf = pair(name)
    msgs = CONVERSATIONS[conv]
    want_text = _expected_text(name, _hf_text(hf, msgs, gen), gen)
    text = ours.apply_chat_template(msgs, add_generation_prompt=gen)
    assert text == want_text

    ids = ours.encode(text)
    assert ids == hf.encode(text, add_special_tokens=False)
    if want_text == _hf_text(hf, msgs, gen):
        assert ids == _hf_ids(hf, msgs, gen)  # what transformers feeds the model
    # BOS once: the template writes it, encode adds none (transformers' encode would add a second)
    assert ids.count(ours.bos_token_id) == 1 and ids[0] == ours.bos_token_id
    assert hf.encode(text).count(hf.bos_token_id) == 2  # the trap this avoids
    assert ours.encode(text, add_bos=True) == ids

    for skip in (False, True):
        assert ours.decode(ids, skip_special_tokens=skip) == hf.decode(ids, skip_special_tokens=skip)
    assert ours.decode(ids) == text
    assert BOS not in ours.decode(ids, skip_special_tokens=True)


def test_r1_strips_earlier_reasoning_and_opens_thinking(pair):
    ours, hf = pair("r1")
    msgs = CONVERSATIONS["assistant_with_thinking"]
    text = ours.apply_chat_template(msgs)
    assert text == (f"{BOS}{USER}2+2?{ASSISTANT}\n\nThe answer is 4.{EOS}{USER}3+3?{ASSISTANT}<think>\n")
    assert text == _hf_text(hf, msgs, True)
    assert ours.reasoning


def test_the_first_r1_template_gets_the_think_block_opened_by_us(pair):
    ours, hf = pair("r1_old")
    msgs = CONVERSATIONS["two_systems"]
    assert ours.apply_chat_template(msgs) == f"{BOS}Answer in code.{USER}print the squares{ASSISTANT}<think>\n"
    assert _hf_text(hf, msgs, True) + "<think>\n" == ours.apply_chat_template(msgs)


def test_v31_non_thinking_prompt_is_not_reopened(pair):
    """V3.1's template closes the think block itself ("<｜Assistant｜></think>"): the model is to
    answer without thinking, so nothing may be appended after it."""
    ours, hf = pair("v31")
    msgs = CONVERSATIONS["multi_turn"]
    text = ours.apply_chat_template(msgs)
    assert text.endswith(f"{ASSISTANT}</think>")
    assert text == _hf_text(hf, msgs, True)
    assert ours.encode(text) == _hf_ids(hf, msgs, True)


def test_encoding_the_rendered_text_parses_typed_special_tokens_as_transformers_does(pair):
    """transformers' default (``sanitize_control_tokens=False``) encodes the rendered prompt as a
    whole, so a user who types "<｜end▁of▁sentence｜>" gets the EOS token; ``encode`` of the text
    does the same (``encode_chat``, below, is what the local backend sends)."""
    ours, hf = pair("v3")
    msgs = CONVERSATIONS["special_tokens_typed"]
    ids = ours.encode(ours.apply_chat_template(msgs))
    assert ids == _hf_ids(hf, msgs, True)
    assert ids.count(ours.eos_token_id) == 1  # the typed one
    assert ids.count(ours._tok.token_to_id(USER)) == 2  # the template's and the typed one


def test_raise_exception_reaches_the_caller(tmp_path):
    import jinja2
    from transformers import AutoTokenizer

    template = ("{% if messages[0]['role'] != 'user' %}{{ raise_exception('Conversation must start with a user message') }}"
                "{% endif %}{{ bos_token }}{% for m in messages %}{{ m['content'] }}{% endfor %}")
    folder = write_deepseek_tokenizer(tmp_path / "raise", template)
    ours, hf = Tokenizer(folder), AutoTokenizer.from_pretrained(str(folder))
    bad = [{"role": "assistant", "content": "x"}]
    with pytest.raises(jinja2.exceptions.TemplateError, match="must start with a user"):
        _hf_text(hf, bad, True)
    with pytest.raises(ModelError, match="TemplateError: Conversation must start with a user message"):
        ours.apply_chat_template(bad)
    good = [{"role": "user", "content": "ok"}]
    assert ours.apply_chat_template(good) == _hf_text(hf, good, True) == f"{BOS}ok"


@pytest.mark.parametrize("template", [
    # loop controls (jinja2.ext.loopcontrols, which transformers enables)
    "{{ bos_token }}{% for m in messages %}{% if m['role'] == 'system' %}{% continue %}{% endif %}"
    "{{ m['content'] }}{% if loop.index > 2 %}{% break %}{% endif %}{% endfor %}",
    # tojson with transformers' options
    "{{ bos_token }}{{ messages | tojson(separators=(',', ':'), sort_keys=true) }}{{ messages[0] | tojson(indent=2) }}",
    # a template that reads eos_token and a variable it never gets
    "{{ bos_token }}{% for m in messages %}{{ m['content'] + eos_token }}{% endfor %}{% if tools %}T{% endif %}",
], ids=["loopcontrols", "tojson", "eos_and_undefined"])
def test_template_features_transformers_supports(tmp_path, template):
    from transformers import AutoTokenizer

    folder = write_deepseek_tokenizer(tmp_path / "feat", template)
    ours, hf = Tokenizer(folder), AutoTokenizer.from_pretrained(str(folder))
    msgs = CONVERSATIONS["chinese"]
    assert ours.apply_chat_template(msgs) == _hf_text(hf, msgs, True)


def test_strftime_now_is_available(tmp_path):
    from datetime import datetime

    folder = write_deepseek_tokenizer(tmp_path / "date", "{{ bos_token }}Today is {{ strftime_now('%Y') }}.")
    text = Tokenizer(folder).apply_chat_template([{"role": "user", "content": "x"}])
    assert text in (f"{BOS}Today is {datetime.now().year}.", f"{BOS}Today is {datetime.now().year - 1}.")


def test_the_local_backend_sends_the_answer_without_its_thinking(pair):
    """Duet's ChatMessage keeps an answer's thinking apart; the prompt the backend renders is the
    template applied to role+content only, as transformers renders the same turns."""
    from vocab.messages import ChatMessage, wire_messages

    history = [ChatMessage("system", "You review code."), ChatMessage("user", "2+2?"),
               ChatMessage("assistant", "The answer is 4.", thinking="add two and two"),
               ChatMessage("user", "3+3?")]
    for name in ("r1", "v3", "v2_lite"):
        ours, hf = pair(name)
        prompt = ours.apply_chat_template(wire_messages(history), add_generation_prompt=True)
        plain = [{"role": m.role, "content": m.content} for m in history]
        assert prompt == _hf_text(hf, plain, True)
        assert "add two and two" not in prompt
        assert ours.encode(prompt) == _hf_ids(hf, plain, True)


@pytest.mark.parametrize("conv", list(CONVERSATIONS))
@pytest.mark.parametrize("name", list(TEMPLATES))
def test_encode_chat_keeps_typed_control_tokens_as_text(pair, name, conv):
    """``encode_chat`` (the local backend's prompt ids) is transformers' ``apply_chat_template(
    tokenize=True, sanitize_control_tokens=True)``: control tokens a user (or a file) types are
    text, the ones the template writes are tokens; without typed ones it is ``encode`` of the text."""
    ours, hf = pair(name)
    msgs = CONVERSATIONS[conv]
    ids = ours.encode_chat(msgs)
    want = _hf_ids(hf, msgs, True, sanitize_control_tokens=True)
    if name == "r1_old":  # our "<think>\n" after the Assistant tag (see _expected_text)
        assert ours.decode(ids[len(want):]) == "<think>\n"
        ids = ids[:len(want)]
    assert ids == want
    assert ours.decode(ours.encode_chat(msgs)) == ours.apply_chat_template(msgs)  # same text either way
    if conv != "special_tokens_typed":
        assert ours.encode_chat(msgs) == ours.encode(ours.apply_chat_template(msgs))


def test_typed_eos_and_role_tags_are_text_in_the_backends_ids(pair):
    ours, _ = pair("r1")
    msgs = CONVERSATIONS["special_tokens_typed"]
    ids = ours.encode_chat(msgs)
    eos, user, assistant = (ours._tok.token_to_id(t) for t in (EOS, USER, ASSISTANT))
    assert eos not in ids  # the typed EOS would end the prompt for the model
    assert ids.count(user) == 1 and ids.count(assistant) == 1  # the template's own tags only
    assert ids[:2] == [ours.bos_token_id, user] and ours.decode(ids).endswith(f"{ASSISTANT}<think>\n")
    assert ours.encode(ours.apply_chat_template(msgs)).count(eos) == 1  # the rendered text alone would not tell
