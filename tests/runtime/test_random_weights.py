"""Random weights (runtime/random_weights.py) on the tiny preset: their definition chunk by chunk, independence
of thread count and build order, the documented scales, and the split build agreeing with the full state."""
from __future__ import annotations

import pytest
import torch

import runtime.random_weights as rw_mod
from runtime.config import RuntimeConfig
from runtime.random_weights import (RANDOM_CHUNK, random_fill_, random_stack_name, random_state, random_tensor,
                                    random_weights)

SEED = 7
SMALL_CHUNK = 4096  # many chunks per tiny tensor, so a pool of 3 really interleaves them


@pytest.fixture(scope="module")
def cfg() -> RuntimeConfig:
    return RuntimeConfig.load("llada2-tiny")


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
    monkeypatch.setattr(rw_mod, "RANDOM_CHUNK", SMALL_CHUNK)
    one, three = random_state(cfg, SEED, threads=1), random_state(cfg, SEED, threads=3)
    _assert_same(one, three)
    assert not torch.equal(one["lm_head.weight"], random_state(cfg, SEED + 1, experts=False)["lm_head.weight"])
    # the split build (bf16, drawn straight into the host stacks, cast chunk by chunk) holds the same values
    non_expert, experts = random_weights(cfg, SEED, dtype=torch.bfloat16, threads=3)
    for name, t in non_expert.items():
        want = one[name].to(torch.bfloat16)  # the expert bias too: the model dtype, as the reference holds it
        assert t.dtype == want.dtype and torch.equal(t, want), name
    e = cfg.spec.num_experts - 1
    assert torch.equal(experts[1].down[e], one[f"model.layers.2.mlp.experts.{e}.down_proj.weight"].bfloat16())


def test_random_chunk_is_its_own_stream(monkeypatch):
    """Chunk c of a tensor is exactly a fresh draw seeded from (seed, name, c), whatever else is built with it."""
    monkeypatch.setattr(rw_mod, "RANDOM_CHUNK", SMALL_CHUNK)
    name, shape = "model.layers.5.mlp.gate_proj.weight", (5, 2000)        # 2.4 chunks, std 2000^-0.5
    alone = random_tensor(name, shape, SEED, threads=1).view(-1)
    together = {"model.norm.weight": torch.empty(3 * SMALL_CHUNK), name: torch.empty(shape)}
    random_fill_(together, SEED, threads=3)
    assert torch.equal(together[name].view(-1), alone)
    for c in range(3):
        g = torch.Generator().manual_seed(rw_mod._chunk_seed(SEED, name, c))
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
