"""A GGUF file's GPT-2-style BPE tokenizer (``tokenizer.ggml.model = "gpt2"``) rebuilt with
the ``tokenizers`` library so that text splits exactly as llama.cpp splits it.

llama.cpp picks its pre-tokenizer regexes by ``tokenizer.ggml.pre``; the same regexes run here
in sequence (each match isolated, the text between matches kept), then the byte-level mapping
and the file's merges. Tokens of type CONTROL become special tokens (matched whole in text, as
llama.cpp does when parsing specials), USER_DEFINED ones added tokens; UNUSED ones (padding)
are left out, so they decode to nothing, as in llama.cpp.
"""

from __future__ import annotations

from local_engine.errors import ModelError

_GPT2 = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)"
_LLAMA3 = (r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
           r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")
_QWEN2 = (r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}"
          r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)")
# (code points that Unicode normalization would fold -- U+1F7D, U+1FD3, U+1FDB, U+212A, U+2126,
# U+1FBE -- are written as escapes, so the ranges stay the ones llama.cpp has)
_DEEPSEEK_LLM = [
    "[\r\n]",
    "\\s?[A-Za-zµÀ-ÖØ-öø-ƺƼ-ƿǄ-ʓʕ-ʯͰ-ͳͶͷͻ-ͽͿΆΈ-ΊΌΎ-ΡΣ-ϵϷ-ҁҊ-ԯԱ-ՖႠ-ჅᎠ-Ᏽᏸ-ᏽᲐ-ᲺᲽ-Ჿᴀ-ᴫᵫ-ᵷᵹ-ᶚḀ-ἕἘ-Ἕἠ-ὅὈ-Ὅὐ-ὗὙὛὝὟ-\u1f7dᾀ-ᾴᾶ-ᾼ\u1fbeῂ-ῄῆ-ῌῐ-\u1fd3ῖ-\u1fdbῠ-Ῥῲ-ῴῶ-ῼℂℇℊ-ℓℕℙ-ℝℤ\u2126ℨ\u212a-ℭℯ-ℴℹℼ-ℿⅅ-ⅉⅎↃↄⰀ-ⱻⱾ-ⳤⳫ-ⳮⳲⳳꙀ-ꙭꚀ-ꚛꜢ-ꝯꝱ-ꞇꞋ-ꞎꭰ-ꮿﬀ-ﬆﬓ-ﬗＡ-Ｚａ-ｚ\U00010400-\U0001044f𐒰-𐓓𐓘-𐓻𐲀-𐲲𐳀-𐳲𑢠-𑣟𞤀-𞥃]+",
    "\\s?[!-/:-~！-／：-～‘-‟　-。]+",
    "\\s+$",
    "[一-龥ࠀ-一가-퟿]+",
    "\\p{N}+",
]
_DEEPSEEK_V3 = [
    r"\p{N}{1,3}",
    "[一-龥぀-ゟ゠-ヿ]+",
    "[!\"#$%&'()*+,\\-./:;<=>?@\\[\\\\\\]^_`{|}~][A-Za-z]+|[^\r\n\\p{L}\\p{P}\\p{S}]?[\\p{L}\\p{M}]+"
    "| ?[\\p{P}\\p{S}]+[\r\n]*|\\s*[\r\n]+|\\s+(?!\\S)|\\s+",
]
_DEEPSEEK_CODER = ["[\r\n]", r"\s?\p{L}+", r"\s?\p{P}+", "[一-龥ࠀ-一가-퟿]+", r"\p{N}"]

# tokenizer.ggml.pre -> (regexes, ignore_merges) as llama.cpp's llama-vocab.cpp has them
PRE = {
    "gpt-2": ([_GPT2], False), "gpt2": ([_GPT2], False),
    "deepseek-llm": (_DEEPSEEK_LLM, False),
    "deepseek-coder": (_DEEPSEEK_CODER, False),
    "deepseek-v3": (_DEEPSEEK_V3, False),
    "llama3": ([_LLAMA3], True), "llama-v3": ([_LLAMA3], True), "llama-bpe": ([_LLAMA3], True),
    "qwen2": ([_QWEN2], False),
}
CONTROL, USER_DEFINED, UNUSED = 3, 4, 5


def build_bpe(meta: dict, source):
    """(tokenizers.Tokenizer, bos token text, eos token text) from GGUF metadata."""
    from tokenizers import AddedToken, Regex, decoders, models, pre_tokenizers
    from tokenizers import Tokenizer as HFTokenizer

    kind = meta.get("tokenizer.ggml.model")
    if kind != "gpt2":
        raise ModelError(f"{source}: tokenizer.ggml.model {kind!r} is not supported (gpt2: byte-level BPE)")
    pre = meta.get("tokenizer.ggml.pre", "default")
    if pre not in PRE:
        raise ModelError(f"{source}: tokenizer.ggml.pre {pre!r} is not supported ({', '.join(sorted(PRE))})")
    tokens = meta.get("tokenizer.ggml.tokens")
    merges = meta.get("tokenizer.ggml.merges") or []
    if not isinstance(tokens, list) or not tokens:
        raise ModelError(f"{source}: tokenizer.ggml.tokens is missing")
    if not all(isinstance(t, str) for t in tokens):
        raise ModelError(f"{source}: tokenizer.ggml.tokens is not an array of strings")
    types = meta.get("tokenizer.ggml.token_type") or [1] * len(tokens)
    if not isinstance(types, list) or len(types) != len(tokens) or \
            not all(isinstance(k, int) and not isinstance(k, bool) for k in types):
        raise ModelError(f"{source}: tokenizer.ggml.token_type is not {len(tokens)} integers, one per token")
    if not isinstance(merges, list) or not all(isinstance(m, str) for m in merges):
        raise ModelError(f"{source}: tokenizer.ggml.merges is not an array of strings")
    template = meta.get("tokenizer.chat_template")
    if template is not None and not isinstance(template, str):
        raise ModelError(f"{source}: tokenizer.chat_template is not a string")
    regexes, ignore_merges = PRE[pre]
    vocab: dict[str, int] = {}
    for i, (t, k) in enumerate(zip(tokens, types)):
        if k != UNUSED:   # padding ([PADn]): never produced, and llama.cpp prints nothing for it
            vocab.setdefault(t, i)
    pairs = []
    for m in merges:
        a, sep, b = m.partition(" ")
        if not sep:
            raise ModelError(f"{source}: tokenizer.ggml.merges entry {m!r} is not 'a b'")
        pairs.append((a, b))
    try:
        tok = HFTokenizer(models.BPE(vocab=vocab, merges=pairs, ignore_merges=ignore_merges))
    except Exception as e:
        raise ModelError(f"{source}: the tokenizer does not build ({' '.join(str(e).split())})") from None
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.Split(Regex(r), behavior="isolated") for r in regexes]
        + [pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    tok.decoder = decoders.ByteLevel()
    special = [AddedToken(t, special=True, normalized=False) for t, k in zip(tokens, types) if k == CONTROL]
    user = [AddedToken(t, special=False, normalized=False) for t, k in zip(tokens, types) if k == USER_DEFINED]
    if special:
        tok.add_special_tokens(special)
    if user:
        tok.add_tokens(user)

    def text(key):
        i = meta.get(key)
        return tokens[i] if isinstance(i, int) and 0 <= i < len(tokens) else None

    return tok, text("tokenizer.ggml.bos_token_id"), text("tokenizer.ggml.eos_token_id")
