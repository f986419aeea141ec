"""Router: group-limited top-k on biased sigmoid scores, weights from unbiased scores (runtime/router.py)."""
from __future__ import annotations

import pytest
import torch

from runtime.config import RuntimeConfig
from runtime.router import route
from offload.model_spec import ModelSpec


def _cfg(**overrides) -> RuntimeConfig:
    """The tiny preset (32 experts, 4 groups of 8, keep 2 groups, top-4, scale 2.5) with overrides."""
    base = RuntimeConfig.load("llada2-tiny")
    return RuntimeConfig.from_spec(ModelSpec.from_config({**base.spec.raw_config, **overrides}, name="t"))


def _route_logits(logits: torch.Tensor, cfg: RuntimeConfig, bias: torch.Tensor | None = None):
    """Route with W = I so that the router logits are exactly ``logits``."""
    E = logits.shape[1]
    return route(logits, torch.eye(E), bias, cfg)


def _reference(logits: torch.Tensor, bias: torch.Tensor, cfg: RuntimeConfig):
    """Per-token loop, written from the spec, for comparison with the vectorised router."""
    s = cfg.spec
    per = s.num_experts // s.n_group
    ids, ws = [], []
    for row in logits:
        sc = torch.sigmoid(row.double())
        b = sc + bias.double()
        gscore = [sorted(b[g * per:(g + 1) * per].tolist(), reverse=True)[:2] for g in range(s.n_group)]
        gscore = [sum(v) for v in gscore]
        kept = sorted(range(s.n_group), key=lambda g: -gscore[g])[:s.topk_group]
        cand = [e for g in kept for e in range(g * per, (g + 1) * per)]
        chosen = sorted(cand, key=lambda e: -b[e].item())[:s.top_k]
        w = sc[chosen]
        w = w / w.sum() * cfg.routed_scaling_factor
        ids.append(sorted(chosen))
        ws.append(dict(zip(chosen, w.tolist())))
    return ids, ws


def test_group_limit_excludes_strong_expert_in_weak_group():
    cfg = _cfg()
    logits = torch.full((1, 32), -5.0)
    logits[0, 0] = 5.0                  # the strongest expert, alone in group 0 (group score ~ 1.0)
    logits[0, [8, 9, 16, 17]] = 2.0     # two good experts in groups 1 and 2 (group scores ~ 1.76)
    ids, w = _route_logits(logits, cfg)
    assert sorted(ids[0].tolist()) == [8, 9, 16, 17]
    # without the group limit the strong expert wins
    ids_flat, _ = _route_logits(logits, _cfg(n_group=1, topk_group=1))
    assert ids_flat[0, 0].item() == 0


def test_weights_sum_to_scaling_factor_and_match_reference():
    cfg = _cfg()
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(64, 32, generator=g)
    bias = 0.3 * torch.randn(32, generator=g)
    ids, w = _route_logits(logits, cfg, bias)
    assert ids.dtype == torch.int64 and w.dtype == torch.float32 and ids.shape == w.shape == (64, 4)
    torch.testing.assert_close(w.sum(-1), torch.full((64,), 2.5))
    assert (w > 0).all()
    ref_ids, ref_w = _reference(logits, bias, cfg)
    for t in range(64):
        assert sorted(ids[t].tolist()) == ref_ids[t]
        for e, wt in zip(ids[t].tolist(), w[t].tolist()):
            assert wt == pytest.approx(ref_w[t][e], rel=1e-5)
    # ids come out in descending biased score
    biased = torch.sigmoid(logits) + bias
    assert (biased.gather(1, ids).diff(dim=1) <= 0).all()


def test_bias_changes_selection_not_weights():
    cfg = _cfg(n_group=1, topk_group=1)
    logits = torch.linspace(-1, 1, 32)[None]
    ids0, w0 = _route_logits(logits, cfg, torch.zeros(32))
    assert sorted(ids0[0].tolist()) == [28, 29, 30, 31]
    bias = torch.zeros(32)
    bias[3] = 1.0                       # lifts expert 3 into the top-4 for selection only
    ids1, w1 = _route_logits(logits, cfg, bias)
    assert sorted(ids1[0].tolist()) == [3, 29, 30, 31]
    s = torch.sigmoid(logits[0])
    expect = s[ids1[0]] / s[ids1[0]].sum() * 2.5     # unbiased scores of the chosen experts
    torch.testing.assert_close(w1[0], expect)
    # a bias that does not change the selection leaves the weights bit-identical
    ids2, w2 = _route_logits(logits, cfg, torch.full((32,), 0.01) * (torch.arange(32) >= 28))
    assert sorted(ids2[0].tolist()) == sorted(ids0[0].tolist())
    order = ids0[0].argsort(), ids2[0].argsort()
    assert torch.equal(w0[0][order[0]], w2[0][order[1]])
    # the reference has no switch for the bias: a config key that disables it changes nothing
    ids3, _ = _route_logits(logits, _cfg(n_group=1, topk_group=1, moe_router_enable_expert_bias=False), bias)
    assert torch.equal(ids3, ids1)


def test_weights_normalised_exactly_when_top_k_above_one():
    """As the reference: norm_topk_prob in config.json is ignored; top-1 weights are the scaled score."""
    logits = torch.randn(5, 32, generator=torch.Generator().manual_seed(1))
    ids, w = _route_logits(logits, _cfg(norm_topk_prob=False))
    torch.testing.assert_close(w.sum(-1), torch.full((5,), 2.5))
    ids, w = _route_logits(logits, _cfg(num_experts_per_tok=1))
    torch.testing.assert_close(w, 2.5 * torch.sigmoid(logits).gather(1, ids))


def test_ties_go_to_lower_index_and_masked_groups_never_chosen():
    cfg = _cfg()
    ids, _ = _route_logits(torch.zeros(2, 32), cfg)
    assert ids.tolist() == [[0, 1, 2, 3]] * 2          # groups 0, 1 kept; experts by index
    # all biased scores negative: the masked groups (score -inf) still lose
    logits = torch.zeros(1, 32)
    logits[0, 8:24] = 1.0                              # groups 1 and 2 are the best
    ids, _ = _route_logits(logits, cfg, torch.full((32,), -3.0))
    assert all(8 <= e < 24 for e in ids[0].tolist())


def test_empty_and_bad_shapes():
    cfg = _cfg()
    ids, w = _route_logits(torch.zeros(0, 32), cfg)
    assert ids.shape == (0, 4) and w.shape == (0, 4)
    with pytest.raises(ValueError):
        route(torch.zeros(3, 16), torch.zeros(32, 8), None, cfg)
