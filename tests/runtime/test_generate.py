"""Block-diffusion generation on the tiny preset (CPU, float32): losslessness of every policy, exactness of
the block cache, counters equal to the simulator's on the recorded trace, and the CLI."""
from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import torch

from runtime.checkpoint import write_checkpoint
from runtime.config import RuntimeConfig
from runtime.diffusion import GenerationSettings, generate, transfer_schedule
from runtime.expert_store import ExpertStore
from runtime.model import LLaDA2MoE
from runtime.random_weights import random_state, random_weights
from offload.cost import ConstantCostModel
from offload.policies import make_policy
from offload.trace_io import read_trace
from offload.trace import KIND_COMMIT, KIND_DENOISE, KIND_PREFILL

CFG = RuntimeConfig.load("llada2-tiny")
SPEC = CFG.spec
STATE, EXPERTS = random_weights(CFG, seed=1)
POLICIES = [("all-gpu", {}), ("cpu-route", {}), ("static", {}), ("static", {"profile_steps": 3}), ("fetch-lru", {}),
            ("tide", {"tau": 1}), ("tide", {"tau": 3}),
            ("riptide", {}), ("riptide", {"prefetch": False, "balance": False}),
            ("riptide", {"cost_aware": False, "layer_budgets": False, "carry": False})]
# riptide is priced by this model in the store and in the replay alike: a copy (0.5 s) costs half a CPU expert
RIPTIDE_COST = ConstantCostModel(expert_bytes=SPEC.expert_bytes, token_bytes=SPEC.token_bytes,
                                 h2d_per_byte_s=0.5 / SPEC.expert_bytes, d2h_per_byte_s=0.5 / SPEC.expert_bytes)


def policy_cost(name: str):
    return RIPTIDE_COST if name == "riptide" else None


def simulator():
    """``sim.engine.simulate``, imported here and not at module level: the engine needs simpy, which the GPU
    machine lacks, and collecting tests there must not fail on it (tests/test_imports.py)."""
    pytest.importorskip("simpy", reason="replaying through the simulator needs simpy", exc_type=ImportError)
    from sim.engine import simulate

    return simulate


def build(name: str, params: dict, budget: int = 8, mode: str = "prefix-recompute", block_length: int = 8):
    policy = make_policy(name, **params)
    store = ExpertStore(SPEC, [{"gate": l.gate, "up": l.up, "down": l.down} for l in EXPERTS.layers], policy,
                        None if not policy.needs_budget else np.full(SPEC.num_moe_layers, budget),
                        device=torch.device("cpu"), dtype=torch.float32, block_length=block_length, mode=mode,
                        cost=policy_cost(name))
    return LLaDA2MoE.from_state(CFG, STATE, store), store


class LogitsTap:
    """Wraps a model to keep every forward's logits."""

    def __init__(self, model):
        self.model, self.logits = model, []

    def __call__(self, *args, **kw):
        out = self.model(*args, **kw)
        self.logits.append(out.clone())
        return out

    def new_cache(self, **kw):
        return self.model.new_cache(**kw)


PROMPT = torch.tensor([5, 17, 99, 3, 250, 7, 42, 8, 1, 2, 3, 4], dtype=torch.long)


def run(name, params, mode="prefix-recompute", budget=8, gen_length=24, **kw):
    model, store = build(name, params, budget, mode)
    tap = LogitsTap(model)
    settings = GenerationSettings(gen_length=gen_length, block_length=8, steps=4, mode=mode, **kw)
    return generate(tap, store, CFG, PROMPT, settings), tap.logits, store


def test_schedule():
    assert transfer_schedule(32, 32).tolist() == [1] * 32
    assert transfer_schedule(10, 4).tolist() == [3, 3, 2, 2]


@pytest.mark.parametrize("mode", ["prefix-recompute", "block-cache"])
def test_every_policy_is_lossless(mode):
    ref, ref_logits, _ = run("all-gpu", {}, mode)
    for name, params in POLICIES[1:]:
        for budget in (1, 8):
            res, logits, store = run(name, params, mode, budget)
            assert res.tokens == ref.tokens, (name, params, budget)
            assert len(logits) == len(ref_logits)
            assert all(torch.equal(a, b) for a, b in zip(logits, ref_logits)), (name, params, budget)
            np.testing.assert_array_equal(res.trace.counts, ref.trace.counts)
    # the comparison is not vacuous: the offloaded runs really moved and offloaded work
    assert store.counters().cpu_assignments > 0 or store.counters().promotions > 0


