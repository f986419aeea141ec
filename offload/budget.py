"""The GPU expert budget: experts resident per MoE layer, from a count or from gigabytes (no simpy here).

Budget B experts per layer costs B x L x expert_bytes of GPU memory; with the non-expert weights it must fit
the GPU:  non_expert_bytes + sum_l B_l x expert_bytes <= gpu memory. Gigabytes are GiB (2^30 bytes), as
nvidia-smi and torch report them: ``--gpu-memory-gb G`` gives B = floor(G 2^30 / (L expert_bytes)) per layer.
"""
from __future__ import annotations

import numpy as np

from offload.errors import TideError
from offload.hardware import HardwareProfile
from offload.model_spec import ModelSpec

GIB = 2**30


def resolve_budget(model: ModelSpec, hw: HardwareProfile | None = None, *, experts_per_layer: int | None = None,
                   gpu_memory_gb: float | None = None) -> np.ndarray:
    """Experts per MoE layer, as an int array [L]; raises TideError when it cannot hold one expert per layer,
    exceeds the experts a layer has, or does not fit the GPU with the non-expert weights."""
    if experts_per_layer is not None and gpu_memory_gb is not None:
        raise TideError("give the budget either as experts per layer or as GPU gigabytes, not both")
    L, E = model.num_moe_layers, model.num_experts
    if gpu_memory_gb is not None:
        if not np.isfinite(gpu_memory_gb) or gpu_memory_gb <= 0:
            raise TideError(f"GPU expert memory must be positive, got {gpu_memory_gb}")
        if hw is not None and gpu_memory_gb * GIB > hw.gpu_memory_bytes - model.non_expert_bytes:
            room = max(0.0, (hw.gpu_memory_bytes - model.non_expert_bytes) / GIB)
            raise TideError(f"--gpu-memory-gb {gpu_memory_gb:g} is more than {hw.gpu.name} has for experts: "
                            f"{hw.gpu.memory_gib:g} GiB less {model.non_expert_bytes / GIB:.1f} GiB of non-expert "
                            f"weights leaves {room:.1f} GiB")
        b = int(gpu_memory_gb * GIB // (L * model.expert_bytes))
        if b < 1:
            raise TideError(f"{gpu_memory_gb} GiB cannot hold one expert per layer ({L} layers x "
                            f"{model.expert_bytes / 2**20:.2f} MiB = {L * model.expert_bytes / GIB:.3f} GiB needed)")
        b = min(b, E)
    elif experts_per_layer is not None:
        b = int(experts_per_layer)
        if b < 1:
            raise TideError(f"the budget must hold at least one expert per layer, got {experts_per_layer}")
        if b > E:
            raise TideError(f"budget of {b} experts per layer exceeds the {E} experts a layer has")
    else:
        b = E
    budget = np.full(L, b, dtype=np.int64)
    if hw is not None:
        check_fits(model, hw, budget)
    return budget


def budget_bytes(model: ModelSpec, budget: np.ndarray) -> int:
    return int(np.sum(budget)) * model.expert_bytes


def fits(model: ModelSpec, hw: HardwareProfile, budget: np.ndarray) -> bool:
    return model.non_expert_bytes + budget_bytes(model, budget) <= hw.gpu_memory_bytes


def check_fits(model: ModelSpec, hw: HardwareProfile, budget: np.ndarray) -> None:
    if not fits(model, hw, budget):
        need = (model.non_expert_bytes + budget_bytes(model, budget)) / GIB
        raise TideError(f"budget of {int(budget.max())} experts per layer needs {need:.1f} GiB with the non-expert "
                        f"weights, more than the {hw.gpu.memory_gib:g} GiB of {hw.gpu.name}")
