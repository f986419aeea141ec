"""A model built once and generation runs on it: what ``runtime.generate`` and ``runtime.bench`` share.

Each :meth:`Session.run` gives one policy, budget and mode a fresh :class:`~runtime.expert_store.ExpertStore`
as the model's routed experts, generates, and returns the run's :class:`~offload.results.RunRecord`.
"""
from __future__ import annotations

import argparse
import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from offload.cli import add_generation, add_model
from offload.cost import RooflineCostModel
from offload.cpu_share import CpuMeter
from offload.errors import TideError
from offload.hardware import HardwareProfile
from offload.policies import Policy
from offload.results import RunRecord
from runtime.checkpoint import load_checkpoint
from runtime.config import RuntimeConfig
from runtime.diffusion import GenerationResult, GenerationSettings, generate
from runtime.expert_store import ExpertStore
from runtime.model import LLaDA2MoE
from runtime.random_weights import check_memory, random_weights

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def add_session_arguments(p: argparse.ArgumentParser, gen_length: int | None, modes: str) -> None:
    """The options :meth:`Session.from_args` and :func:`random_prompt` read, and generation's (offload.cli)."""
    add_model(p, default="llada2-tiny", what=": a checkpoint directory loads its weights, otherwise random ones")
    p.add_argument("--num-layers", type=int, default=None, help="keep only the first N decoder layers")
    p.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"),
                   help="where the model runs (default auto: cuda when torch sees a GPU, else cpu)")
    p.add_argument("--dtype", default=None, choices=tuple(DTYPES), help="default: bfloat16 on cuda, float32 on cpu")
    p.add_argument("--trust-remote-code", action="store_true", help="let the checkpoint's tokenizer run its own "
                   "code (transformers' trust_remote_code; LLaDA2.0's tokenizer needs it)")
    p.add_argument("--strict", action="store_true", help="refuse a checkpoint with tensors the model does not use "
                   "(default: list them in a warning and skip them)")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (the CPU's experts run on them)")
    add_generation(p, gen_length=gen_length, modes=modes,
                   seed_help="of the random weights, the random prompt and sampling",
                   gen_length_default=None if gen_length else "1024 with a checkpoint, 128 with random weights")


def cost_model(cfg: RuntimeConfig, profile: str, dtype: torch.dtype) -> RooflineCostModel:
    """The cost model the simulator prices this run with: the hardware ``profile`` (preset or JSON) over the
    model's bytes in the dtype that actually runs (config.json's dtype may differ from --dtype)."""
    spec = dataclasses.replace(cfg.spec, dtype_bytes=torch.empty(0, dtype=dtype).element_size())
    return RooflineCostModel(spec, HardwareProfile.load(profile))


def check_prompt_length(length: int) -> None:
    if length < 1:
        raise TideError(f"--prompt-length must be >= 1, got {length}")


def is_checkpoint(model: str) -> bool:
    """Whether ``--model`` names a checkpoint directory (its weights are loaded; otherwise random ones)."""
    path = Path(model)
    return path.is_dir() and any(path.glob("*.safetensors"))


def random_prompt(cfg: RuntimeConfig, length: int, seed: int, device: torch.device) -> torch.Tensor:
    """``length`` random token ids for a model without a tokenizer; mask, EOS and pad ids are replaced by 0 (a
    mask id in the prompt would be denoised, an EOS one would end generation)."""
    check_prompt_length(length)
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, cfg.spec.vocab_size, (length,), generator=g)
    special = torch.tensor(sorted({cfg.mask_token_id, cfg.eos_token_id, cfg.pad_token_id}))
    ids[torch.isin(ids, special)] = 0
    return ids.to(device)


def _tokenizer(path: Path, trust_remote_code: bool) -> Any:
    """The checkpoint's tokenizer, or None (prompts and outputs as ids) with a note that states why."""
    try:
        from transformers import AutoTokenizer
    except ImportError:
        print("note: transformers is not installed (pip install transformers); prompts and outputs are token ids")
        return None
    try:
        return AutoTokenizer.from_pretrained(str(path), local_files_only=True, trust_remote_code=trust_remote_code)
    except Exception as exc:  # no tokenizer files, or code it may not run: ids only, and the cause in one line
        cause = " ".join((str(exc).strip() or type(exc).__name__).split())
        hint = "" if trust_remote_code else " (if it needs its own code, pass --trust-remote-code)"
        print(f"note: no tokenizer loaded from {path}: {type(exc).__name__}: {cause[:300]}{hint}; prompts and "
              f"outputs are token ids")
        return None


