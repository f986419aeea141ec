"""Checkpoints in the Hugging Face layout: reading (streamed, experts to host memory), writing, splitting.

Layout: ``config.json``; ``model-0000N-of-0000M.safetensors`` shards with ``model.safetensors.index.json``
(``{"metadata": {"total_size": bytes}, "weight_map": {tensor name: shard file}}``), or a single
``model.safetensors``. Tensor names and shapes: runtime/checkpoint_layout.py (and shared/reference/LLaDA2-MoE.md).

Memory: loading streams one tensor at a time with ``safetensors.safe_open`` (memory-mapped), so at most one
tensor beyond the outputs is held. Non-expert tensors go to ``device``; routed experts are copied into
preallocated stacked host tensors (:class:`ExpertWeights`), never onto the GPU. Host stacks are pinned when
``device`` is CUDA, so expert uploads run at the full host-to-device rate; pageable memory reaches about half
of it (shared/reference/hardware.md), which is what the fallback warning says.

Every input fault is a one-line :class:`TideError` naming the file or tensor.
"""
from __future__ import annotations

import json
import re
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Mapping

import torch

from runtime.config import RuntimeConfig
from runtime.checkpoint_layout import checkpoint_shapes, expert_proj_shape, layer_of, parse_expert_name
from offload.errors import TideError
from offload.atomic_io import atomic_write_bytes

INDEX_FILE = "model.safetensors.index.json"
SINGLE_FILE = "model.safetensors"
_SHARD_RE = re.compile(r"^model-\d+-of-\d+\.safetensors$")


# ---- host expert storage ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class LayerExperts:
    """One MoE layer's routed experts, stacked: gate, up [E, i, h]; down [E, h, i] (the checkpoint's
    ``mlp.experts.e.{gate,up,down}_proj.weight`` at index e, i.e. nn.Linear layout: y = x W^T)."""

    gate: torch.Tensor
    up: torch.Tensor
    down: torch.Tensor

    def proj(self, name: str) -> torch.Tensor:
        return {"gate_proj": self.gate, "up_proj": self.up, "down_proj": self.down}[name]


@dataclass(frozen=True)
class ExpertWeights:
    """Routed experts of all MoE layers on the host; ``layers[m]`` is MoE layer m (decoder layer
    first_k_dense_replace + m). ``pinned`` says whether every stack is in page-locked memory."""

    layers: tuple[LayerExperts, ...]
    pinned: bool

    def __len__(self) -> int:
        return len(self.layers)

    def __getitem__(self, moe_layer: int) -> LayerExperts:
        return self.layers[moe_layer]

    @property
    def dtype(self) -> torch.dtype:
        return self.layers[0].gate.dtype

    @classmethod
    def allocate(cls, cfg: RuntimeConfig, dtype: torch.dtype, pin: bool) -> "ExpertWeights":
        """Uninitialised stacks for ``cfg``; pinned if ``pin`` and possible, else pageable with a warning."""
        if pin:
            try:
                return cls(_allocate_layers(cfg, dtype, pin=True), pinned=True)
            except RuntimeError as exc:  # no CUDA driver, or the OS refuses to lock that much memory
                warnings.warn(
                    f"could not pin {_gib(cfg, dtype):.2f} GiB of host memory for the routed experts "
                    f"({str(exc).splitlines()[0] if str(exc) else type(exc).__name__}); using pageable memory, "
                    "which gives expert uploads about half the pinned host-to-device bandwidth", RuntimeWarning,
                    stacklevel=2)
        return cls(_allocate_layers(cfg, dtype, pin=False), pinned=False)


def _allocate_layers(cfg: RuntimeConfig, dtype: torch.dtype, pin: bool) -> tuple[LayerExperts, ...]:
    E = cfg.spec.num_experts

    def stack(proj: str) -> torch.Tensor:
        return torch.empty((E, *expert_proj_shape(cfg, proj)), dtype=dtype, pin_memory=pin)

    return tuple(LayerExperts(stack("gate_proj"), stack("up_proj"), stack("down_proj"))
                 for _ in range(cfg.spec.num_moe_layers))


