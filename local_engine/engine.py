"""Engine: load a DeepSeek V3/R1 or V2 folder, run it with a latent MLA cache, generate tokens."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import torch

from kernels import dispatch
from local_engine.config import ModelArgs
from local_engine.constraint import TokenConstraint, pick_allowed
from local_engine.errors import InputError, ModelError
from local_engine.loader import release_free_memory
from local_engine.model import Transformer
from local_engine.speculative import DraftLength, accept_or_resample, draw, sampling_probs
from local_engine.tokenizer import Tokenizer

DTYPES = {"bfloat16": torch.bfloat16, "bf16": torch.bfloat16, "float16": torch.float16,
          "fp16": torch.float16, "float32": torch.float32, "fp32": torch.float32}
QUANT_MARKER = "duet_quant.json"


def _dtype(dtype) -> torch.dtype:
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype not in DTYPES:
        raise ModelError(f"dtype {dtype!r} is not supported ({', '.join(DTYPES)})")
    return DTYPES[dtype]


class Engine:
    def __init__(self, model: Transformer, args: ModelArgs, tokenizer: Tokenizer | None, *,
                 device, dtype: torch.dtype, max_seq_len: int, max_batch: int, path: Path):
        self.model, self.args, self.tokenizer = model, args, tokenizer
        self.device, self.dtype = torch.device(device), dtype
        self.max_seq_len, self.max_batch, self.path = max_seq_len, max_batch, path
        self._held: list[int] = []  # the tokens whose latent-cache rows (batch row 0) are valid, from position 0
        self._mtp_rows = 0  # MTP cache rows 0.._mtp_rows-1 are valid (row p pairs h_p with token p+1)
        self._hidden = _HiddenRows()  # main hidden states the MTP rows have not taken in yet (MTP models)
        self.draft_length = DraftLength()  # adapts the MTP draft length; k_max=0 turns drafting off
        self.last_stats: dict[str, int] = {}

    @classmethod
    def load(cls, path, *, device="cpu", dtype="bfloat16", quant=None, max_seq_len=4096, max_batch=1,
             pack: bool | None = None, progress: Callable[[float], None] | None = None,
             mtp: bool = True) -> "Engine":
        """``pack``: pre-pack dense weights for the device's fast matmul (default: on when it has
        one and the model is not quantized; CPU bf16 today). ``progress(fraction)`` is called as
        layers load (from the loading thread). ``mtp``: also load the checkpoint's MTP module
        (DeepSeek-V3/R1's ``model.layers.{num_hidden_layers}``), which ``speculative="mtp"`` drafts with."""
        folder = Path(path).expanduser()
        try:
            dispatch.plan()  # the kernels are planned from the CPU and the switches (a bad DUET_* stops here)
        except ValueError as exc:
            raise ModelError(str(exc)) from None
        if folder.is_file():  # a GGUF file: its own quantized types, tokenizer and template
            from local_engine.gguf_loader import load_engine

            return load_engine(cls, folder, device=device, dtype=_dtype(dtype), quant=quant,
                               max_seq_len=max_seq_len, max_batch=max_batch, progress=progress)
        if not folder.is_dir():
            raise ModelError(f"{folder}: not a folder (expected an HF model folder with config.json)")
        if quant not in (None, "int8", "int4"):
            raise ModelError(f"quant {quant!r} is not supported (int8 | int4)")
        torch_dtype = _dtype(dtype)
        try:
            dev = torch.device(device)
        except (RuntimeError, TypeError):
            raise ModelError(f"device {device!r} is not a torch device") from None
        if dev.type == "cuda" and not torch.cuda.is_available():
            raise ModelError(f"device {device!r}: no CUDA device is available here")
        args = ModelArgs.from_folder(folder)
        if torch.device(device).type == "cpu":
            # attention probabilities underflow to denormals; on x86 those make bmm/softmax 10x slower
            torch.set_flush_denormal(True)
        tokenizer = Tokenizer(folder) if (folder / "tokenizer.json").is_file() else None
        with torch.no_grad():  # not inference_mode: the weights stay ordinary tensors
            if (folder / QUANT_MARKER).is_file():
                from local_engine.quantize import load_quantized

                model = load_quantized(folder, args, dtype=torch_dtype, device=device,
                                       max_batch=max_batch, max_seq_len=max_seq_len)
            else:
                from local_engine.loader import load_model

                model = load_model(folder, args, dtype=torch_dtype, device=device, max_batch=max_batch,
                                   max_seq_len=max_seq_len, quant=quant, pack=quant is None if pack is None else pack,
                                   progress=progress, mtp=mtp)
            if not mtp:
                model.mtp = type(model.mtp)()
            for layer in list(model.layers) + [m.block for m in model.mtp]:
                layer.attn.fuse_qkv_a_()  # packed weights only; a no-op otherwise
                release_free_memory()
        return cls(model, args, tokenizer, device=device, dtype=torch_dtype, max_seq_len=max_seq_len,
                   max_batch=max_batch, path=folder)

    # -- running -----------------------------------------------------------------------------

    @torch.inference_mode()
    def forward(self, tokens: torch.Tensor, start_pos: int = 0, last_only: bool = False) -> torch.Tensor:
        """tokens [B, T] -> logits [B, T, vocab] (float32; [B, 1, vocab] with ``last_only``: the
        last position's, all a prefill before sampling needs); fills the cache from start_pos.

        What the cache holds is remembered for ``generate``'s prefix reuse: the rows before
        start_pos stay, the rows written here hold ``tokens[0]``."""
        if not isinstance(tokens, torch.Tensor) or tokens.dim() != 2 or 0 in tokens.shape or tokens.is_floating_point():
            raise InputError(f"tokens must be an integer tensor [batch, seq] with at least one token, got "
                             f"{tuple(tokens.shape) if isinstance(tokens, torch.Tensor) else type(tokens).__name__}")
        B, T = tokens.shape
        start_pos = int(start_pos)
        if B > self.max_batch:
            raise InputError(f"batch {B} exceeds max_batch {self.max_batch}")
        if start_pos + T > self.max_seq_len:
            raise InputError(f"{start_pos + T} tokens exceed max_seq_len {self.max_seq_len}")
        if not 0 <= start_pos <= len(self._held):  # rows past what was written would be read as context
            raise InputError(f"start_pos {start_pos}: the cache holds {len(self._held)} tokens "
                             f"(start at most there; reset() empties it)")
        lo, hi = int(tokens.min()), int(tokens.max())
        if lo < 0 or hi >= self.args.vocab_size:
            raise InputError(f"token id {lo if lo < 0 else hi} is outside the vocabulary (0..{self.args.vocab_size - 1})")
        new = tokens[0].tolist()
        contiguous = start_pos <= len(self._held)
        if contiguous:  # rows from the first token that differs on no longer hold what they did
            self._forget_from(start_pos + _common_prefix(self._held[start_pos:], new), keep_rows=start_pos)
        try:
            logits = self.model(tokens.to(self.device), start_pos, last_only)
        except BaseException:
            self._forget_from(min(start_pos, len(self._held)))  # a half-written row holds nothing known
            raise
        if contiguous:  # (the rows from start_pos on were forgotten above)
            self._held.extend(new)
            if self.has_mtp:
                self._hidden.add(start_pos, self.model.last_hidden[0])
        return logits

    def _forget_from(self, pos: int, keep_rows: int | None = None) -> None:
        """Tokens at pos and after may change: MTP rows that pair with them are invalid; the
        main rows from ``keep_rows`` (default pos) on are forgotten."""
        self._mtp_rows = min(self._mtp_rows, max(pos - 1, 0))
        keep = pos if keep_rows is None else min(pos, keep_rows)
        del self._held[keep:]
        self._hidden.trim(keep)

    @torch.no_grad()
    def reset(self) -> None:
        """Forget the context. (Positions are explicit, so this only clears the cache.)"""
        for layer in list(self.model.layers) + [m.block for m in self.model.mtp]:
            layer.attn.cache.zero_()
            if layer.attn.indexer is not None:  # V3.2's key cache
                layer.attn.indexer.cache.zero_()
        self._held, self._mtp_rows = [], 0
        self._hidden = _HiddenRows()

    @property
    def has_mtp(self) -> bool:
        return len(self.model.mtp) > 0

    def cache_bytes_per_token(self) -> int:
        a = self.args
        per_layer = a.kv_lora_rank + a.qk_rope_head_dim + (a.index_head_dim if a.sparse_attention else 0)
        return per_layer * a.num_hidden_layers * self.dtype.itemsize  # V3.2: the indexer's keys too

    def weight_bytes(self) -> int:
        """Bytes of weights held (parameters plus any quantized tensors), cache excluded."""
        seen, total = set(), 0
        for t in list(self.model.parameters()) + [q for m in self.model.modules()
                                                  for q in _tensors(getattr(m, "qweight", None))
                                                  + _tensors(getattr(m, "packed", None))]:
            if id(t) not in seen and not t.is_meta:
                seen.add(id(t))
                total += t.numel() * t.element_size()
        return total

    def generate(self, prompt_ids, *, max_new_tokens: int, temperature: float = 0.6, top_p: float = 0.95,
                 stop_ids=None, seed: int | None = None, speculative: str | None = None,
                 cancel: threading.Event | None = None,
                 constraint: TokenConstraint | None = None) -> Iterator[int]:
        """Yield new token ids (greedy when temperature is 0). Stops after EOS or a stop id,
        which is not yielded; after max_new_tokens; at max_seq_len; or when ``cancel`` is set.

        Only the tokens past the longest prefix shared with what the cache holds (the previous
        call's prompt and the tokens it fed back) are prefilled. ``speculative="mtp"`` drafts
        with the checkpoint's MTP module and verifies the drafts in one forward: greedy output is
        the plain greedy output, sampled output has the plain sampling distribution.
        ``constraint`` (local_engine.constraint) holds each token to a rule; greedy, drafts are
        checked against the rule's picks (the output is the plain constrained greedy output);
        sampled, it decodes without drafts.
        ``last_stats`` tells prompt_tokens, cached_tokens, generated, drafted, accepted.
        A ``seed`` reproduces sampled output (with ``speculative="mtp"`` too: its draft lengths
        then follow acceptance alone, from a fresh start, not timing or earlier calls)."""
        if isinstance(prompt_ids, torch.Tensor):
            if prompt_ids.dim() > 2 or prompt_ids.dim() == 2 and prompt_ids.shape[0] != 1:
                raise InputError(f"prompt_ids: one sequence expected, got shape {tuple(prompt_ids.shape)}")
            prompt_ids = prompt_ids.reshape(-1).tolist()
        ids = [int(i) for i in prompt_ids]
        if not ids:
            raise InputError("empty prompt")
        if min(ids) < 0 or max(ids) >= self.args.vocab_size:
            raise InputError(f"prompt token id {min(ids) if min(ids) < 0 else max(ids)} is outside the "
                             f"vocabulary (0..{self.args.vocab_size - 1})")
        if len(ids) >= self.max_seq_len:
            raise InputError(f"prompt of {len(ids)} tokens does not fit max_seq_len {self.max_seq_len}")
        if speculative not in (None, "mtp"):
            raise InputError(f"speculative={speculative!r} is not supported (None or 'mtp')")
        if speculative == "mtp" and not self.has_mtp:
            raise ModelError(f"{self.path}: speculative='mtp' needs the checkpoint's MTP module "
                             f"(model.layers.{self.args.num_hidden_layers}.*: enorm, hnorm, eh_proj, shared_head, "
                             f"a block) and this checkpoint has none")
        if isinstance(stop_ids, torch.Tensor):
            stop_ids = stop_ids.reshape(-1).tolist()
        elif isinstance(stop_ids, int):
            stop_ids = [stop_ids]
        stops = {int(i) for i in (stop_ids if stop_ids is not None else ())} | set(self.args.eos_token_id)
        if self.tokenizer is not None and self.tokenizer.eos_token_id is not None:
            stops.add(self.tokenizer.eos_token_id)
        gen = torch.Generator(device="cpu")
        if seed is not None:
            gen.manual_seed(seed)
        else:
            gen.seed()
        if speculative == "mtp" and (constraint is None or temperature <= 0):
            return self._speculative(ids, max_new_tokens, temperature, top_p, stops, gen, cancel, constraint,
                                     seeded=seed is not None)
        return self._plain(ids, max_new_tokens, temperature, top_p, stops, gen, cancel, constraint)

    def _prefill(self, ids: list[int], start: int) -> torch.Tensor:
        self.last_stats = {"prompt_tokens": len(ids), "cached_tokens": start, "generated": 0,
                           "drafted": 0, "accepted": 0}
        return self.forward(torch.tensor([ids[start:]]), start, last_only=True)[0]

    def _plain(self, ids, max_new_tokens, temperature, top_p, stops, gen, cancel, constraint=None) -> Iterator[int]:
        logits = self._prefill(ids, min(_common_prefix(self._held, ids), len(ids) - 1))[-1]
        pos, stats = len(ids), self.last_stats
        while stats["generated"] < max_new_tokens:
            if cancel is not None and cancel.is_set():
                return
            tok = choose(logits, temperature, top_p, gen, constraint)
            if tok in stops:
                return
            stats["generated"] += 1
            yield tok
            if stats["generated"] >= max_new_tokens or pos >= self.max_seq_len:
                return
            logits = self.forward(torch.tensor([[tok]]), pos)[0, -1]
            pos += 1

    @torch.inference_mode()
    def _mtp_hidden(self, next_tokens: list[int], hidden: torch.Tensor, start: int) -> torch.Tensor:
        """Run the MTP module at positions start.. over (h_p, token p+1) pairs: hidden [T, dim]."""
        m, T = self.model, len(next_tokens)
        emb = m.embed(torch.tensor([next_tokens], device=self.device))
        return m.mtp[0](emb, hidden[None], start, m.cos[start:start + T], m.sin[start:start + T])[0]

    @torch.inference_mode()
    def _draft_probs(self, x: torch.Tensor, temperature: float, top_p: float):
        """x [1, dim] (the MTP hidden state) -> the draft's logits [vocab], and its sampling
        probabilities (None when greedy)."""
        logits = self.model.mtp[0].logits(x, self.model.head)[0]
        return logits, (None if temperature <= 0 else sampling_probs(logits, temperature, top_p))

    def _speculative(self, ids, max_new_tokens, temperature, top_p, stops, gen, cancel,
                     constraint=None, seeded: bool = False) -> Iterator[int]:
        """Each round: the MTP module catches up on the main model's new hidden states (which
        also drafts the first token), drafts k-1 more on its own hidden state, the main model
        verifies [next, drafts] in one forward, and the cache forgets the rejected rows. With a
        ``constraint`` (greedy only) a draft stands where it is the rule's pick."""
        n, greedy = len(ids), temperature <= 0
        shared = _common_prefix(self._held, ids)
        valid = min(self._mtp_rows, max(shared - 1, 0))  # MTP rows whose tokens are unchanged
        # MTP row p needs h_p: the kept hidden states reach up to `known`; prefill from there on
        h = self._hidden
        known = min(h.end, shared) if h.rows and h.start <= valid else valid
        logits = self._prefill(ids, min(max(valid, known), n - 1))
        stats = self.last_stats
        self._mtp_rows = valid
        nxt = choose(logits[-1], temperature, top_p, gen, constraint)
        pos = n  # cache rows 0..pos-1 hold committed tokens; nxt goes to pos
        policy = self.draft_length
        if seeded and not greedy:  # which draws are made depends on the draft lengths: a seed reproduces
            policy = DraftLength(k_max=policy.k_max, timed=False)  # only where they do not follow history or time
        while True:
            if cancel is not None and cancel.is_set() or nxt in stops or stats["generated"] >= max_new_tokens:
                return
            stats["generated"] += 1
            yield nxt
            if stats["generated"] >= max_new_tokens or pos >= self.max_seq_len:
                return
            k = min(policy.next(), max_new_tokens - stats["generated"], self.max_seq_len - pos - 1)
            drafts, qs = [], []
            mtp_rows = self._mtp_rows
            started, catch_up = time.perf_counter(), (0.0, 0)
            if k > 0:
                # catch up: rows mtp_rows..pos-1 pair the main hidden states with the tokens after them
                x = self._mtp_hidden(self._held[mtp_rows + 1:pos] + [nxt], self._hidden.since(mtp_rows), mtp_rows)
                catch_up = (time.perf_counter() - started, pos + 1 - mtp_rows)
                x = x[-1:]
                mtp_rows = pos
                self._hidden.trim_front(pos)
                for j in range(k):
                    d_logits, q = self._draft_probs(x[-1:], temperature, top_p)
                    d = int(d_logits.argmax()) if greedy else draw(q, gen)
                    drafts.append(d)
                    qs.append(q)
                    if j + 1 < k:  # the next draft reads this module's own hidden state at pos + j
                        x = self._mtp_hidden([d], x[-1:], pos + j)
            logits = self.forward(torch.tensor([[nxt] + drafts]), pos)[0]  # [1 + k, vocab]
            accepted, after = 0, None
            for j, d in enumerate(drafts):
                if greedy:
                    best = choose(logits[j], 0.0, top_p, gen, constraint)  # the rule moves past it
                    after = None if best == d else best
                else:
                    after = accept_or_resample(sampling_probs(logits[j], temperature, top_p), qs[j], d, gen)
                if after is not None:
                    break
                accepted += 1
            if after is None:
                after = choose(logits[len(drafts)], temperature, top_p, gen, constraint)
            seconds, (catch_s, catch_rows) = time.perf_counter() - started, catch_up
            if catch_rows > 1 + accepted:  # after a pause the MTP module catches up on many rows at
                seconds -= catch_s * (1 - (1 + accepted) / catch_rows)  # once: count this round's share
            policy.update(len(drafts), accepted, seconds)
            stats["drafted"] += len(drafts)
            stats["accepted"] += accepted
            # keep rows pos..pos+accepted (nxt and the accepted drafts); the rejected rows are forgotten
            self._forget_from(pos + 1 + accepted)
            self._mtp_rows = mtp_rows  # (the MTP rows' tokens all stand)
            for d in drafts[:accepted]:
                if cancel is not None and cancel.is_set() or d in stops:
                    return
                stats["generated"] += 1
                yield d
            pos += 1 + accepted
            nxt = after

    def chat_prompt(self, messages) -> list[int]:
        """Token ids of the rendered chat template (R1 models start inside "<think>\\n"); a control
        token typed in a message is text (``Tokenizer.encode_chat``)."""
        if self.tokenizer is None:
            raise ModelError(f"{self.path}: no tokenizer.json")
        return self.tokenizer.encode_chat(messages, add_generation_prompt=True)


class _HiddenRows:
    """Main-model hidden states [dim] of consecutive positions start..end-1, kept in chunks."""

    def __init__(self):
        self.start, self.rows, self.chunks = 0, 0, []

    @property
    def end(self) -> int:
        return self.start + self.rows

    def add(self, pos: int, rows: torch.Tensor) -> None:
        if not self.rows or pos != self.end:
            self.start, self.rows, self.chunks = pos, 0, []
        self.chunks.append(rows)
        self.rows += rows.shape[0]

    def since(self, pos: int) -> torch.Tensor:
        """Rows for positions pos..end-1 (pos >= start)."""
        if len(self.chunks) > 1:
            self.chunks = [torch.cat(self.chunks)]
        return self.chunks[0][pos - self.start:]

    def trim(self, end: int) -> None:
        """Forget positions end and after."""
        if end <= self.start:
            self.start, self.rows, self.chunks = end, 0, []
        elif end < self.end:
            self.chunks = [self.since(self.start)[:end - self.start]]
            self.rows = end - self.start

    def trim_front(self, pos: int) -> None:
        """Forget positions before pos."""
        if pos >= self.end:
            self.start, self.rows, self.chunks = pos, 0, []
        elif pos > self.start:
            self.chunks = [self.since(pos)]
            self.start, self.rows = pos, self.end - pos


def _common_prefix(a: list[int], b: list[int]) -> int:
    n = min(len(a), len(b))
    for i in range(n):
        if a[i] != b[i]:
            return i
    return n


def choose(logits: torch.Tensor, temperature: float, top_p: float, gen: torch.Generator,
           constraint: TokenConstraint | None) -> int:
    """``sample``, held to ``constraint`` where one is given (its pick if the rule allows it,
    else local_engine.constraint.pick_allowed), which then advances past the token; one that
    has ``observe`` is first shown the logits and the model's own pick."""
    tok = sample(logits, temperature, top_p, gen)
    if constraint is not None:
        observe = getattr(constraint, "observe", None)  # a rule that watches the model's leaning
        if observe is not None:
            observe(logits, tok)
        if not constraint.allows(tok):
            probs = None if temperature <= 0 else sampling_probs(logits, temperature, top_p)
            tok = pick_allowed(logits, tok, probs, gen, constraint)
        constraint.advance(tok)
    return tok


def sample(logits: torch.Tensor, temperature: float, top_p: float, gen: torch.Generator) -> int:
    """logits [vocab] -> one token id: argmax at temperature 0, else nucleus sampling."""
    if temperature <= 0:
        return int(logits.argmax())
    probs = (logits.float().cpu() / temperature).softmax(-1)
    if top_p < 1.0:
        p, idx = probs.sort(descending=True)
        keep = (p.cumsum(-1) - p) < top_p
        keep[0] = True  # always keeps the first (top_p <= 0 too: then it is greedy)
        p = p * keep
        choice = torch.multinomial(p / p.sum(), 1, generator=gen)
        return int(idx[choice])
    return int(torch.multinomial(probs, 1, generator=gen))


def _tensors(q):
    if q is None:
        return []
    q = getattr(q, "tensors", q)  # kernels.quant.QuantizedWeight keeps its tensors in a dict
    if isinstance(q, torch.Tensor):
        return [q]
    if isinstance(q, dict):
        return [v for v in q.values() if isinstance(v, torch.Tensor)]
    if isinstance(q, (list, tuple)):
        return [v for v in q if isinstance(v, torch.Tensor)]
    return [v for v in vars(q).values() if isinstance(v, torch.Tensor)] if hasattr(q, "__dict__") else []