def test_block_cache_equals_prefix_recompute():
    a, _, _ = run("all-gpu", {}, "prefix-recompute", gen_length=32)
    b, _, _ = run("all-gpu", {}, "block-cache", gen_length=32)
    assert a.tokens == b.tokens
    assert torch.equal(a.sequence, b.sequence)
    kinds = b.trace.kind
    assert kinds[0] == KIND_PREFILL and (kinds == KIND_COMMIT).sum() == 32 // 8 + 1 - 1  # blocks - 1 (the last has none)
    assert set(np.unique(a.trace.kind)) == {KIND_DENOISE}
    # block-cache forwards only the block; prefix-recompute the whole prefix
    assert b.trace.tokens_forwarded[kinds == KIND_DENOISE].max() == 8
    assert a.trace.tokens_forwarded.max() == PROMPT.numel() // 8 * 8 + 32 + 8 - 8 * (PROMPT.numel() % 8 == 0)


def test_sampling_is_seeded():
    a, _, _ = run("all-gpu", {}, temperature=1.0, do_sample=True, seed=3)
    b, _, _ = run("tide", {"tau": 2}, temperature=1.0, do_sample=True, seed=3)
    c, _, _ = run("all-gpu", {}, temperature=1.0, do_sample=True, seed=4)
    assert a.tokens == b.tokens and a.tokens != c.tokens


@pytest.mark.parametrize("name,params", POLICIES)
@pytest.mark.parametrize("mode", ["prefix-recompute", "block-cache"])
def test_counters_equal_the_simulators(name, params, mode):
    res, _, store = run(name, params, mode, budget=6)
    cost = policy_cost(name) or ConstantCostModel(expert_bytes=SPEC.expert_bytes, token_bytes=SPEC.token_bytes)
    sim = simulator()(res.trace, make_policy(name, **params), cost, 6)
    assert store.counters() == sim.counters  # one record type, every counter equal (hit_ratio derives from them)


def _cli(*args, timeout=300):
    return subprocess.run([sys.executable, "-m", "runtime.generate", "--quiet", *args], capture_output=True,
                          text=True, timeout=timeout)


def test_cli_defaults_and_outputs(tmp_path):
    metrics, trace = tmp_path / "m.json", tmp_path / "t.npz"
    proc = _cli("--gen-length", "16", "--block-length", "8", "--threads", "1", "--metrics-out", str(metrics),
                "--trace-out", str(trace))
    assert proc.returncode == 0, proc.stderr
    assert "meaningless" in proc.stdout and "tokens/s" in proc.stdout
    m = json.loads(metrics.read_text())
    for key in ("tokens_per_s", "h2d_bytes", "d2h_bytes", "hit_ratio", "promotions", "demotions",
                "cpu_assignments", "gpu_assignments", "tokens", "step_times_s"):
        assert key in m
    t = read_trace(trace, model=SPEC)
    assert t.header["origin"]["kind"] == "recorded" and t.num_steps == len(m["step_times_s"])


def test_cli_loads_a_checkpoint_in_hf_layout(tmp_path):
    write_checkpoint(tmp_path / "ckpt", CFG, random_state(CFG, seed=1), shards=3)
    args = ("--gen-length", "16", "--block-length", "8", "--policy", "cpu-route", "--threads", "1", "--seed", "1")
    a = _cli("--model", str(tmp_path / "ckpt"), *args, "--dtype", "float32", "--metrics-out", str(tmp_path / "a.json"))
    assert a.returncode == 0, a.stderr
    b = _cli(*args, "--metrics-out", str(tmp_path / "b.json"))
    assert b.returncode == 0, b.stderr
    ta = json.loads((tmp_path / "a.json").read_text())["tokens"]
    tb = json.loads((tmp_path / "b.json").read_text())["tokens"]
    assert ta == tb  # same weights, same prompt ids -> same generation
    # a missing shard is a one-line error
    next((tmp_path / "ckpt").glob("model-00002-*.safetensors")).unlink()
    c = _cli("--model", str(tmp_path / "ckpt"), *args)
    assert c.returncode == 2 and c.stderr.strip().startswith("error:") and "missing" in c.stderr
    assert "\n" not in c.stderr.strip()


@pytest.mark.parametrize("args,needle", [
    (["--device", "cuda"], "CUDA"),
    (["--policy", "nope"], "unknown policy"),
    (["--policy", "tide(tau=0)"], "tau must be an integer >= 1"),
    (["--policy", "tide", "--tau", "2"], "unrecognized arguments: --tau 2"),  # argparse's errors are one line too
    (["--policy", "all-gpu", "--gpu-experts-per-layer", "4"], "--gpu-experts-per-layer would be ignored"),
    (["--policy", "tide", "--hardware", "h100-pcie5"], "decides without a cost model: --hardware would be ignored"),
    (["--gpu-experts-per-layer", "33"], "exceeds"),
    (["--mode", "block-cache", "--gen-length", "0"], "gen length"),
    (["--model", "/nonexistent/dir"], "unknown model"),
])
def test_cli_bad_input(args, needle):
    if "cuda" in args and torch.cuda.is_available():
        pytest.skip("a GPU is present")
    proc = _cli(*args, timeout=120)
    assert proc.returncode == 2, proc.stderr
    err = proc.stderr.strip()
    assert err.startswith("error:") and "\n" not in err and needle in err, err