def _gib(cfg: RuntimeConfig, dtype: torch.dtype) -> float:
    return cfg.spec.num_moe_layers * cfg.spec.num_experts * cfg.spec.expert_params * dtype.itemsize / 2**30


def _wants_pin(device) -> bool:
    return torch.device(device).type == "cuda"


# ---- splitting a state dict ------------------------------------------------------------------------------
def _check_shape(name: str, got: Iterable[int], want: tuple[int, ...], origin: str) -> None:
    got = tuple(got)
    if got != want:
        raise TideError(f"{origin}: tensor {name} has shape {list(got)} but config.json implies {list(want)}")


def _check_names(present: Iterable[str], expected: Mapping[str, tuple[int, ...]], origin: str,
                 strict: bool = True) -> list[str]:
    """Refuses a missing tensor; an unexpected one is refused when ``strict``, else returned (sorted) for the
    caller to skip with a warning, as Hugging Face's loader does."""
    present = set(present)
    missing = [n for n in expected if n not in present]
    if missing:
        more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
        raise TideError(f"{origin}: missing tensor {missing[0]}{more}")
    unexpected = sorted(present.difference(expected))
    if unexpected and strict:
        more = f" (and {len(unexpected) - 1} more)" if len(unexpected) > 1 else ""
        raise TideError(f"{origin}: unexpected tensor {unexpected[0]}{more} (drop --strict to skip them)")
    return unexpected


def _to_device(name: str, t: torch.Tensor, device, dtype: torch.dtype) -> torch.Tensor:
    return t.to(device=device, dtype=dtype)


def _place(name: str, t: torch.Tensor, non_expert: dict[str, torch.Tensor], experts: "ExpertWeights", first: int,
           device, dtype: torch.dtype) -> None:
    """A routed expert's tensor goes into its row of the host stacks; anything else to ``device``."""
    parsed = parse_expert_name(name)
    if parsed is None:
        non_expert[name] = _to_device(name, t, device, dtype)
    else:
        layer, e, proj = parsed
        experts[layer - first].proj(proj)[e].copy_(t)


def split_state(state: Mapping[str, torch.Tensor], cfg: RuntimeConfig, device=None,
                dtype: torch.dtype = torch.float32, pin: bool | None = None
                ) -> tuple[dict[str, torch.Tensor], ExpertWeights]:
    """A full checkpoint-layout state dict -> (non-expert tensors on ``device``, host ExpertWeights).

    Names and shapes are checked like a checkpoint's; ``pin`` defaults to "device is CUDA"."""
    device = torch.device(device if device is not None else "cpu")
    expected = checkpoint_shapes(cfg)
    _check_names(state.keys(), expected, "state dict")
    experts = ExpertWeights.allocate(cfg, dtype, _wants_pin(device) if pin is None else pin)
    non_expert: dict[str, torch.Tensor] = {}
    first = cfg.spec.first_k_dense_replace
    for name, t in state.items():
        _check_shape(name, t.shape, expected[name], "state dict")
        _place(name, t, non_expert, experts, first, device, dtype)
    return non_expert, experts


# ---- loading ---------------------------------------------------------------------------------------------
def _config_for(model_dir: Path, cfg: RuntimeConfig | None) -> tuple[RuntimeConfig, int]:
    """The config to load with, and the checkpoint's own layer count (cfg may truncate the network)."""
    if not model_dir.is_dir():
        raise TideError(f"checkpoint directory {model_dir} does not exist")
    if not (model_dir / "config.json").is_file():
        raise TideError(f"checkpoint {model_dir} has no config.json")
    try:  # ModelSpec rejects a malformed config or an unsupported model_type
        own = RuntimeConfig.load(model_dir)
    except TideError as exc:
        raise TideError(f"checkpoint {model_dir}: {exc}") from None
    if cfg is None:
        return own, own.spec.num_layers
    truncated = RuntimeConfig.load(model_dir, num_layers=cfg.spec.num_layers) \
        if cfg.spec.num_layers < own.spec.num_layers else own
    if truncated.spec.config_hash != cfg.spec.config_hash:
        raise TideError(f"checkpoint {model_dir}: config.json describes a different network than the one "
                        f"requested ({own.spec.name} vs {cfg.spec.name})")
    return cfg, own.spec.num_layers


