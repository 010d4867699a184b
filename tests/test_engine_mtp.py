"""MTP self-speculative decoding: the checkpoint's MTP module loads (fp32, FP8, int8, int4,
a saved quantized folder), greedy output with speculative="mtp" is the plain greedy output,
sampled output keeps plain sampling's distribution, the draft length follows the acceptance."""

import math

import pytest
import torch

from local_engine import Engine
from local_engine.errors import ModelError
from local_engine.quantize import save_quantized
from local_engine.speculative import DraftLength, accept_or_resample, sampling_probs
from tests.tiny_checkpoints import write_fp8_copy, write_tiny_v3

PROMPTS, NEW = 4, 20



@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny models run op by op: on a shared, busy CPU a second intra-op thread only waits
    (measured here: 30x slower per token under load)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)

@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("mtp")
    dense = write_tiny_v3(root / "dense", mtp="copy", num_hidden_layers=1, first_k_dense_replace=2, seed=11)
    moe = write_tiny_v3(root / "moe", mtp="copy", num_hidden_layers=1, first_k_dense_replace=0, seed=12)
    rand = write_tiny_v3(root / "random", mtp=True, seed=14)
    return {"dense": dense, "moe": moe, "random": rand,
            "fp8": write_fp8_copy(moe, root / "moe_fp8"), "none": write_tiny_v3(root / "none", seed=15)}


def _ids(seed, n=24):
    return torch.randint(6, 400, (n,), generator=torch.Generator().manual_seed(seed)).tolist()


def _engine(folders, name, tmp_path_factory):
    if name == "int4_saved":
        q = save_quantized(Engine.load(folders["moe"], dtype="float32", quant="int4"),
                           tmp_path_factory.mktemp("saved") / "int4")
        return Engine.load(q, dtype="float32", max_seq_len=160)
    if name == "moe_bf16":  # packed bf16 weights: the native one-token kernels decode and verify
        return Engine.load(folders["moe"], dtype="bfloat16", max_seq_len=160)
    quant = "int8" if name == "int8" else None
    return Engine.load(folders["moe" if name == "int8" else name], dtype="float32", quant=quant, max_seq_len=160)


@pytest.mark.parametrize("name", ["dense", "moe", "moe_bf16", "random", "fp8", "int8", "int4_saved"])
def test_greedy_output_with_mtp_is_the_plain_greedy_output(folders, tmp_path_factory, name):
    engine = _engine(folders, name, tmp_path_factory)
    engine.draft_length = DraftLength(timed=False)  # drafts whatever they cost here: the output is what is tested
    assert engine.has_mtp
    if name == "int8":
        assert engine.model.mtp[0].block.ffn.experts[0].w13.qweight is not None  # the MTP block is quantized too
    drafted = accepted = 0
    for seed in range(PROMPTS):
        ids = _ids(seed)
        engine.reset()
        plain = list(engine.generate(ids, max_new_tokens=NEW, temperature=0))
        engine.reset()
        spec = list(engine.generate(ids, max_new_tokens=NEW, temperature=0, speculative="mtp"))
        if name == "moe_bf16" and spec != plain:
            _assert_a_last_bit_tie(engine, ids, plain, spec)
            continue
        assert spec == plain, seed
        stats = engine.last_stats
        assert stats["generated"] == len(spec) and stats["accepted"] <= stats["drafted"]
        drafted, accepted = drafted + stats["drafted"], accepted + stats["accepted"]
    assert drafted > 0
    if name != "random":  # drafts that copy the main model are often right, never always
        assert 0.3 * drafted < accepted < drafted