@dataclass(eq=False)
class Session:
    """One model's weights, built once; :meth:`run` generates on them under one policy at a time."""

    cfg: RuntimeConfig
    model: LLaDA2MoE                          # non-expert modules on ``device``; the routed experts are set per run
    host: list[dict[str, torch.Tensor]]       # per MoE layer: gate, up [E, i, h], down [E, h, i] on the host
    device: torch.device
    dtype: torch.dtype
    real: bool                                # weights from a checkpoint (else random)
    tokenizer: Any = None

    @classmethod
    def from_args(cls, a: argparse.Namespace) -> "Session":
        """The model of ``--model``: a checkpoint directory (with its tokenizer, if any), else random weights for
        a preset or config.json (``--seed``). ``--threads`` sets torch's thread count first."""
        if a.threads is not None:
            if a.threads < 1:
                raise TideError("--threads must be >= 1")
            torch.set_num_threads(a.threads)
        if a.device == "auto":
            a.device = "cuda" if torch.cuda.is_available() else "cpu"
        if a.device == "cuda" and not torch.cuda.is_available():
            raise TideError("--device cuda requested but CUDA is not available (torch "
                            f"{torch.__version__}{'' if torch.version.cuda else ', a CPU-only build'})")
        device = torch.device(a.device)
        dtype = DTYPES[a.dtype or ("bfloat16" if device.type == "cuda" else "float32")]
        path = Path(a.model)
        real = is_checkpoint(a.model)
        cfg = RuntimeConfig.load(a.model, num_layers=a.num_layers)
        check_memory(cfg, dtype, device)  # before a checkpoint's or random weights' buffers are allocated
        if real:
            state, experts = load_checkpoint(path, cfg, device=device, dtype=dtype, strict=a.strict)
        else:
            state, experts = random_weights(cfg, a.seed, device=device, dtype=dtype)
        net = LLaDA2MoE.from_state(cfg, state, None, device=device, dtype=dtype)
        host = [{"gate": l.gate, "up": l.up, "down": l.down} for l in experts.layers]
        return cls(cfg, net, host, device, dtype, real, _tokenizer(path, a.trust_remote_code) if real else None)

    def run(self, policy: Policy, budget: np.ndarray | None, prompt: torch.Tensor, settings: GenerationSettings,
            *, cost: RooflineCostModel | None = None, progress: bool = False) -> tuple[GenerationResult, RunRecord]:
        """One generation under ``policy`` on a fresh store (``budget`` experts per MoE layer; ignored by
        policies that need none, yet recorded, so that their runs rank with the others of that budget);
        returns the result and its record."""
        store = ExpertStore(self.cfg.spec, self.host, policy, budget, device=self.device, dtype=self.dtype,
                            cost=cost, block_length=settings.block_length, mode=settings.mode)
        self.model.set_experts(store)
        # the CPU share of the generation (offload.cpu_share): every thread counts; without the scheduler's
        # counts, the busy threads are torch's on device=cpu and the issuing one on a GPU
        meter = CpuMeter(torch.get_num_threads() if self.device.type == "cpu" else 1)
        result = generate(self.model, store, self.cfg, prompt, settings, progress=progress,
                          origin={"policy": policy.label(), "device": str(self.device),
                                  "experts_per_layer": int(np.max(store.budget if budget is None else budget))})
        share = meter.stop()
        x = result.extra
        return result, RunRecord(
            policy=policy.name, params=policy.params(), mode=settings.mode, model=self.cfg.spec.name,
            random_weights=not self.real, device=self.device.type, dtype=str(self.dtype).replace("torch.", ""),
            budget=int(np.max(store.budget if budget is None else budget)), settings=dataclasses.asdict(settings),
            prompt_tokens=int(prompt.numel()), tokens=tuple(result.tokens), generated_tokens=result.trace.generated_tokens,
            forwards=result.forwards, wall_s=result.wall_s, step_times_s=tuple(result.step_times_s.tolist()),
            step_wall_s=tuple(x["step_wall_s"].tolist()), cpu_s=x["cpu_s"], step_cpu_s=tuple(x["step_cpu_s"].tolist()),
            counters=store.counters(), max_resident=tuple(store.max_resident.tolist()),
            layer_budgets=tuple(store.residency.budget.tolist()), host_pinned=bool(store.pinned),
            cpu_share=share)
