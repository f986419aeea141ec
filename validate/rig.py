"""The objects the micro-benchmarks run: the runtime's own modules, built once for one model shape.

A calibration rig holds, on the device being calibrated and in the runtime's dtype:

  model   runtime.model.LLaDA2MoE truncated to first_k_dense_replace + 1 decoder layers (the dense ones and one
          MoE layer: every table is per layer, so one layer of each kind is all it needs), weights random
  store   runtime.expert_store.ExpertStore for that one MoE layer under ``all-gpu`` (a slot pool of all E
          experts on the device, host copies of every expert: pinned on CUDA, as the runtime keeps them)
  host, resident   that layer's expert stacks [E, ...] in host memory and on the device: the expert kernels
          (runtime.kernels.grouped_experts) are timed on them, as the store calls them on its host stacks and
          on its slot pool (on device=cpu both are host memory, as in the runtime)

Weights are drawn in place (N(0, 1/in) projections, norms 1): timings do not depend on the values, but on the
CPU uninitialised memory could hold denormals or NaNs, which are slow on some paths, hence real numbers.
Memory: one MoE layer's experts twice (host + pool), E x 3 h i x element size each (LLaDA2.0-mini in bf16:
1.6 GB each), plus the non-expert weights of the truncated model.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from runtime.config import RuntimeConfig
from runtime.expert_store import ExpertStore
from runtime.model import LLaDA2MoE
from offload.model_spec import ModelSpec
from offload.policies import make_policy
from offload.policies.base import StepInfo
from offload.trace import KIND_DENOISE


@dataclass
class Rig:
    cfg: RuntimeConfig            # the truncated config (one MoE layer)
    full_spec: ModelSpec          # the model being calibrated, as given
    model: LLaDA2MoE
    store: ExpertStore
    host: dict[str, torch.Tensor]     # the MoE layer's expert stacks in host memory (the store's CPU path reads these)
    resident: dict[str, torch.Tensor]  # the same stacks on the device (what the store's GPU path reads)
    device: torch.device
    dtype: torch.dtype

    @property
    def spec(self) -> ModelSpec:
        return self.cfg.spec

    @property
    def moe_layer(self) -> torch.nn.Module:
        return self.model.model.layers[-1]

    @property
    def dense_layer(self) -> torch.nn.Module | None:
        return self.model.model.layers[0] if self.spec.first_k_dense_replace > 0 else None

    def hidden(self, n: int, scale: float = 1.0) -> torch.Tensor:
        """n random hidden rows [n, h] on the device."""
        return scale * torch.randn(n, self.spec.hidden_size, device=self.device, dtype=self.dtype)

    def routing(self, n: int, generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """topk_ids [n, k] (distinct per row, uniform over the experts) and weights [n, k] float32."""
        E, k = self.spec.num_experts, self.spec.top_k
        ids = torch.rand(n, E, generator=generator).argsort(dim=1)[:, :k].to(self.device)
        w = torch.full((n, k), 1.0 / k, dtype=torch.float32, device=self.device)
        return ids, w

    def begin_step(self, tokens: int) -> None:
        self.store.begin_step(StepInfo(index=0, block=0, step_in_block=0, kind=KIND_DENOISE, tokens_forwarded=tokens))


def _init_(module: torch.nn.Module) -> None:
    """Random values in place: projections and embeddings N(0, 1/in), norms 1, expert bias 0."""
    with torch.no_grad():
        for p in module.parameters():
            if p.dim() >= 2:
                p.normal_(0.0, p.shape[-1] ** -0.5)
            else:
                p.fill_(1.0)
        for _, b in module.named_buffers():
            b.zero_()


def host_experts(spec: ModelSpec, dtype: torch.dtype, pin: bool) -> dict[str, torch.Tensor]:
    """One MoE layer's expert stacks {gate, up: [E, i, h], down: [E, h, i]} in host memory."""
    E, h, i = spec.num_experts, spec.hidden_size, spec.moe_intermediate_size
    out = {}
    for name, shape in (("gate", (E, i, h)), ("up", (E, i, h)), ("down", (E, h, i))):
        t = torch.empty(shape, dtype=dtype, pin_memory=pin)
        t.normal_(0.0, shape[-1] ** -0.5)
        out[name] = t
    return out


def build_rig(model: str, device: torch.device, dtype: torch.dtype, threads: int | None) -> Rig:
    """The rig for ``model`` (preset, config.json or model directory) on ``device``."""
    full = RuntimeConfig.load(model)
    cfg = RuntimeConfig.load(model, num_layers=full.spec.first_k_dense_replace + 1)
    spec = cfg.spec
    if threads:
        torch.set_num_threads(int(threads))
    net = LLaDA2MoE(cfg, None, device="meta", dtype=dtype)
    net.to_empty(device=device)
    _init_(net)
    experts = host_experts(spec, dtype, pin=device.type == "cuda")
    store = ExpertStore(spec, [experts], make_policy("all-gpu"), None, device=device, dtype=dtype, threads=threads)
    net.set_experts(store)
    resident = {n: t.to(device, copy=True) for n, t in experts.items()}
    return Rig(cfg=cfg, full_spec=full.spec, model=net, store=store, host=experts, resident=resident, device=device,
               dtype=dtype)