def _assert_a_last_bit_tie(engine, ids, plain, spec):
    """In bf16 a drafted forward (1 + k tokens) rounds otherwise than one-token steps, so greedy
    output may part where two tokens tie to the last bit: at the first difference, the two
    tokens' logits (the prefix in one forward) lie within two bf16 steps of each other."""
    i = next(j for j, (a, b) in enumerate(zip(plain, spec)) if a != b)
    engine.reset()
    logits = engine.forward(torch.tensor([ids + plain[:i]]), 0)[0, -1]
    a, b = float(logits[plain[i]]), float(logits[spec[i]])
    step = 2.0 ** (math.floor(math.log2(max(abs(a), abs(b), 1e-30))) - 7)  # bf16's spacing there
    assert abs(a - b) <= 2 * step, (i, a, b)


def test_mtp_turns_reuse_the_cache_and_mix_with_plain_turns(folders):
    engine = Engine.load(folders["moe"], dtype="float32", max_seq_len=200)
    fresh = Engine.load(folders["moe"], dtype="float32", max_seq_len=200)
    history, cached = _ids(40, 20), []
    for turn, spec in enumerate(["mtp", "mtp", None, "mtp"]):
        out = list(engine.generate(history, max_new_tokens=NEW, temperature=0, speculative=spec))
        fresh.reset()
        assert out == list(fresh.generate(history, max_new_tokens=NEW, temperature=0)), turn
        cached.append((engine.last_stats["cached_tokens"], len(history)))
        history = history + out + _ids(50 + turn, 5)
    assert cached[0][0] == 0
    for turn in (1, 2, 3):  # all but the new message (and the last token unless it was a verified draft)
        assert cached[turn][1] - 5 - 1 <= cached[turn][0] <= cached[turn][1] - 5, turn


def test_mtp_honours_max_new_tokens_stop_ids_and_the_context_end(folders):
    engine = Engine.load(folders["moe"], dtype="float32", max_seq_len=40)
    ids = _ids(3)
    plain = list(engine.generate(ids, max_new_tokens=100, temperature=0))
    assert len(plain) == 40 - len(ids) + 1  # the last token needs no cache row
    for n in (1, 2, 5):
        engine.reset()
        assert list(engine.generate(ids, max_new_tokens=n, temperature=0, speculative="mtp")) == plain[:n]
    engine.reset()
    assert list(engine.generate(ids, max_new_tokens=100, temperature=0, speculative="mtp")) == plain
    stop = plain[6]
    engine.reset()
    cut = list(engine.generate(ids, max_new_tokens=100, temperature=0, speculative="mtp", stop_ids=[stop]))
    assert cut == plain[:plain.index(stop)]


def test_a_checkpoint_without_mtp_weights_says_so(folders):
    engine = Engine.load(folders["none"], dtype="float32", max_seq_len=64)
    assert not engine.has_mtp
    with pytest.raises(ModelError, match=r"none.*MTP module.*model\.layers\.3"):
        engine.generate([5, 6, 7], max_new_tokens=3, speculative="mtp")
    skipped = Engine.load(folders["moe"], dtype="float32", max_seq_len=64, mtp=False)
    assert not skipped.has_mtp


def test_the_mtp_module_shares_the_main_head_when_the_checkpoint_copies_it(folders):
    shared = Engine.load(folders["moe"], dtype="float32", max_seq_len=64).model.mtp[0]
    own = Engine.load(folders["random"], dtype="float32", max_seq_len=64).model.mtp[0]
    assert shared.head is None and own.head is not None
    assert shared.layer_id == 1 and own.layer_id == 3


# -- sampling --------------------------------------------------------------------------------


def _chi2_critical(dof: int, z: float = 3.09) -> float:
    """Wilson-Hilferty: the chi-square quantile at normal quantile z (3.09: p = 0.001)."""
    return dof * (1 - 2 / (9 * dof) + z * math.sqrt(2 / (9 * dof))) ** 3


