"""Time to build random weights, old way vs chunked thread pool, side by side in one run (prints; asserts nothing).

    python benchmarks/random_weights.py --model llada2.0-mini --num-layers 2 [--threads N] [--dtype bfloat16]
    python benchmarks/random_weights.py --model llada2.0-mini --num-layers 5 --device cuda   # GPU benchmark shape

Three builds of the same (model, layers, dtype, device), each timed with a wall clock from nothing to the
finished (non-expert state on --device, routed experts in host stacks) pair, the best of --repeat runs (after
one warm-up build of the tiny preset each, so that library start-up is not counted):

  old       the former runtime/model.py + checkpoint.py code, kept here as the baseline: one generator per
            tensor, the whole tensor drawn in float32 on one core, scaled, every expert stack drawn in float32
            and then copied into the ``dtype`` host stacks (torch's own threads only for the scale and copies)
  new x1    runtime.random_weights.random_weights on a pool of 1 thread (what chunking alone gives)
  new xN    the same on a pool of --threads threads (default: torch.get_num_threads())

The old build draws other values (another seed scheme), so only the two new builds are compared, bitwise. One
build is held at a time; the old one also holds a float32 copy of one expert stack (1 GiB at LLaDA2.0-mini
width) and of each non-expert tensor in turn on top of its result; pick --num-layers to fit.
On a VM the first touch of memory can cost more than the drawing (page faults: system time); the old build
runs first, so the new ones reuse memory it has touched; ``THP_MEM_ALLOC_ENABLE=1`` (torch's huge pages for
CPU tensors) cut the page faults ~75x here (1.14 M to 15 k for a 3-layer LLaDA2.0-mini shape).
"""
from __future__ import annotations

import gc
import hashlib
import sys
import time
import zlib
from pathlib import Path
from typing import Callable, Sequence

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

import torch  # noqa: E402

from benchmarks._checks import at_least  # noqa: E402
from offload.model_spec import ModelSpec  # noqa: E402
from offload.cli import Parser  # noqa: E402
from offload.errors import TideError, run_cli  # noqa: E402
from runtime.checkpoint import ExpertWeights  # noqa: E402
from runtime.checkpoint_layout import EXPERT_PROJS, expert_proj_shape, is_expert_bias, non_expert_shapes  # noqa: E402
from runtime.config import RuntimeConfig  # noqa: E402
from runtime.random_weights import random_weights  # noqa: E402

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}
Weights = tuple[dict[str, torch.Tensor], ExpertWeights]


# ---- the former implementation (runtime/model.py and runtime/checkpoint.py before chunking) ---------------
def _old_tensor(name: str, shape: tuple[int, ...], seed: int) -> torch.Tensor:
    """One float32 tensor from one generator seeded by (seed, crc32(name)), as the old ``_random_tensor``."""
    g = torch.Generator()
    g.manual_seed((seed * 1_000_003 + zlib.crc32(name.encode())) % (2**63))
    if name.endswith("norm.weight"):
        return 1.0 + 0.05 * torch.randn(shape, generator=g)
    if is_expert_bias(name):
        return 0.05 * torch.randn(shape, generator=g)
    if name.endswith("word_embeddings.weight"):
        return torch.randn(shape, generator=g)
    return shape[-1] ** -0.5 * torch.randn(shape, generator=g)


def old_random_weights(cfg: RuntimeConfig, seed: int, device: torch.device, dtype: torch.dtype) -> Weights:
    """The old ``random_weights``: float32 non-expert state cast onto ``device``; float32 expert stacks, one
    (layer, proj) at a time, copied into freshly allocated ``dtype`` host stacks (pinned on CUDA)."""
    non_expert = {n: _old_tensor(n, shape, seed).to(device=device, dtype=dtype)
                  for n, shape in non_expert_shapes(cfg).items()}
    experts = ExpertWeights.allocate(cfg, dtype, device.type == "cuda")
    for m in range(cfg.spec.num_moe_layers):
        layer = cfg.spec.first_k_dense_replace + m
        for proj in EXPERT_PROJS:
            stack = _old_tensor(f"model.layers.{layer}.mlp.experts.{proj}",
                                (cfg.spec.num_experts, *expert_proj_shape(cfg, proj)), seed)
            experts[m].proj(proj).copy_(stack)
            del stack
    return non_expert, experts


