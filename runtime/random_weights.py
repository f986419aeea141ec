"""Random weights for LLaDA2-MoE, reproducible from (seed, tensor name) alone, in the checkpoint layout.

What a random tensor holds is defined chunk by chunk: the tensor, flattened in C order, is cut into pieces of
RANDOM_CHUNK elements, and piece c is ``torch.empty(n).normal_(mean, std, generator=g)`` in float32 with g a
fresh CPU generator seeded by _chunk_seed(seed, name, c); other dtypes hold that float32 value rounded. So the
values depend on (seed, name) only, never on build order, thread count, destination dtype or device, and the
chunks are independent work for a thread pool (torch's RNG releases the GIL). Changing RANDOM_CHUNK or
_chunk_seed changes every random weight. Caveat: torch's CPU normal_ has a vectorised path (AVX2 and AVX-512
builds, same values) and a portable one (other CPUs, e.g. aarch64) that differ in the last bits.

The same values as a full float32 state dict (:func:`random_state`, what a written checkpoint holds) or split
as the runtime loads one (:func:`random_weights`: non-expert tensors on a device, experts in host stacks).
"""
from __future__ import annotations

import hashlib
import threading
from concurrent.futures import ThreadPoolExecutor as ThreadPool  # "executor" names the executor profile only
from typing import Mapping

import torch

from runtime.checkpoint import ExpertWeights
from runtime.checkpoint_layout import (EXPERT_PROJS, expert_param_name, expert_proj_shape, is_expert_bias,
                                       non_expert_shapes)
from runtime.config import RuntimeConfig

RANDOM_CHUNK = 1 << 22   # elements per generator stream: 16 MiB of float32, ~10 ms of RNG per chunk on one core
# Random-init scales (see random_state).
_NORM_JITTER = 0.05      # norms 1 + N(0, 0.05^2): not all ones, so a mis-wired norm changes the output
_BIAS_STD = 0.05         # expert bias: small against the spread of sigmoid scores (~0.2), so it nudges selection
# A cast copy of at most ATen's GRAIN_SIZE (32768) elements runs serially in the calling thread; a larger one
# starts an OpenMP team of torch.get_num_threads() threads inside every pool worker (measured on 2 cores:
# 2 workers add 2 team threads to /proc/self/task; on 16 cores that would be 16 x 15 threads).
_CAST_BLOCK = 1 << 15


def _chunk_seed(seed: int, name: str, chunk: int) -> int:
    """Seed of chunk ``chunk`` of tensor ``name``: 32 bits of BLAKE2b over all three (torch's CPU generator is a
    Mersenne Twister that only uses the low 32 bits of its seed, so more would only pretend to be more)."""
    key = f"{seed}\x00{name}\x00{chunk}".encode()
    return int.from_bytes(hashlib.blake2b(key, digest_size=4).digest(), "little")


def _init_of(name: str, shape: tuple[int, ...]) -> tuple[float, float]:
    """(mean, std) of tensor ``name``'s values; the scales are explained in :func:`random_state`."""
    if name.endswith("norm.weight"):  # RMSNorms: input_layernorm, query_layernorm, model.norm, ...
        return 1.0, _NORM_JITTER
    if is_expert_bias(name):
        return 0.0, _BIAS_STD
    if name.endswith("word_embeddings.weight"):
        return 0.0, 1.0
    # projections [.., out, in]: std in^-0.5 keeps every activation at unit scale whatever the width
    return 0.0, shape[-1] ** -0.5


def random_stack_name(cfg: RuntimeConfig, moe_layer: int, proj: str) -> str:
    """Name under which one MoE layer's stacked routed experts [E, out, in] of ``proj`` are drawn (expert e's
    checkpoint tensor is row e of that stack)."""
    return f"model.layers.{cfg.spec.first_k_dense_replace + moe_layer}.mlp.experts.{proj}"


def _fill_chunk(flat: torch.Tensor, name: str, seed: int, chunk: int, mean: float, std: float,
                scratch: threading.local) -> None:
    """Writes chunk ``chunk`` of ``name`` into its slice of ``flat`` (1-D, CPU); float32 directly, other dtypes
    through a per-thread float32 scratch buffer, cast in serial blocks."""
    lo = chunk * RANDOM_CHUNK
    dst = flat[lo:lo + RANDOM_CHUNK]
    g = torch.Generator()
    g.manual_seed(_chunk_seed(seed, name, chunk))
    if dst.dtype == torch.float32:
        dst.normal_(mean, std, generator=g)
        return
    buf = getattr(scratch, "buf", None)
    if buf is None:
        buf = scratch.buf = torch.empty(RANDOM_CHUNK, dtype=torch.float32)
    src = buf[:dst.numel()].normal_(mean, std, generator=g)
    # one call for all blocks: serial copies in C++ with the GIL released (a Python loop over 128 blocks per
    # chunk would hold the GIL ~0.3 ms per chunk, enough for 16 workers to queue on it)
    torch._foreach_copy_(dst.split(_CAST_BLOCK), src.split(_CAST_BLOCK))