def _two_sample_chi2(a: list[int], b: list[int], min_count: int = 8) -> tuple[float, int]:
    keys = sorted(set(a) | set(b))
    ca = {k: a.count(k) for k in keys}
    cb = {k: b.count(k) for k in keys}
    big = [k for k in keys if ca[k] + cb[k] >= min_count]
    rows = [(ca[k], cb[k]) for k in big] + [(sum(ca[k] for k in keys if k not in big),
                                             sum(cb[k] for k in keys if k not in big))]
    rows = [r for r in rows if sum(r) > 0]
    na, nb = len(a), len(b)
    stat = 0.0
    for x, y in rows:
        tot = x + y
        ea, eb = tot * na / (na + nb), tot * nb / (na + nb)
        stat += (x - ea) ** 2 / ea + (y - eb) ** 2 / eb
    return stat, len(rows) - 1


def test_accept_or_resample_emits_exactly_the_target_distribution():
    gen = torch.Generator().manual_seed(0)
    p = torch.tensor([0.30, 0.25, 0.20, 0.10, 0.08, 0.05, 0.02, 0.0])
    q = torch.tensor([0.05, 0.40, 0.05, 0.30, 0.0, 0.10, 0.05, 0.05])
    n, counts, accepted = 40000, torch.zeros(8), 0
    for _ in range(n):
        d = int(torch.multinomial(q, 1, generator=gen))
        out = accept_or_resample(p, q, d, gen)
        accepted += out is None
        counts[d if out is None else out] += 1
    expected = p * n
    mask = expected > 0
    stat = float(((counts[mask] - expected[mask]) ** 2 / expected[mask]).sum())
    assert counts[~mask].sum() == 0  # a token the target never gives is never emitted
    assert stat < _chi2_critical(int(mask.sum()) - 1)
    overlap = float(torch.minimum(p, q).sum())  # the acceptance rate the rule must reach
    assert abs(accepted / n - overlap) < 0.01


def test_sampling_probs_is_what_sample_draws_from():
    from local_engine.engine import sample

    logits = torch.tensor([2.0, 1.5, 1.0, 0.2, -1.0, -3.0])
    probs = sampling_probs(logits, 0.7, 0.8)
    assert probs[4] == 0 and probs[5] == 0 and abs(float(probs.sum()) - 1) < 1e-6
    gen = torch.Generator().manual_seed(1)
    draws = [sample(logits, 0.7, 0.8, gen) for _ in range(6000)]
    counts = torch.bincount(torch.tensor(draws), minlength=6).float()
    expected = probs * len(draws)
    keep = expected > 0
    assert counts[~keep].sum() == 0
    assert float(((counts[keep] - expected[keep]) ** 2 / expected[keep]).sum()) < _chi2_critical(int(keep.sum()) - 1)


def test_sampled_tokens_with_mtp_follow_the_plain_sampling_distribution(folders):
    engine = Engine.load(folders["dense"], dtype="float32", max_seq_len=64)
    engine.draft_length = DraftLength(timed=False)  # drafts whatever they cost here: the distribution is tested
    ids = _ids(77, 16)
    runs, settings = 600, dict(max_new_tokens=4, temperature=0.2, top_p=0.95)  # a few likely tokens a step
    plain, spec, drafted, accepted = [], [], 0, 0
    for seed in range(runs):
        plain.append(list(engine.generate(ids, seed=seed, **settings)))
        spec.append(list(engine.generate(ids, seed=10_000 + seed, speculative="mtp", **settings)))
        drafted += engine.last_stats["drafted"]
        accepted += engine.last_stats["accepted"]
    assert 0 < accepted < drafted  # both verification outcomes happened
    for step in (1, 2, 3):  # the tokens that went through draft and verification
        a = [s[step] for s in plain if len(s) > step]
        b = [s[step] for s in spec if len(s) > step]
        stat, dof = _two_sample_chi2(a, b)
        assert dof >= 3
        assert stat < _chi2_critical(dof), (step, stat, dof)
    # the statistic does see a difference: plain sampling at a slightly higher temperature fails it
    warm = [list(engine.generate(ids, seed=20_000 + seed, max_new_tokens=2, temperature=0.3, top_p=0.95))
            for seed in range(runs)]
    stat, dof = _two_sample_chi2([s[1] for s in warm if len(s) > 1], [s[1] for s in plain if len(s) > 1])
    assert stat > _chi2_critical(dof)


