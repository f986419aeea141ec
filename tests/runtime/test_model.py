"""The PyTorch LLaDA2-MoE (runtime/model.py) and the all-resident reference executor, on the tiny preset."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import runtime.model as model_mod
from runtime.checkpoint import random_weights
from runtime.config import RuntimeConfig
from runtime.model import (RANDOM_CHUNK, LLaDA2MoE, apply_rotary, block_causal_mask, checkpoint_shapes,
                           non_expert_shapes, random_fill_, random_stack_name, random_state, random_tensor,
                           rotary_cos_sin)
from runtime.reference_experts import LocalExperts

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


def test_reference_executor_matches_loop_and_routing_is_spread(cfg, weights):
    non_expert, experts = weights
    record: list = []
    loop_model = LLaDA2MoE.from_state(cfg, non_expert, LoopExperts(experts, record))
    fast_model = LLaDA2MoE.from_state(cfg, non_expert, LocalExperts(experts))
    ids, pos = _tokens(24, seed=3), torch.arange(24)
    torch.testing.assert_close(fast_model(ids, pos), loop_model(ids, pos), rtol=1e-5, atol=1e-5)
    assert [m for m, _ in record] == list(range(cfg.spec.num_moe_layers))
    for _, topk in record:                         # random weights route to many experts, not a few
        assert topk.unique().numel() >= cfg.spec.num_experts // 2


def test_missing_executor_and_bad_inputs(cfg, weights):
    m = LLaDA2MoE.from_state(cfg, weights[0])
    with pytest.raises(RuntimeError, match="executor"):
        m(_tokens(4), torch.arange(4))
    m.set_executor(LocalExperts(weights[1]))
    with pytest.raises(ValueError, match="attn_mask"):
        m(_tokens(4), torch.arange(4), torch.ones(4, 5, dtype=torch.bool))
    with pytest.raises(ValueError, match="write_cache"):
        m(_tokens(4), torch.arange(4), write_cache=True)


def test_bfloat16_runs(cfg):
    non_expert, experts = random_weights(cfg, SEED, dtype=torch.bfloat16)
    assert non_expert["model.layers.1.mlp.gate.expert_bias"].dtype == torch.float32
    m = LLaDA2MoE.from_state(cfg, non_expert, LocalExperts(experts), dtype=torch.bfloat16)
    out = m(_tokens(8), torch.arange(8), block_causal_mask(8, 4))
    assert out.dtype == torch.float32 and torch.isfinite(out).all()


# ---- random weights: definition, independence of threads and build order, scales --------------------------
SMALL_CHUNK = 4096  # many chunks per tiny tensor, so a pool of 3 really interleaves them


def _documented_scale(name: str, shape: tuple[int, ...]) -> tuple[float, float]:
    """(mean, std) as random_state's docstring states them, written out independently of the code."""
    if name.endswith("norm.weight"):
        return 1.0, 0.05
    if name.endswith("expert_bias"):
        return 0.0, 0.05
    if name.endswith("word_embeddings.weight"):
        return 0.0, 1.0
    return 0.0, shape[-1] ** -0.5


def _assert_same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    for name in a:
        assert a[name].dtype == b[name].dtype and torch.equal(a[name], b[name]), name


def test_random_values_do_not_depend_on_thread_count(cfg, monkeypatch):
    monkeypatch.setattr(model_mod, "RANDOM_CHUNK", SMALL_CHUNK)
    one, three = random_state(cfg, SEED, threads=1), random_state(cfg, SEED, threads=3)
    _assert_same(one, three)
    assert not torch.equal(one["lm_head.weight"], random_state(cfg, SEED + 1, experts=False)["lm_head.weight"])
    # the split build (bf16, drawn straight into the host stacks, cast chunk by chunk) holds the same values
    non_expert, experts = random_weights(cfg, SEED, dtype=torch.bfloat16, threads=3)
    for name, t in non_expert.items():
        want = one[name] if name.endswith("expert_bias") else one[name].to(torch.bfloat16)
        assert t.dtype == want.dtype and torch.equal(t, want), name
    e = cfg.spec.num_experts - 1
    assert torch.equal(experts[1].down[e], one[f"model.layers.2.mlp.experts.{e}.down_proj.weight"].bfloat16())


