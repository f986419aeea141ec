"""Shared fixtures: a tiny LLaDA2-MoE-shaped model, a small valid trace for it, and an import blocker."""
from __future__ import annotations

import textwrap

import numpy as np
import pytest

from offload.model_spec import ModelSpec
from offload.trace import KIND_COMMIT, KIND_DENOISE, model_header
from offload.trace_check import make_trace

TINY_CONFIG = {
    "model_type": "llada2_moe", "hidden_size": 16, "intermediate_size": 32, "moe_intermediate_size": 8,
    "num_hidden_layers": 3, "first_k_dense_replace": 1, "num_experts": 8, "num_experts_per_tok": 2,
    "num_shared_experts": 1, "num_attention_heads": 2, "num_key_value_heads": 1, "head_dim": 8,
    "vocab_size": 64, "n_group": 2, "topk_group": 1, "dtype": "bfloat16",
}


@pytest.fixture
def tiny_model() -> ModelSpec:
    """2 MoE layers x 8 experts, top-2."""
    return ModelSpec.from_config(TINY_CONFIG, name="tiny")


def build_tiny_trace(model: ModelSpec, with_topk: bool = True, seed: int = 0):
    """Block-cache trace: 2 blocks of 4 tokens, 2 denoise steps + 1 commit each (6 steps, 24 tokens)."""
    rng = np.random.default_rng(seed)
    L, E, k = model.num_moe_layers, model.num_experts, model.top_k
    block = [0, 0, 0, 1, 1, 1]
    step_in_block = [0, 1, 0, 0, 1, 0]
    kind = [KIND_DENOISE, KIND_DENOISE, KIND_COMMIT] * 2
    fwd = [4, 4, 4, 4, 4, 4]
    ctx = [8, 8, 8, 12, 12, 12]
    committed = [2, 2, 0, 3, 1, 0]
    n = sum(fwd)
    ids = np.stack([np.stack([rng.choice(E, k, replace=False) for _ in range(L)]) for _ in range(n)])
    step_of_tok = np.repeat(np.arange(len(fwd)), fwd)
    counts = np.zeros((len(fwd), L, E), dtype=np.int64)
    np.add.at(counts, (step_of_tok[:, None, None], np.arange(L)[None, :, None], ids), 1)
    header = {"version": 1, "model": model_header(model),
              "generation": {"mode": "block-cache", "block_length": 4, "steps": 2, "threshold": 0.95,
                             "gen_length": 8, "prompt_length": 4},
              "origin": {"kind": "synthetic", "seed": seed}}
    return make_trace(header, counts, block=block, step_in_block=step_in_block, tokens_forwarded=fwd,
                      context_tokens=ctx, tokens_committed=committed, kind=kind,
                      topk_ids=ids if with_topk else None)


@pytest.fixture
def tiny_trace_factory(tiny_model):
    """Call with ``with_topk=...`` (and optionally ``seed=``) for a fresh valid trace of ``tiny_model``."""
    return lambda with_topk=True, seed=0: build_tiny_trace(tiny_model, with_topk=with_topk, seed=seed)


def blocker_source(modules) -> str:
    """Python source that makes importing any of ``modules`` fail, as on a GPU machine that lacks them. The
    finder returns a spec whose loading raises, so probing for a module (as torch does) still works. It raises
    ``ModuleNotFoundError``, as a missing module does: pytest >= 9's ``importorskip`` skips on that, not on a
    plain ``ImportError`` (which it takes for a broken install)."""
    return textwrap.dedent(f"""
        import importlib.abc, importlib.machinery, sys
        class _Block(importlib.abc.MetaPathFinder, importlib.abc.Loader):
            def find_spec(self, name, path=None, target=None):
                if name.split(".")[0] in {tuple(modules)!r}:
                    return importlib.machinery.ModuleSpec(name, self)
            def create_module(self, spec):
                raise ModuleNotFoundError("not on the GPU machine: " + spec.name, name=spec.name)
            def exec_module(self, module):
                raise ModuleNotFoundError("blocked: " + module.__name__, name=module.__name__)
        sys.meta_path.insert(0, _Block())
    """)


@pytest.fixture(autouse=True, scope="module")
def one_torch_thread(request):
    """Runtime and validation tests run torch on one thread: their matmuls are tiny, and on this 2-core machine
    OpenMP wake-ups made them 30-50x slower with the default threads; restored afterwards. Module scope, so it
    is in force before any module-scoped fixture computes a reference (bit-identical results need the same
    thread count: the reduction order of a matmul depends on it)."""
    if request.path.parent.name not in ("runtime", "validate"):
        yield
        return
    import torch  # here, not at the top: the simulator's tests need no torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def import_blocker():
    return blocker_source
