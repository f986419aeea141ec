"""Synthetic traces (traces.synthetic, traces.synth) and trace statistics (traces.stats).

Calibration targets (routing-stats.md): tokens per denoising forward 2.55 (mini) / 3.19 (flash); 69.5 distinct
experts per layer in one 32-token block forward of mini; adjacent-step cosine 0.985, lag-5 cosine > 0.95 (block
tokens); tide hit ratio 0.93-0.95 (mini, B = 128) with a loss growing with tau; 22-92 denoising steps per prompt
under EOS stop; a top-half placement from one topic (seed) covers about half of another's assignments (OLMoE).
"""
from __future__ import annotations

import pytest

pytest.importorskip("scipy", exc_type=ImportError)  # absent on the GPU machine: skip, not a collection error

import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from offload.errors import TideError
from offload.model_spec import ModelSpec
from offload.trace_io import read_trace, write_trace
from offload.trace import KIND_COMMIT, KIND_DENOISE, KIND_PREFILL, STEP_FIELDS, model_header
from offload.trace_check import make_trace
from traces.stats import gini, lag_cosine, top_half_coverage, top_share, trace_stats
from traces.synthetic import (SyntheticConfig, commit_schedule, default_config, expected_steps_per_block,
                              extra_commit_rate, generate, scheduled_minimum)
from offload.trace_check import validate_trace

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def mini() -> ModelSpec:
    return ModelSpec.load("llada2.0-mini")


@pytest.fixture(scope="module")
def mini_block_cache(mini):
    """The calibration trace: LLaDA2.0-mini, block-cache, defaults (gen_length 1024) without EOS stop, seed 0."""
    return generate(mini, default_config(mini, "block-cache", seed=0, eos_stop=False))


def _same_arrays(a, b) -> bool:
    return a.header == b.header and all(np.array_equal(x, y) for x, y in zip(a.arrays().values(), b.arrays().values()))


# ---- calibration ---------------------------------------------------------------------------------------------
def test_mini_block_cache_hits_published_statistics(mini_block_cache):
    s = trace_stats(mini_block_cache)
    assert s["mode"] == "block-cache"
    assert s["tokens_per_forward"] == pytest.approx(2.55, abs=0.15)
    assert s["distinct_experts"] == pytest.approx(69.5, abs=5)
    assert s["cosine_adjacent"] == pytest.approx(0.985, abs=0.01)
    assert 0.95 < s["cosine_lag5"] < s["cosine_adjacent"]
    # skew: the busiest 10% of experts take far more than 10% of the assignments
    assert s["top10_share"] > 0.3 and s["gini"] > 0.3
    assert s["tokens_forwarded_mean"] == 32


def test_flash_tokens_per_forward_and_generation_speed():
    flash = ModelSpec.load("llada2.0-flash")
    t0 = time.perf_counter()
    tr = generate(flash, default_config(flash, "prefix-recompute", seed=0))
    elapsed = time.perf_counter() - t0
    assert trace_stats(tr)["tokens_per_forward"] == pytest.approx(3.19, abs=0.2)
    assert elapsed < 30, f"flash prefix-recompute gen_length 1024 took {elapsed:.1f} s (a few seconds expected)"


def test_prefix_recompute_top_half_share_near_tide_hit_ratio(mini):
    # TIDE, mini, 128 of 256 resident, per-step refresh: GPU hit ratio 0.93-0.95
    tr = generate(mini, default_config(mini, "prefix-recompute", gen_length=256, seed=3, eos_stop=False))
    assert 0.925 < trace_stats(tr)["top_half_share"] < 0.955


@pytest.fixture(scope="module")
def mini_short_hits(mini):
    """tide hit ratios at tau 1..5 (B = 128) of two short prefix-recompute traces, and static's."""
    pytest.importorskip("simpy")
    from offload.cost import ConstantCostModel
    from offload.policies import make_policy
    from sim.engine import simulate
    from sim.synthetic_check import tide_hit_ratios
    out = []
    for seed in (0, 1):
        tr = generate(mini, default_config(mini, "prefix-recompute", gen_length=256, seed=seed, eos_stop=False))
        static = simulate(tr, make_policy("static"), ConstantCostModel(), budget=128).counters.hit_ratio
        out.append((tide_hit_ratios(tr, 128), static))
    return out