# -- draft length ----------------------------------------------------------------------------


def test_draft_length_grows_with_acceptance_shrinks_without_and_pauses_when_drafts_fail():
    dl = DraftLength(k_max=4)
    for _ in range(10):
        k = dl.next()
        dl.update(k, k)
    assert dl.next() == 4 and dl.rate > 0.9
    for _ in range(40):  # every round the second draft fails: about half the tried drafts stand
        k = dl.next()
        dl.update(k, 1)
    assert 0.45 < dl.rate < 0.6 and dl.next() == 1
    rounds = 0
    while dl.paused == 0:  # every draft fails
        rounds += 1
        dl.update(dl.next(), 0)
    assert rounds < 40 and dl.rate < 0.1
    ks = [dl.next() for _ in range(dl.pause + 1)]
    assert ks[:-1] == [0] * dl.pause and ks[-1] == 1  # paused (plain decoding), then one probe
    assert DraftLength(k_max=0).next() == 0


def _rounds(dl, n, *, plain_s, draft_s, accept_all=True):
    """``n`` rounds of a decoder whose rounds cost ``plain_s`` without drafts and ``draft_s``
    with any; every draft stands. Returns the draft lengths asked for."""
    ks = []
    for _ in range(n):
        k = dl.next()
        ks.append(k)
        dl.update(k, k if accept_all else 0, seconds=draft_s if k else plain_s)
    return ks


def test_timed_drafting_pauses_where_it_costs_more_per_token_than_plain_steps_and_keeps_on_where_it_pays():
    slow = DraftLength(k_max=3, slow_pause=8, slow_pause_max=32)
    ks = _rounds(slow, 2, plain_s=1.0, draft_s=6.0)
    assert ks == [2, 3]  # drafts first (their length from the acceptance prior): nothing is timed yet
    assert _rounds(slow, 1, plain_s=1.0, draft_s=6.0) == [0]  # then one plain round to compare with
    assert slow.plain_s == 1.0 and slow.draft_s == (6 / 3 + 6 / 4) / 2  # seconds per committed token
    ks = _rounds(slow, 60, plain_s=1.0, draft_s=6.0)  # 1.5 s a token drafted against 1.0 plain
    assert [i for i, k in enumerate(ks) if k] == [0, 9, 26, 59]  # probes after pauses of 8, 16, then 32 (the most)
    fast = DraftLength(k_max=3, slow_pause=8)
    ks = _rounds(fast, 40, plain_s=1.0, draft_s=2.0)  # 2.0 / 4 tokens = 0.5 s a token: drafting pays
    assert ks.count(0) == 1 and fast.paused == 0  # the one measuring round, then drafts throughout
    untimed = DraftLength(k_max=3, timed=False)
    assert 0 not in _rounds(untimed, 40, plain_s=1.0, draft_s=60.0)  # untimed: acceptance alone decides
    assert 0 not in _rounds(DraftLength(k_max=3), 5, plain_s=None, draft_s=None)  # no timings: as untimed


def test_the_cli_generates_with_speculative_mtp_and_refuses_a_checkpoint_without_it(folders, capsys):
    from local_engine.__main__ import main

    base = ["generate", "--model", str(folders["moe"]), "--temperature", "0", "--max-new-tokens", "12",
            "--raw", "--dtype", "float32", "def main():"]
    assert main(base) == 0
    plain = capsys.readouterr().out
    assert main(base[:1] + ["--speculative", "mtp"] + base[1:]) == 0
    assert capsys.readouterr().out == plain
    none = ["generate", "--model", str(folders["none"]), "--speculative", "mtp", "--raw", "--dtype", "float32", "x"]
    assert main(none) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "MTP module" in err and str(folders["none"]) in err
