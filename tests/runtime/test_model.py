"""The PyTorch LLaDA2-MoE (runtime/model.py) and the all-resident reference experts, on the tiny preset."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from runtime.checkpoint_layout import checkpoint_shapes, non_expert_shapes
from runtime.config import RuntimeConfig
from runtime.model import LLaDA2MoE, apply_rotary, block_causal_mask, rotary_cos_sin
from runtime.random_weights import random_state, random_weights
from reference_experts import LocalExperts

SEED = 7


@pytest.fixture(scope="module")
def cfg() -> RuntimeConfig:
    return RuntimeConfig.load("llada2-tiny")


@pytest.fixture(scope="module")
def weights(cfg):
    return random_weights(cfg, SEED)


@pytest.fixture(scope="module")
def model(cfg, weights) -> LLaDA2MoE:
    non_expert, experts = weights
    return LLaDA2MoE.from_state(cfg, non_expert, LocalExperts(experts))


class LoopExperts:
    """The naive reference: for each token and each of its k experts, w * expert(x), summed."""

    def __init__(self, experts, record: list | None = None):
        self.experts, self.record = experts, record

    def forward(self, moe_layer, x, topk_ids, topk_weights):
        if self.record is not None:
            self.record.append((moe_layer, topk_ids.clone()))
        lx = self.experts[moe_layer]
        out = torch.zeros_like(x)
        for t in range(x.shape[0]):
            for j in range(topk_ids.shape[1]):
                e = int(topk_ids[t, j])
                y = F.linear(F.silu(F.linear(x[t], lx.gate[e])) * F.linear(x[t], lx.up[e]), lx.down[e])
                out[t] += topk_weights[t, j] * y
        return out


def _tokens(n: int, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, 510, (n,), generator=torch.Generator().manual_seed(seed))


def test_parameter_names_and_sizes_match_checkpoint_and_spec(cfg, model):
    names = set(model.state_dict())
    assert names == set(non_expert_shapes(cfg))
    assert {"model.word_embeddings.weight", "model.layers.0.attention.query_key_value.weight",
            "model.layers.0.attention.query_layernorm.weight", "model.layers.0.mlp.gate_proj.weight",
            "model.layers.1.mlp.gate.weight", "model.layers.1.mlp.gate.expert_bias",
            "model.layers.1.mlp.shared_experts.down_proj.weight", "model.norm.weight", "lm_head.weight"} <= names
    assert sum(t.numel() for t in model.state_dict().values()) == cfg.spec.non_expert_params
    s = cfg.spec
    routed = sum(torch.Size(v).numel() for k, v in checkpoint_shapes(cfg).items() if ".experts." in k)
    assert routed == s.num_moe_layers * s.num_experts * s.expert_params
    assert model.state_dict()["model.layers.1.mlp.gate.expert_bias"].dtype == torch.float32
    # a plain load_state_dict of the non-expert part of a full random state works
    state = random_state(cfg, SEED)
    fresh = LLaDA2MoE(cfg)
    fresh.load_state_dict({k: v for k, v in state.items() if ".experts." not in k})
    assert not any(p.requires_grad for p in fresh.parameters())


def test_rotary_touches_only_first_rotary_dims(cfg):
    r, d = cfg.rotary_dim, cfg.spec.head_dim
    assert 0 < r < d
    x = torch.randn(3, 10, d, generator=torch.Generator().manual_seed(0))
    pos = torch.arange(10) * 37
    cos, sin = rotary_cos_sin(pos, r, cfg.rope_theta)
    y = apply_rotary(x, cos, sin)
    assert torch.equal(y[..., r:], x[..., r:])
    assert torch.allclose(y[:, 0], x[:, 0])                      # position 0: identity
    assert not torch.allclose(y[:, 1:, :r], x[:, 1:, :r])
    torch.testing.assert_close(y[..., :r].norm(dim=-1), x[..., :r].norm(dim=-1))  # a rotation
    # relative: <rot(q, m), rot(k, n)> depends on m - n only
    q, k = x[0, 0], x[1, 0]

    def dot(m, n):
        c, s = rotary_cos_sin(torch.tensor([m, n]), r, cfg.rope_theta)
        rq, rk = apply_rotary(torch.stack([q, k]), c, s)
        return (rq * rk).sum()

    torch.testing.assert_close(dot(5, 2), dot(105, 102), rtol=1e-4, atol=1e-4)
    assert not torch.isclose(dot(5, 2), dot(5, 3), rtol=1e-3)


def test_block_causal_mask():
    m = block_causal_mask(6, 2)
    assert m.dtype == torch.bool and m.shape == (6, 6)
    assert m[0].tolist() == [True, True, False, False, False, False]
    assert m[3].tolist() == [True, True, True, True, False, False]
    assert m[5].all()


def test_later_blocks_do_not_change_earlier_logits(model):
    bl, n = 8, 32
    ids, pos = _tokens(n), torch.arange(n)
    mask = block_causal_mask(n, bl)
    a = model(ids, pos, mask)
    changed = ids.clone()
    changed[24:] = _tokens(8, seed=5)
    b = model(changed, pos, mask)
    assert a.shape == (n, 512) and a.dtype == torch.float32
    torch.testing.assert_close(a[:24], b[:24], rtol=0, atol=1e-5)
    assert not torch.allclose(a[24:], b[24:], atol=1e-4)
    # without the mask the change leaks backwards
    assert not torch.allclose(model(ids, pos)[:24], model(changed, pos)[:24], atol=1e-4)


def test_kv_cache_matches_full_prefix_forward(model):
    bl, n = 8, 32
    ids, pos = _tokens(n, seed=1), torch.arange(n)
    full = model(ids, pos, block_causal_mask(n, bl))
    # prefill three blocks at once, then the last block against the cache
    cache = model.new_cache()
    empty = model(ids[:24], pos[:24], block_causal_mask(24, bl), cache=cache, write_cache=True,
                  logits_rows=slice(0, 0))
    assert empty.shape == (0, 512) and cache.length == 24
    last = model(ids[24:], pos[24:], None, cache=cache)
    assert cache.length == 24                      # a forward without write_cache commits nothing
    torch.testing.assert_close(last, full[24:], rtol=0, atol=1e-5)
    # the scratch slots are rewritten, not stacked: a repeat gives the same result
    torch.testing.assert_close(model(ids[24:], pos[24:], None, cache=cache), last, rtol=0, atol=0)
    # block by block (one commit per block, capacity growth included) gives the same
    cache2 = model.new_cache(capacity=4)
    for lo in range(0, 24, bl):
        model(ids[lo:lo + bl], pos[lo:lo + bl], None, cache=cache2, write_cache=True, logits_rows=slice(0, 0))
    torch.testing.assert_close(model(ids[24:], pos[24:], cache=cache2), full[24:], rtol=0, atol=1e-5)
    # an explicit [T, cache + T] mask of all True is the same as None
    mask = torch.ones(8, 32, dtype=torch.bool)
    torch.testing.assert_close(model(ids[24:], pos[24:], mask, cache=cache2), last, rtol=0, atol=1e-5)
    cache2.truncate(16)
    torch.testing.assert_close(model(ids[16:24], pos[16:24], cache=cache2), full[16:24], rtol=0, atol=1e-5)


def test_logits_rows(model):
    ids, pos = _tokens(16, seed=2), torch.arange(16)
    full = model(ids, pos)
    torch.testing.assert_close(model(ids, pos, logits_rows=slice(4, 9)), full[4:9])
    torch.testing.assert_close(model(ids, pos, logits_rows=torch.tensor([15, 0])), full[[15, 0]])
    assert model(ids, pos, logits_rows=slice(3, 3)).shape == (0, 512)


def test_reference_experts_match_loop_and_routing_is_spread(cfg, weights):
    non_expert, experts = weights
    record: list = []
    loop_model = LLaDA2MoE.from_state(cfg, non_expert, LoopExperts(experts, record))
    fast_model = LLaDA2MoE.from_state(cfg, non_expert, LocalExperts(experts))
    ids, pos = _tokens(24, seed=3), torch.arange(24)
    torch.testing.assert_close(fast_model(ids, pos), loop_model(ids, pos), rtol=1e-5, atol=1e-5)
    assert [m for m, _ in record] == list(range(cfg.spec.num_moe_layers))
    for _, topk in record:                         # random weights route to many experts, not a few
        assert topk.unique().numel() >= cfg.spec.num_experts // 2


def test_missing_experts_and_bad_inputs(cfg, weights):
    m = LLaDA2MoE.from_state(cfg, weights[0])
    with pytest.raises(RuntimeError, match="no routed experts"):
        m(_tokens(4), torch.arange(4))
    m.set_experts(LocalExperts(weights[1]))
    with pytest.raises(ValueError, match="attn_mask"):
        m(_tokens(4), torch.arange(4), torch.ones(4, 5, dtype=torch.bool))
    with pytest.raises(ValueError, match="write_cache"):
        m(_tokens(4), torch.arange(4), write_cache=True)


def test_bfloat16_runs(cfg):
    non_expert, experts = random_weights(cfg, SEED, dtype=torch.bfloat16)
    assert non_expert["model.layers.1.mlp.gate.expert_bias"].dtype == torch.bfloat16  # as the reference holds it
    m = LLaDA2MoE.from_state(cfg, non_expert, LocalExperts(experts), dtype=torch.bfloat16)
    assert m.model.layers[1].mlp.gate.expert_bias.dtype == torch.bfloat16
    out = m(_tokens(8), torch.arange(8), block_causal_mask(8, 4))
    assert out.dtype == torch.float32 and torch.isfinite(out).all()