def test_tide_hit_ratio_and_its_loss_with_tau(mini_short_hits):
    """hit(tau = 1) in TIDE's 0.93-0.95; the loss hit(1) - hit(tau) grows with tau. TIDE's development runs lose
    0.0016 / 0.0019 / 0.0021 / 0.0025 at tau 2..5 (first prompt, whole prompt), 0.0009 / 0.0014 / 0.0028 / 0.0040
    averaged over steps; these short traces lose about 0.0022 at tau 5 (the v2 generator 0.0015, v1 0.0003)."""
    for hits, _ in mini_short_hits:
        assert 0.925 < hits[0] < 0.955
        loss = hits[0] - np.asarray(hits[1:])
        assert (np.diff(loss) > 0).all() and loss[0] > 0
        assert 0.0019 < loss[-1] < 0.006


def test_step_hit_replay_matches_the_engine_and_averages_over_steps(mini, mini_short_hits):
    """sim.synthetic_check's numpy replay of tide gives the engine's whole-run hit ratio exactly, and per step a
    ratio in [0, 1] whose plain mean is the step-averaged figure (TIDE's 0.0009 / ... / 0.0040 are step-averaged)."""
    from sim.synthetic_check import tide_step_hit_ratios, tide_step_hits
    tr = generate(mini, default_config(mini, "prefix-recompute", gen_length=256, seed=0, eos_stop=False))
    gen = tr.kind == KIND_DENOISE
    weights = tr.counts[gen].sum((1, 2))
    for tau, whole in zip((1, 2, 5), np.asarray(mini_short_hits[0][0])[[0, 1, 4]]):
        per_step = tide_step_hits(tr, 128, tau)
        assert per_step.shape == (gen.sum(),) and ((per_step >= 0) & (per_step <= 1)).all()
        assert (per_step * weights).sum() / weights.sum() == pytest.approx(whole, abs=1e-12)
    steps = tide_step_hit_ratios(tr, 128, (1, 5))
    assert steps[0] - steps[1] > 0.001  # the step-averaged loss at tau 5
    # a trace with a prefill forward: prefill and commit rows neither refresh nor count
    bc = generate(mini, default_config(mini, "block-cache", gen_length=64, seed=0, eos_stop=False))
    assert tide_step_hits(bc, 128, 1).shape == ((bc.kind == KIND_DENOISE).sum(),)


def test_static_placement_loses_to_per_step_refresh(mini_short_hits):
    # expert popularity drifts from block to block: the first step's top-B serves later blocks clearly worse
    for hits, static in mini_short_hits:
        assert hits[0] - static > 0.02


def test_eos_stop_lengths_and_off_switch(mini):
    steps = []
    for seed in range(8):
        pr = generate(mini, default_config(mini, "prefix-recompute", seed=seed))
        committed = int(pr.tokens_committed.sum())
        assert committed % 32 == 0 and 2 * 32 <= committed <= 7 * 32
        # the output ends with the EOS, inside the last block: what tokens/s counts
        assert committed - 32 < pr.generated_tokens <= committed == pr.block.max() * 32 + 32
        assert pr.header["generation"]["gen_length"] == 1024  # the budget; fewer tokens committed
        steps.append(pr.num_steps)
    assert min(steps) >= 15 and max(steps) <= 100 and len(set(steps)) > 3  # TIDE: 22 to 92 per prompt
    kw = dict(gen_length=256, seed=1)
    full = generate(mini, default_config(mini, "block-cache", eos_stop=False, **kw))
    assert full.generated_tokens == 256
    short = generate(mini, default_config(mini, "block-cache", eos_blocks_min=1, eos_blocks_max=1, **kw))
    assert 1 <= short.generated_tokens <= 32 and int(short.tokens_committed.sum()) == 32 and (short.block < 1).all()
    # an EOS block beyond gen_length: no EOS, every block and all gen_length tokens
    late = generate(mini, default_config(mini, "block-cache", eos_blocks_min=9, eos_blocks_max=9, **kw))
    assert late.generated_tokens == 256 == int(late.tokens_committed.sum())
    # both modes of a seed stop after the same block
    a = generate(mini, default_config(mini, "block-cache", seed=5))
    b = generate(mini, default_config(mini, "prefix-recompute", seed=5))
    assert a.generated_tokens == b.generated_tokens