# ---- timing -----------------------------------------------------------------------------------------------
def timed(build: Callable[[], Weights], device: torch.device, repeat: int) -> tuple[float, Weights]:
    """(best wall seconds of ``repeat`` builds, last result); CUDA is synchronised so that uploads of the
    non-expert state count. The previous result is freed before each build: two at once may not fit."""
    best, out = float("inf"), None
    for _ in range(repeat):
        out = None
        gc.collect()
        t0 = time.perf_counter()
        out = build()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        best = min(best, time.perf_counter() - t0)
    return best, out


def warm_up(device: torch.device, dtype: torch.dtype, threads: int) -> None:
    """One tiny build of each kind: torch's kernels, OpenMP and the thread pool start outside the timing."""
    tiny = RuntimeConfig.load("llada2-tiny")
    old_random_weights(tiny, 0, device, dtype)
    for t in sorted({1, threads}):
        random_weights(tiny, 0, device=device, dtype=dtype, threads=t)


def digest(weights: Weights) -> str:
    """BLAKE2b of every tensor's bytes in a fixed order: two builds are compared by digest, so that only one is
    held at a time (both may not fit, and on a VM fresh memory costs more to touch than reused memory)."""
    h = hashlib.blake2b(digest_size=16)
    non_expert, experts = weights
    tensors = [non_expert[n] for n in sorted(non_expert)] + [l.proj(p) for l in experts.layers for p in EXPERT_PROJS]
    for t in tensors:
        raw = t.detach().cpu().contiguous().view(-1)
        h.update(raw.view(torch.int16 if raw.element_size() == 2 else torch.int32).numpy().data)
    return h.hexdigest()


def elements(cfg: RuntimeConfig) -> int:
    """Random values drawn per build: every non-expert tensor and every routed expert."""
    s = cfg.spec
    return s.non_expert_params + s.num_moe_layers * s.num_experts * s.expert_params


def main(argv: Sequence[str] | None = None) -> int:
    p = Parser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="llada2.0-mini")
    p.add_argument("--num-layers", type=int, default=2)
    p.add_argument("--threads", type=int, default=None, help="pool size of the new build (default: torch's threads)")
    p.add_argument("--dtype", default="bfloat16", choices=sorted(DTYPES))
    p.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--repeat", type=int, default=1, help="builds per kind; the fastest is printed")
    p.add_argument("--skip-old", action="store_true", help="time only the new builds (the old one is slow)")
    a = p.parse_args(argv)
    # checked before the warm-up builds: --threads 0 would otherwise mean "torch's threads" without a word, and
    # --repeat 0 would time nothing
    at_least("--threads", a.threads)
    at_least("--repeat", a.repeat)
    if a.device == "cuda" and not torch.cuda.is_available():
        raise TideError("--device cuda: torch sees no CUDA device here (torch.cuda.is_available() is false)")
    ModelSpec.load(a.model)  # an unknown name, a folder without config.json: one line, before any work
    cfg = RuntimeConfig.load(a.model, num_layers=a.num_layers)
    device, dtype = torch.device(a.device), DTYPES[a.dtype]
    threads = a.threads or torch.get_num_threads()
    n = elements(cfg)
    s = cfg.spec
    print(f"{s.name}: {s.num_layers} layers ({s.num_moe_layers} MoE x {s.num_experts} experts), {n / 1e9:.2f} G "
          f"values, {a.dtype}, device {a.device}; torch threads {torch.get_num_threads()}, pool {threads}")
    warm_up(device, dtype, threads)
    print(f"{'build':<10}{'seconds':>10}{'M values/s':>12}{'speed-up':>10}   (speed-up: against the first row)")
    base = None
    if not a.skip_old:
        base, out = timed(lambda: old_random_weights(cfg, a.seed, device, dtype), device, a.repeat)
        del out
        print(f"{'old':<10}{base:>10.2f}{n / base / 1e6:>12.0f}{1.0:>10.2f}")
    one_s, out = timed(lambda: random_weights(cfg, a.seed, device=device, dtype=dtype, threads=1), device, a.repeat)
    one = digest(out)
    del out
    print(f"{'new x1':<10}{one_s:>10.2f}{n / one_s / 1e6:>12.0f}{(base or one_s) / one_s:>10.2f}")
    many_s, out = timed(lambda: random_weights(cfg, a.seed, device=device, dtype=dtype, threads=threads), device,
                        a.repeat)
    many = digest(out)
    del out
    print(f"{f'new x{threads}':<10}{many_s:>10.2f}{n / many_s / 1e6:>12.0f}{(base or one_s) / many_s:>10.2f}")
    print(f"new x1 and new x{threads} bitwise identical (BLAKE2b of every tensor): {one == many}")
    return 0


if __name__ == "__main__":
    run_cli(main)