def _weight_map(model_dir: Path) -> dict[str, str]:
    from safetensors import safe_open  # lazy: random-weight runs on a torch-only machine need no safetensors

    index = model_dir / INDEX_FILE
    if index.is_file():
        try:
            raw = json.loads(index.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise TideError(f"malformed {index}: {exc}") from None
        wm = raw.get("weight_map") if isinstance(raw, dict) else None
        if not isinstance(wm, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in wm.items()):
            raise TideError(f"malformed {index}: no weight_map of tensor name -> file name")
        for fname in set(wm.values()):
            if Path(fname).name != fname or fname in ("", ".", ".."):
                raise TideError(f"{index}: shard name {fname!r} is not a plain file name")
            if not (model_dir / fname).is_file():
                raise TideError(f"checkpoint {model_dir}: shard {fname} named in {INDEX_FILE} is missing")
        return dict(wm)
    single = model_dir / SINGLE_FILE
    if single.is_file():
        try:
            with safe_open(str(single), framework="pt", device="cpu") as f:
                return {name: SINGLE_FILE for name in f.keys()}
        except Exception as exc:  # safetensors raises its own error type for any malformed file
            raise TideError(f"cannot read {single}: {_one_line(exc)}") from None
    shards = sorted(p.name for p in model_dir.iterdir() if _SHARD_RE.match(p.name))
    found = f" (found {len(shards)} shard file(s) such as {shards[0]})" if shards else ""
    raise TideError(f"checkpoint {model_dir} has neither {INDEX_FILE} nor {SINGLE_FILE}{found}")


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    return " ".join(text.split())


def load_checkpoint(model_dir: str | Path, cfg: RuntimeConfig | None = None, device=None,
                    dtype: torch.dtype = torch.bfloat16, strict: bool = False
                    ) -> tuple[dict[str, torch.Tensor], ExpertWeights]:
    """(non-expert state on ``device`` in ``dtype``, routed experts on the host in ``dtype``).

    ``cfg`` defaults to the directory's config.json; a cfg with fewer layers (RuntimeConfig.load(...,
    num_layers=n)) loads the first n layers and skips the rest. Every tensor takes the model dtype, the expert
    bias too (as in the reference). Tensors the model does not use are listed in a warning and skipped, or
    refused with ``strict``; a missing one is always refused.
    """
    from safetensors import safe_open

    model_dir = Path(model_dir)
    device = torch.device(device if device is not None else "cpu")
    cfg, own_layers = _config_for(model_dir, cfg)
    n_layers = cfg.spec.num_layers
    weight_map = {n: f for n, f in _weight_map(model_dir).items()
                  if own_layers <= n_layers or (layer_of(n) is None or layer_of(n) < n_layers)}
    expected = checkpoint_shapes(cfg)
    unexpected = _check_names(weight_map, expected, f"checkpoint {model_dir}", strict)
    if unexpected:
        shown = ", ".join(unexpected[:5]) + (f" and {len(unexpected) - 5} more" if len(unexpected) > 5 else "")
        warnings.warn(f"checkpoint {model_dir}: {len(unexpected)} tensor(s) the model does not use, skipped: {shown}",
                      stacklevel=2)
        weight_map = {n: f for n, f in weight_map.items() if n in expected}

    experts = ExpertWeights.allocate(cfg, dtype, _wants_pin(device))
    non_expert: dict[str, torch.Tensor] = {}
    first = cfg.spec.first_k_dense_replace
    by_file: dict[str, list[str]] = {}
    for name, fname in weight_map.items():
        by_file.setdefault(fname, []).append(name)
    for fname in sorted(by_file):
        path = model_dir / fname
        origin = f"{path}"
        try:
            with safe_open(str(path), framework="pt", device="cpu") as f:
                present = set(f.keys())
                for name in by_file[fname]:
                    if name not in present:
                        raise TideError(f"{origin}: tensor {name} listed in {INDEX_FILE} is absent from the shard")
                    _check_shape(name, f.get_slice(name).get_shape(), expected[name], origin)
                    t = f.get_tensor(name)
                    _place(name, t, non_expert, experts, first, device, dtype)
                    del t  # one tensor at a time: the next get_tensor may be as big
        except TideError:
            raise
        except Exception as exc:  # truncated / corrupt file: safetensors raises its own error type
            raise TideError(f"cannot read shard {origin}: {_one_line(exc)}") from None
    return non_expert, experts


# ---- writing ---------------------------------------------------------------------------------------------
def write_checkpoint(model_dir: str | Path, cfg: RuntimeConfig, state: Mapping[str, torch.Tensor],
                     shards: int = 2, check: bool = True) -> Path:
    """Write config.json, the shards and the index (shards == 1: a single model.safetensors, no index),
    each file atomically. ``check`` validates names and shapes first (tests pass False to write bad files).
    Shards are contiguous runs of tensors in checkpoint order, balanced by bytes; returns the directory."""
    from safetensors.torch import save as safetensors_save

    model_dir = Path(model_dir)
    if shards < 1:
        raise TideError(f"write_checkpoint: shards must be at least 1, got {shards}")
    expected = checkpoint_shapes(cfg)
    if check:
        _check_names(state.keys(), expected, "write_checkpoint")
        for name, t in state.items():
            _check_shape(name, t.shape, expected[name], "write_checkpoint")
    order = {n: i for i, n in enumerate(expected)}
    names = sorted(state, key=lambda n: (order.get(n, len(order)), n))
    sizes = [state[n].numel() * state[n].element_size() for n in names]
    total = sum(sizes)
    # shard of a tensor = where its first byte falls among `shards` equal slices; empty slices are dropped
    slot, before = [], 0
    for size in sizes:
        slot.append(min(shards - 1, before * shards // total) if total else 0)
        before += size
    renumber = {s: i for i, s in enumerate(sorted(set(slot)))}
    m = len(renumber)
    files = [SINGLE_FILE] if m == 1 else [f"model-{i + 1:05d}-of-{m:05d}.safetensors" for i in range(m)]

    atomic_write_bytes(model_dir / "config.json",
                       lambda f: f.write(json.dumps(dict(cfg.spec.raw_config), indent=2).encode()))
    weight_map: dict[str, str] = {}
    for i, fname in enumerate(files):
        part = {n: state[n].detach().to("cpu").contiguous().clone()  # own storage: safetensors refuses sharing
                for n, s in zip(names, slot) if renumber[s] == i}
        data = safetensors_save(part, metadata={"format": "pt"})
        atomic_write_bytes(model_dir / fname, lambda f, data=data: f.write(data))
        weight_map.update({n: fname for n in part})
        del part, data
    if m == 1:
        (model_dir / INDEX_FILE).unlink(missing_ok=True)  # a stale index would shadow the single file
    else:
        index = {"metadata": {"total_size": total}, "weight_map": dict(sorted(weight_map.items()))}
        atomic_write_bytes(model_dir / INDEX_FILE, lambda f: f.write(json.dumps(index, indent=2).encode()))
    return model_dir


__all__ = ["INDEX_FILE", "SINGLE_FILE", "ExpertWeights", "LayerExperts", "load_checkpoint", "write_checkpoint",
           "split_state"]