def test_first_layers_flatter_than_deep_ones(mini_block_cache):
    tot = mini_block_cache.counts.sum(0)  # [L, E]
    share = top_share(tot, 26)
    L = share.size
    assert share[: L // 4].mean() + 0.1 < share[-(L // 4):].mean()
    flat = generate(ModelSpec.load("llada2.0-mini"), default_config(
        ModelSpec.load("llada2.0-mini"), "block-cache", seed=0, gen_length=256, eos_stop=False, skew_depth=0.0,
        concentration_depth=0.0))
    s = top_share(flat.counts.sum(0), 26)
    assert abs(s[: L // 4].mean() - s[-(L // 4):].mean()) < 0.1


def test_popularity_drifts_across_blocks_and_topics(mini, mini_block_cache):
    final = mini_block_cache.counts[mini_block_cache.kind == KIND_COMMIT]  # each block's final counts
    near = np.mean([top_half_coverage(final[i], final[i + 1]) for i in range(len(final) - 1)])
    far = np.mean([top_half_coverage(final[i], final[i + 10]) for i in range(len(final) - 10)])
    assert far < near < 0.85  # a block's top half covers well under all of the next block's assignments
    # topics: two seeds' whole-generation counts overlap about as much as chance (OLMoE across domains 0.47-0.51)
    other = generate(mini, default_config(mini, "block-cache", seed=1, eos_stop=False)).counts.sum(0)
    own = mini_block_cache.counts.sum(0)
    assert 0.45 < top_half_coverage(own, other) < 0.55 < 0.7 < top_half_coverage(own, own)


# ---- commit schedule ---------------------------------------------------------------------------------------------
def test_scheduled_minimum_spreads_the_block_evenly():
    assert scheduled_minimum(32, 32).tolist() == [1] * 32
    assert scheduled_minimum(10, 4).tolist() == [3, 3, 2, 2]
    assert scheduled_minimum(3, 5).tolist() == [1, 1, 1, 0, 0]


@pytest.mark.parametrize("tpf", [1.0, 2.55, 3.19, 8.0])
def test_extra_commit_rate_solves_tokens_per_forward(tpf):
    lam = extra_commit_rate(32, 32, tpf)
    assert 32 / expected_steps_per_block(32, 32, lam) == pytest.approx(tpf, rel=1e-8)
    # Monte Carlo agrees with the recursion
    rng = np.random.default_rng(1)
    steps = [commit_schedule(rng, 32, scheduled_minimum(32, 32), lam).size for _ in range(4000)]
    assert 32 / np.mean(steps) == pytest.approx(tpf, rel=0.03)


def test_commit_schedule_respects_minimum_and_block_length():
    rng = np.random.default_rng(0)
    minimum = scheduled_minimum(32, 32)
    for _ in range(200):
        c = commit_schedule(rng, 32, minimum, 1.5)
        assert c.sum() == 32
        assert (c[:-1] >= minimum[: c.size - 1]).all() and c[-1] >= 1


# ---- determinism, validity, header ---------------------------------------------------------------------------
def test_same_seed_same_trace_other_seed_differs(mini):
    cfg = default_config(mini, "block-cache", gen_length=64, seed=7)
    a, b = generate(mini, cfg), generate(mini, cfg)
    assert _same_arrays(a, b)
    c = generate(mini, default_config(mini, "block-cache", gen_length=64, seed=8))
    assert not np.array_equal(a.counts[: c.num_steps], c.counts[: a.num_steps])


@pytest.mark.parametrize("mode", ["prefix-recompute", "block-cache"])
def test_trace_validates_commits_gen_length_and_header(mini, mode):
    cfg = default_config(mini, mode, gen_length=96, seed=2, eos_stop=False)
    tr = generate(mini, cfg)
    validate_trace(tr, mini)
    assert tr.generated_tokens == 96
    h = tr.header
    assert h["model"] == model_header(mini)
    assert h["generation"] == {"mode": mode, "block_length": 32, "steps": 32, "threshold": 0.95, "gen_length": 96,
                               "prompt_length": 128, "output_tokens": 96}
    assert h["origin"]["kind"] == "synthetic" and h["origin"]["seed"] == 2
    assert h["origin"]["params"]["tokens_per_forward"] == 2.55
    assert h["origin"]["params"]["popularity_skew"] == cfg.popularity_skew
    json.dumps(h)  # JSON-ready


def test_tokens_per_forward_defaults_by_model(mini, tiny_model):
    flash = ModelSpec.load("llada2.0-flash")
    assert default_config(mini).tokens_per_forward == 2.55
    assert default_config(flash).tokens_per_forward == 3.19
    assert default_config(tiny_model).tokens_per_forward == 2.55  # hidden size 16: mini-like
    tr = generate(flash, SyntheticConfig(mode="block-cache", gen_length=32, prompt_length=0))  # None: from model
    assert tr.header["origin"]["params"]["tokens_per_forward"] == 3.19


@pytest.mark.parametrize("bad", [dict(mode="autoregressive"), dict(gen_length=100), dict(block_length=0),
                                 dict(tokens_per_forward=0.5), dict(tokens_per_forward=32.0),
                                 dict(tokens_per_forward="x"), dict(temporal_correlation=1.5),
                                 dict(seed=-1), dict(nonsense=1)])
def test_bad_config_is_a_one_line_tide_error(mini, bad):
    with pytest.raises(TideError) as exc:
        default_config(mini, **{"mode": "block-cache", **bad})
    assert "\n" not in str(exc.value)


@pytest.mark.parametrize("name, bad, rng", [
    ("skew_depth", 2.0, "[0, 1.9]"), ("concentration_depth", -0.1, "[0, 5]"), ("drift_sd", 6.0, "[0, 5]"),
    ("drift_correlation", 1.01, "[0, 1]"), ("content_share", -0.5, "[0, 1]"),
    ("content_concentration", 0.0, "[0.001, 1000]"), ("drift_sd", float("nan"), "[0, 5]"),
    ("eos_blocks_min", 0, "[1, 1000000]"), ("eos_blocks_max", 2.5, "[1, 1000000]"),
    ("eos_blocks_min", 9, "[1, eos_blocks_max 7]"), ("eos_stop", "yes", "True or False"),
    ("mask_share", 1.5, "[0, 1]"), ("mask_share", -0.01, "[0, 1]"), ("mask_experts", 0, "[1, 4096]"),
    ("mask_experts", 4097, "[1, 4096]"), ("mask_experts", 2.0, "[1, 4096]"), ("mask_experts", True, "[1, 4096]")])
def test_new_parameters_ranges_are_one_line_errors(mini, name, bad, rng):
    with pytest.raises(TideError) as exc:
        default_config(mini, **{name: bad})
    msg = str(exc.value)
    assert "\n" not in msg and name in msg and rng in msg


def test_new_parameters_edges_are_accepted(mini):
    for kw in (dict(skew_depth=0.0, concentration_depth=0.0, drift_sd=0.0, drift_correlation=1.0, content_share=0.0),
               dict(content_share=1.0, drift_correlation=0.0, eos_blocks_min=7),
               dict(mask_share=0.0, mask_experts=1), dict(mask_share=1.0, mask_experts=4096)):
        tr = generate(mini, default_config(mini, "block-cache", gen_length=64, **kw))
        validate_trace(tr, mini)
        assert tr.header["origin"]["params"]["eos_stop"] is True


# ---- structure of the two modes ------------------------------------------------------------------------------
def test_block_cache_structure(tiny_model):
    P, T = 12, 8  # a prompt that is not a multiple of the block length
    tr = generate(tiny_model, default_config(tiny_model, "block-cache", prompt_length=P, block_length=T,
                                             steps=8, gen_length=40, seed=1), with_topk=True)
    assert (tr.kind[0], tr.block[0], tr.tokens_forwarded[0], tr.context_tokens[0], tr.tokens_committed[0]) == \
           (KIND_PREFILL, -1, P, P, 0)
    assert (tr.kind[1:] != KIND_PREFILL).all()
    for b in range(5):
        rows = np.flatnonzero(tr.block == b)
        kinds = tr.kind[rows]
        n = int((kinds == KIND_DENOISE).sum())
        want_commit = 1 if b < 4 else 0  # the last block is never committed: nothing reads its cache
        assert kinds.tolist() == [KIND_DENOISE] * n + [KIND_COMMIT] * want_commit
        assert tr.step_in_block[rows[:n]].tolist() == list(range(n))
        assert (tr.tokens_forwarded[rows] == T).all() and (tr.context_tokens[rows] == P + (b + 1) * T).all()
        assert tr.tokens_committed[rows[:n]].sum() == T
        assert (tr.tokens_committed[rows[n:]] == 0).all() and (tr.step_in_block[rows[n:]] == 0).all()


def test_block_cache_without_prompt_has_no_prefill(tiny_model):
    tr = generate(tiny_model, default_config(tiny_model, "block-cache", prompt_length=0, gen_length=64))
    assert KIND_PREFILL not in tr.kind and tr.block.min() == 0


def test_prefix_recompute_structure(tiny_model):
    P, T = 16, 8
    tr = generate(tiny_model, default_config(tiny_model, "prefix-recompute", prompt_length=P, block_length=T,
                                             steps=8, gen_length=48, seed=4))
    assert (tr.kind == KIND_DENOISE).all()
    assert (tr.tokens_forwarded == P + (tr.block + 1) * T).all()
    assert (tr.context_tokens == tr.tokens_forwarded).all()
    assert (np.diff(tr.block) >= 0).all() and np.unique(tr.block).tolist() == list(range(6))
    # within a block only the current block's T tokens re-route: the counts move by at most 2 T k per layer
    k = tiny_model.top_k
    for b in range(6):
        c = tr.counts[tr.block == b].astype(np.int64)
        assert (np.abs(c[:, None] - c[None]).sum(-1) <= 2 * T * k).all()


def test_prefix_recompute_is_prefix_plus_current_block(tiny_model):
    """Both modes of one seed share the routing: prefix-recompute counts = prefill + commits of earlier blocks +
    the block-cache denoise counts of the same step; and the top-k ids of the prefix are the final ids."""
    kw = dict(prompt_length=16, block_length=8, steps=8, gen_length=48, seed=5)
    pr = generate(tiny_model, default_config(tiny_model, "prefix-recompute", **kw), with_topk=True)
    bc = generate(tiny_model, default_config(tiny_model, "block-cache", **kw), with_topk=True)
    den = bc.kind == KIND_DENOISE
    for f in ("block", "step_in_block", "tokens_committed"):
        assert np.array_equal(getattr(pr, f), getattr(bc, f)[den])
    # the final counts of the last block come from the same timeline though block-cache never forwards them
    prefix = np.cumsum(np.where((bc.kind != KIND_DENOISE)[:, None, None], bc.counts, 0), axis=0)[den]
    assert np.array_equal(pr.counts, prefix + bc.counts[den])
    # token ids: each prefix-recompute step = prompt ids, finished blocks' final ids, then the block's ids
    pr_tok = np.split(pr.topk_ids, np.cumsum(pr.tokens_forwarded)[:-1])
    bc_tok = np.split(bc.topk_ids, np.cumsum(bc.tokens_forwarded)[:-1])
    finals = [t for t, k in zip(bc_tok, bc.kind) if k != KIND_DENOISE]  # prefill, then the commits
    for ids, step_ids, b in zip(pr_tok, [t for t, d in zip(bc_tok, den) if d], pr.block):
        assert np.array_equal(ids, np.concatenate([*finals[: b + 1], step_ids]))


def test_topk_ids_are_distinct_per_token_and_match_counts(tiny_model):
    tr = generate(tiny_model, default_config(tiny_model, "prefix-recompute", gen_length=64, seed=6), with_topk=True)
    ids = np.sort(tr.topk_ids, axis=-1)
    assert (np.diff(ids, axis=-1) > 0).all()
    validate_trace(tr)  # rebuilds counts from the ids
    plain = generate(tiny_model, default_config(tiny_model, "prefix-recompute", gen_length=64, seed=6))
    assert np.array_equal(plain.counts, tr.counts) and plain.topk_ids is None


def test_earlier_blocks_do_not_depend_on_gen_length(mini):
    short = generate(mini, default_config(mini, "prefix-recompute", gen_length=64, seed=9))
    long = generate(mini, default_config(mini, "prefix-recompute", gen_length=128, seed=9))
    n = short.num_steps
    assert np.array_equal(short.counts, long.counts[:n])
    for f in STEP_FIELDS:
        assert np.array_equal(getattr(short, f), getattr(long, f)[:n])


def test_mask_experts_take_masked_tokens_only_and_fade_as_the_block_unmasks(mini):
    """q_M = (1 - mu) m_b + mu k: every masked token sends mu of its routing to the same n_mask experts of the
    layer, drawn from its lower popularity half; committed tokens and the prompt never route there by that."""
    from traces.synthetic import expert_popularity, mask_distribution, masked_and_final
    rng = np.random.default_rng(0)
    log_p = expert_popularity(rng, 3, 64, 1.5)
    log_k = mask_distribution(rng, log_p, 5)
    on = np.isfinite(log_k)
    assert (on.sum(1) == 5).all() and np.allclose(np.exp(log_k).sum(1), 1.0)
    rank = np.argsort(np.argsort(-log_p, axis=1), axis=1)
    assert (rank[on] >= 32).all()  # the lower half of the layer's popularity
    assert mask_distribution(rng, log_p, 100).__eq__(-np.inf).sum(1).tolist() == [32] * 3  # capped at E - E//2
    cfg = default_config(mini, mask_share=0.3)
    log_m, log_f = masked_and_final(np.random.default_rng(1), log_p, cfg, np.full(3, 2.0), log_k)
    m0, f0 = masked_and_final(np.random.default_rng(1), log_p, cfg, np.full(3, 2.0), None)
    assert np.array_equal(log_f, f0)  # committed tokens: no mask experts
    assert np.allclose(np.exp(log_m), 0.7 * np.exp(m0) + 0.3 * np.exp(log_k))
    # in a trace: the mask experts' own random stream leaves every block's draws and noise as they were, so the
    # committed (final) routing is unchanged and the first step (all 32 tokens masked) gains about mu of its
    # assignments on 16 experts per layer
    kw = dict(gen_length=256, eos_stop=False, seed=2, prompt_length=0)
    a = generate(mini, default_config(mini, "block-cache", mask_share=0.3, **kw))
    b = generate(mini, default_config(mini, "block-cache", mask_share=0.0, **kw))
    commit = a.kind == KIND_COMMIT
    assert np.array_equal(a.counts[commit], b.counts[commit])
    first = (a.kind == KIND_DENOISE) & (a.step_in_block == 0)
    gain = (a.counts[first] - b.counts[first]).sum(0)  # [L, E] over the 8 blocks
    share = np.sort(gain, axis=1)[:, -16:].sum(1) / a.counts[first].sum((0, 2))
    # mu = 0.3 of the probability; more of the assignments in deep layers, whose block distribution has little
    # beyond its top few experts: a top-8 draw without replacement fills its last picks from the mask experts
    assert (share > 0.25).all() and share.mean() < 0.75
    assert share[: share.size // 4].mean() < share[-(share.size // 4):].mean()


def test_adjacent_steps_more_alike_than_distant_ones_within_a_block(mini_block_cache):
    assert lag_cosine(mini_block_cache, 1) > lag_cosine(mini_block_cache, 3) > lag_cosine(mini_block_cache, 8)


# ---- statistics on hand-made traces ---------------------------------------------------------------------------
def _hand_trace(counts, block, sib, kind, committed):
    counts = np.asarray(counts)
    S, L, E = counts.shape
    header = {"version": 1, "model": {"name": "hand", "config_hash": "0", "num_moe_layers": L, "num_experts": E,
                                      "top_k": 1},
              "generation": {"mode": "block-cache", "block_length": 2, "steps": 2, "threshold": 0.95,
                             "gen_length": int(sum(committed)), "prompt_length": 0},
              "origin": {"kind": "synthetic", "seed": None}}
    fwd = counts.sum(axis=2)[:, 0]
    return make_trace(header, counts, block=block, step_in_block=sib, tokens_forwarded=fwd, context_tokens=fwd,
                      tokens_committed=committed, kind=kind)


def test_stats_on_a_hand_made_trace():
    # block 0: steps [2,0] then [1,1]; a commit [2,0]; block 1: one step [0,2]
    tr = _hand_trace([[[2, 0]], [[1, 1]], [[2, 0]], [[0, 2]]], block=[0, 0, 0, 1], sib=[0, 1, 0, 0],
                     kind=[KIND_DENOISE, KIND_DENOISE, KIND_COMMIT, KIND_DENOISE], committed=[1, 1, 0, 2])
    s = trace_stats(tr)
    assert s["cosine_adjacent"] == pytest.approx(1 / math.sqrt(2))  # the only pair within a block
    assert math.isnan(s["cosine_lag5"])
    assert s["tokens_per_forward"] == pytest.approx(4 / 3)
    assert s["denoise_steps_per_block"] == pytest.approx(1.5)
    assert s["distinct_experts"] == pytest.approx(4 / 3)
    assert (s["denoise_forwards"], s["commit_forwards"], s["blocks"]) == (3, 1, 2)


def test_skew_measures():
    assert gini(np.ones(10)) == pytest.approx(0.0)
    assert gini(np.eye(10)[0]) == pytest.approx(0.9)
    assert top_share(np.arange(1, 11, dtype=float), 2) == pytest.approx(19 / 55)


# ---- command lines ---------------------------------------------------------------------------------------------
def _python(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    return subprocess.run([sys.executable, *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)


def test_synth_cli_writes_a_trace_and_stats_cli_prints_it(tmp_path):
    out = tmp_path / "mini.npz"
    r = _python("-m", "traces.synth", "--model", "llada2.0-mini", "--mode", "block-cache", "--out", str(out),
                "--gen-length", "64", "--seed", "3")
    assert r.returncode == 0, r.stderr
    tr = read_trace(out)
    assert tr.mode == "block-cache" and tr.generated_tokens == 64 and tr.header["origin"]["seed"] == 3
    r = _python("-m", "traces.stats", str(out))
    assert r.returncode == 0, r.stderr
    for label in ("tokens per generating forward", "distinct experts", "cosine, adjacent steps",
                  "cosine, steps 5 apart", "top-10% experts' share", "Gini", "block-cache"):
        assert label in r.stdout
    assert f"{trace_stats(tr)['distinct_experts']:.4f}" in r.stdout


def test_stats_cli_json_and_several_files(tmp_path, capsys, mini_block_cache):
    from traces.stats import main
    path = write_trace(mini_block_cache, tmp_path / "a.npz")
    assert main([str(path), "--json"]) == 0
    got = json.loads(capsys.readouterr().out)
    assert got["distinct_experts"] == pytest.approx(trace_stats(mini_block_cache)["distinct_experts"])
    assert main([str(path), str(path)]) == 0
    assert capsys.readouterr().out.count("a.npz") == 2


def test_stats_cli_rejects_garbage_with_one_line_error(tmp_path):
    bad = tmp_path / "garbage.npz"
    bad.write_bytes(b"this is not a trace")
    r = _python("-m", "traces.stats", str(bad))
    assert r.returncode == 2
    assert r.stderr.startswith("error: ") and r.stderr.count("\n") == 1 and "garbage.npz" in r.stderr


def test_synth_cli_rejects_bad_input(tmp_path):
    from traces.synth import main
    from offload.errors import run_cli
    with pytest.raises(SystemExit) as exc:
        run_cli(main, ["--model", "llada2.0-mini", "--out", str(tmp_path / "x.npz"), "--gen-length", "100"])
    assert exc.value.code == 2 and not (tmp_path / "x.npz").exists()


def test_stats_check_prints_measured_vs_published(capsys):
    from traces.stats import main
    assert main(["--check", "--seeds", "1"]) == 0
    out = capsys.readouterr().out
    for label in ("mini: tokens per denoising forward", "mini: distinct experts", "mini: cosine 5 steps apart",
                  "mini: denoising steps per prompt", "top-half coverage across seeds", "flash: tokens per",
                  "not measured here: python -m sim.synthetic_check"):
        assert label in out
    assert "pass" in out


def test_sim_synthetic_check_adds_the_hit_ratio_rows(capsys):
    pytest.importorskip("simpy")
    from sim.synthetic_check import main
    assert main(["--seeds", "1"]) == 0
    out = capsys.readouterr().out
    assert "mini: tide hit ratio, tau 1, B 128" in out and "hit(tau 1) - hit(tau 5)" in out
    assert "flash: tide hit ratio, tau 1, B 96" in out and "not measured here" not in out