def test_random_chunk_is_its_own_stream(monkeypatch):
    """Chunk c of a tensor is exactly a fresh draw seeded from (seed, name, c), whatever else is built with it."""
    monkeypatch.setattr(model_mod, "RANDOM_CHUNK", SMALL_CHUNK)
    name, shape = "model.layers.5.mlp.gate_proj.weight", (5, 2000)        # 2.4 chunks, std 2000^-0.5
    alone = random_tensor(name, shape, SEED, threads=1).view(-1)
    together = {"model.norm.weight": torch.empty(3 * SMALL_CHUNK), name: torch.empty(shape)}
    random_fill_(together, SEED, threads=3)
    assert torch.equal(together[name].view(-1), alone)
    for c in range(3):
        g = torch.Generator().manual_seed(model_mod._chunk_seed(SEED, name, c))
        piece = alone[c * SMALL_CHUNK:(c + 1) * SMALL_CHUNK]
        assert torch.equal(piece, torch.empty(piece.numel()).normal_(0.0, 2000 ** -0.5, generator=g)), c


def test_random_names_chunks_and_seeds_differ():
    n = RANDOM_CHUNK + 1000                  # the module's real chunk size: a second chunk of 1000 elements
    a = random_tensor("model.layers.1.mlp.experts.gate_proj", (n,), SEED)
    assert not torch.equal(a[:1000], a[RANDOM_CHUNK:])                                 # chunk 0 vs chunk 1
    assert not torch.equal(a, random_tensor("model.layers.1.mlp.experts.up_proj", (n,), SEED))   # name
    assert not torch.equal(a[-1000:], random_tensor("model.layers.1.mlp.experts.gate_proj", (n,), SEED + 1)[-1000:])
    # golden values: RANDOM_CHUNK and the chunk seeds define every random weight; changing either must be
    # deliberate (tolerance: torch's portable normal_ differs from its vectorised one in the last bits)
    g = random_tensor("golden.norm.weight", (RANDOM_CHUNK + 16,), 0)
    torch.testing.assert_close(g[:4], torch.tensor([0.97345811, 0.99221748, 1.02909529, 1.00996530]),
                               rtol=0, atol=1e-5)
    torch.testing.assert_close(g[RANDOM_CHUNK:RANDOM_CHUNK + 4],
                               torch.tensor([0.92960036, 1.00042880, 0.98357165, 0.98793733]), rtol=0, atol=1e-5)


def test_random_scales_are_the_documented_ones(cfg):
    """Pooled per kind, (x - mean) / std is N(0, 1): mean and std within 5 standard errors."""
    state = random_state(cfg, SEED)
    pooled: dict[str, list[torch.Tensor]] = {}
    for name, t in state.items():
        mean, std = _documented_scale(name, tuple(t.shape))
        kind = "norm" if mean == 1.0 else "bias" if name.endswith("expert_bias") else \
            "embedding" if std == 1.0 else f"projection in={t.shape[-1]}"
        pooled.setdefault(kind, []).append(((t - mean) / std).view(-1))
    assert {"norm", "bias", "embedding", "projection in=128", "projection in=64"} <= pooled.keys()
    for kind, parts in pooled.items():
        z = torch.cat(parts).double()
        n = z.numel()
        assert abs(z.mean().item()) < 5 / n ** 0.5, kind
        assert abs(z.std().item() - 1) < 5 / (2 * n) ** 0.5, kind


def test_random_fill_refuses_bad_targets():
    with pytest.raises(ValueError, match="contiguous floating CPU"):
        random_fill_({"x.weight": torch.empty(4, 4).t()}, SEED)
    with pytest.raises(ValueError, match="contiguous floating CPU"):
        random_fill_({"x.weight": torch.empty(4, dtype=torch.int64)}, SEED)
    with pytest.raises(ValueError, match="threads"):
        random_fill_({"x.weight": torch.empty(4)}, SEED, threads=0)


def test_random_stack_name_is_the_expert_rows_stream(cfg):
    # expert e's checkpoint tensor is row e of the stack drawn under random_stack_name
    state = random_state(cfg, SEED)
    stack = random_tensor(random_stack_name(cfg, 2, "up_proj"), (cfg.spec.num_experts, 64, 128), SEED)
    assert torch.equal(stack[5], state["model.layers.3.mlp.experts.5.up_proj.weight"])