def random_fill_(targets: Mapping[str, torch.Tensor], seed: int, threads: int | None = None) -> None:
    """Fills every tensor ``targets[name]`` (CPU, contiguous, floating; pinned is fine) in place with the
    random values of ``name`` for ``seed``, all chunks of all tensors on one pool of ``threads`` threads
    (default: torch's intra-op thread count). The values do not depend on ``threads``."""
    jobs = []
    for name, t in targets.items():
        if t.device.type != "cpu" or not t.is_contiguous() or not t.is_floating_point():
            raise ValueError(f"random_fill_: {name} must be a contiguous floating CPU tensor, got {t.dtype} on "
                             f"{t.device} (contiguous: {t.is_contiguous()})")
        mean, std = _init_of(name, tuple(t.shape))
        flat = t.view(-1)
        jobs += [(flat, name, c, mean, std) for c in range(-(-flat.numel() // RANDOM_CHUNK))]
    threads = max(1, torch.get_num_threads()) if threads is None else threads  # physical cores, or as set
    if threads < 1:
        raise ValueError(f"random_fill_: threads must be >= 1, got {threads}")
    scratch = threading.local()  # one float32 chunk per worker, freed with this call

    def run(job) -> None:
        flat, name, c, mean, std = job
        _fill_chunk(flat, name, seed, c, mean, std, scratch)

    if threads == 1 or len(jobs) <= 1:
        for job in jobs:
            run(job)
        return
    with ThreadPool(max_workers=min(threads, len(jobs)), thread_name_prefix="random-weights") as pool:
        for _ in pool.map(run, jobs):  # consumed so that a worker's exception is raised here
            pass


def random_tensor(name: str, shape: tuple[int, ...], seed: int, dtype: torch.dtype = torch.float32,
                  threads: int | None = None) -> torch.Tensor:
    """A new CPU tensor holding ``name``'s random values for ``seed`` (see :func:`random_fill_`)."""
    t = torch.empty(shape, dtype=dtype)
    random_fill_({name: t}, seed, threads)
    return t


def random_state(cfg: RuntimeConfig, seed: int, experts: bool = True, threads: int | None = None
                 ) -> dict[str, torch.Tensor]:
    """A full float32 CPU state dict in the checkpoint layout, the same values for the same seed (and the same
    as :func:`random_weights`); built on ``threads`` threads (values do not depend on it).

    Scales: projections [out, in] N(0, 1/in) and embeddings N(0, 1), so activations stay at unit scale at any
    width; norms 1 + N(0, 0.05^2); expert bias N(0, 0.05^2). Why not the published N(0, 0.02^2) everywhere:
    at LLaDA2.0-mini width the layer outputs then dwarf the embeddings, the residual stream is dominated by the
    component attention averaging adds to every token alike, and every token routes to the same few experts.
    With these scales routing spreads over most experts (tested) and attention still mixes tokens strongly.
    """
    state = {name: torch.empty(shape) for name, shape in non_expert_shapes(cfg).items()}
    random_fill_(state, seed, threads)
    if experts:
        for m in range(cfg.spec.num_moe_layers):  # one layer's stacks at a time: at most that much extra memory
            layer = cfg.spec.first_k_dense_replace + m
            for proj in EXPERT_PROJS:
                shape = (cfg.spec.num_experts, *expert_proj_shape(cfg, proj))
                stack = random_tensor(random_stack_name(cfg, m, proj), shape, seed, threads=threads)
                for e in range(cfg.spec.num_experts):
                    state[expert_param_name(layer, e, proj)] = stack[e].clone()  # own storage, for safetensors
    return state


def check_memory(cfg: RuntimeConfig, dtype: torch.dtype, device: torch.device) -> None:
    """One-line TideError, before anything is allocated, when ``cfg``'s weights in ``dtype`` would not fit: the
    routed experts (and on the CPU every other weight) in the host's available memory, the other weights in the
    GPU's free memory (:meth:`RuntimeConfig.check_memory`)."""
    gpu_free = None
    if device.type == "cuda" and torch.cuda.is_available():
        gpu_free = int(torch.cuda.mem_get_info(device)[0])
    cfg.check_memory(torch.empty(0, dtype=dtype).element_size(), str(dtype).replace("torch.", ""),
                     device.type == "cuda", gpu_free)


def random_weights(cfg: RuntimeConfig, seed: int, device=None, dtype: torch.dtype = torch.float32,
                   pin: bool | None = None, threads: int | None = None
                   ) -> tuple[dict[str, torch.Tensor], ExpertWeights]:
    """The split of :func:`random_state` (same values, rounded to ``dtype``), drawn on a pool of
    ``threads`` threads (default: torch's thread count; the values do not depend on it).

    Every tensor is drawn straight into its final host buffer, chunk by chunk: routed experts into the (pinned)
    ``dtype`` host stacks, non-expert tensors into ``dtype`` CPU tensors that then go
    to ``device``. No full-size float32 copy of the experts is ever made: for a LLaDA2.0-mini shape that would
    be 3 GiB per MoE layer. ``pin`` defaults to "device is CUDA", as for a loaded checkpoint."""
    device = torch.device(device if device is not None else "cpu")
    check_memory(cfg, dtype, device)  # a config of a billion experts ends here, in one line
    host = {n: torch.empty(shape, dtype=dtype)
            for n, shape in non_expert_shapes(cfg).items()}
    experts = ExpertWeights.allocate(cfg, dtype, device.type == "cuda" if pin is None else pin)
    stacks = {random_stack_name(cfg, m, proj): experts[m].proj(proj)
              for m in range(cfg.spec.num_moe_layers) for proj in EXPERT_PROJS}
    random_fill_({**host, **stacks}, seed, threads)  # one pool over every chunk of every tensor
    return {n: t.to(device) for n, t in host.items()}, experts
