"""Hardware profiles: one JSON format for the simulator, the runtime's budget checks and calibration.

A profile describes one GPU, the host CPU that runs offloaded experts, the host link, and a fixed per-step
overhead. Units: memory in GiB (2^30 bytes), bandwidths in GB/s (1e9 bytes/s), matmul rates in TFLOP/s
(1e12 FLOP/s), latencies and overheads in microseconds, table times in seconds.

File format (JSON object)::

    {
      "format": "tide-moe-hardware/1",
      "name": "H100-80GB-PCIe5",
      "description": "...",                  # free text
      "sources": ["...", "..."],             # where each figure comes from (and why its range is what it is)
      "ranges": {"cpu.matmul_tflops": [2.0, 21.0], ...},   # optional: plausible [low, high] of a guessed figure,
                                             #   by dotted path (RANGE_FIGURES); sim.sensitivity varies each
      "gpu":  {"name": str, "memory_gib": float, "matmul_tflops": float, "hbm_gbps": float,
               "kernel_overhead_us": float},   # per launched operator group
      "cpu":  {"name": str, "threads": int, "matmul_tflops": float, "dram_gbps": float,
               "expert_overhead_us": float},   # per expert invocation (dispatch, thread-pool wake-up)
      "link": {"name": str, "h2d_gbps": float, "d2h_gbps": float, "latency_us": float,
               "shared_duplex": bool},         # true: H2D and D2H share one engine's bandwidth
      "step_overhead_us": float,             # per forward: sampling, scheduling, Python
      "host": {"dram_gbps": float,           # optional: host DRAM bandwidth shared by link copies and the CPU
               "pinned_gib": float | null,   #   experts (sim.engine's DRAM law); page-locked memory available for
               "pageable_fraction": float},  #   expert weights (null: all); pageable copies' share of the pinned rate
      "tables": {                            # optional, measured; each takes precedence over the roofline
        "gpu_expert": {"tokens": [...], "seconds": [...], "call_seconds": s},  # one routed expert on the GPU
        "cpu_expert": {"tokens": [...], "seconds": [...], "call_seconds": s},  # one routed expert on the CPU
        "attention":  {"tokens": [...], "context": [...], "seconds": [[...], ...]},  # one layer, [tokens][context]
        "copy_h2d":   {"bytes": [...], "seconds": [...]},
        "copy_d2h":   {"bytes": [...], "seconds": [...]},
        "embed":        {"tokens": [...], "seconds": [...]},   # per forward: embeddings + rotary tables
        "dense_mlp":    {"tokens": [...], "seconds": [...]},   # per dense layer: norm + MLP + residual
        "moe_dense":    {"tokens": [...], "seconds": [...]},   # per MoE layer: norm + router + shared expert + residual
        "moe_overhead": {"tokens": [...], "seconds": [...]},   # per MoE layer: the expert store's fixed work
        "lm_head":      {"tokens": [...], "seconds": [...]},   # per forward with m > 0 logit rows: norm, lm_head, sampler
        "copy_h2d_pageable", "copy_d2h_pageable", "copy_duplex": {"bytes": [...], "seconds": [...]},  # informational
        "cpu_expert_threads": {"threads": [...], "tokens": [...], "seconds": [[...], ...]}            # informational
      },
      "moe_layer_overhead_us": float,        # optional (default 0): per MoE layer fixed cost when no moe_overhead table
      "single_device": bool,                 # optional (default false): the "GPU" is the host CPU (runtime --device
                                             #   cpu): GPU, CPU and copies are one serial device; activations never move
      "model": {"name", "config_hash", "layer_shape_hash", "dtype_bytes", "config"},  # optional: shape the tables
                                             #   were measured for; a cost model refuses a model of another layer shape
      "calibration": {...},                  # optional, informational: grids, repeats, held-out errors
      "environment": {...}                   # optional: where a calibrated profile was measured
    }

``call_seconds`` (optional) is the fixed cost of one layer's batch of experts on that side (one grouped call),
charged once per batch with at least one active expert, in place of the launch estimate. The informational
tables are kept with the profile (what was measured) and not used by the cost model.

Tables are per model *layer shape*: they hold for any number of layers of the same shape (``layer_shape_hash``
covers the config's shape fields except num_hidden_layers and first_k_dense_replace), in the dtype they were
measured in. Roofline-only profiles stay model-independent.

``host`` (optional; absent: no DRAM contention is modelled, every expert may be pinned, pageable copies run at
half the pinned rate): experts beyond ``pinned_gib`` (in the order layer 0 expert 0, 0/1, ..., as the store pins
layer by layer) live in pageable memory, and a pageable copy takes latency + B / (pageable_fraction x BW_link),
or the ``copy_h2d_pageable`` / ``copy_d2h_pageable`` table where one was measured.

A policy's decide() time is no hardware figure: it lives in the executor profile (``offload.executor``;
validate.calibrate writes its measured table beside the profile), and a profile naming ``decide_us`` is refused.

``ranges`` (optional; calibrated profiles have none: their figures are measured): each named figure must exist
in the profile, satisfy low <= value <= high (a value outside its own range is a typo), and both ends must be
valid values of that figure. ``HardwareProfile.with_figure(path, v)`` is the profile with that one figure set to v.

Tables are interpolated piecewise-linearly and extrapolated along the last segment; x values must be strictly
increasing and all values non-negative.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from offload.errors import TideError
from offload.presets import preset_or_file

FORMAT = "tide-moe-hardware/1"
HARDWARE_PRESETS = {
    "a100-pcie4": "a100-pcie4.json",
    "h100-pcie5": "h100-pcie5.json",
    "h200-pcie5": "h200-pcie5.json",
    "rtx4090-pcie4": "rtx4090-pcie4.json",
}


@dataclass(frozen=True)
class GpuSpec:
    name: str
    memory_gib: float
    matmul_tflops: float
    hbm_gbps: float
    kernel_overhead_us: float = 5.0


@dataclass(frozen=True)
class CpuSpec:
    name: str
    threads: int
    matmul_tflops: float
    dram_gbps: float
    expert_overhead_us: float = 20.0


@dataclass(frozen=True)
class LinkSpec:
    name: str
    h2d_gbps: float
    d2h_gbps: float
    latency_us: float = 10.0
    shared_duplex: bool = False


@dataclass(frozen=True)
class HostSpec:
    """Host memory as the copies and the CPU experts share it (see the module docstring)."""

    dram_gbps: float | None = None      # None: DRAM bandwidth not shared (no contention modelled)
    pinned_gib: float | None = None     # None: every expert can be page-locked
    pageable_fraction: float = 0.5      # pageable copy bandwidth / pinned (hardware.md: about half)

    @property
    def pinned_bytes(self) -> float:
        return float("inf") if self.pinned_gib is None else self.pinned_gib * 2**30


@dataclass(frozen=True)
class Table1D:
    """Measured y(x); piecewise-linear, extrapolated along the last segment, never below 0.

    ``call`` (expert tables only, optional): fixed seconds per layer batch, see the module docstring."""

    x: tuple[float, ...]
    y: tuple[float, ...]
    call: float | None = None

    def __call__(self, q: Any) -> np.ndarray:
        x, y = np.asarray(self.x), np.asarray(self.y)
        q = np.asarray(q, dtype=np.float64)
        out = np.interp(q, x, y)
        if len(x) >= 2:
            slope = (y[-1] - y[-2]) / (x[-1] - x[-2])
            out = np.where(q > x[-1], y[-1] + slope * (q - x[-1]), out)
        return np.maximum(out, 0.0)


@dataclass(frozen=True)
class Table2D:
    """Measured z(x, y) on a grid; bilinear inside, clamped-then-extrapolated along x (tokens)."""

    x: tuple[float, ...]
    y: tuple[float, ...]
    z: tuple[tuple[float, ...], ...]

    def __call__(self, qx: Any, qy: Any) -> np.ndarray:
        qx, qy = np.broadcast_arrays(np.asarray(qx, np.float64), np.asarray(qy, np.float64))
        x = np.asarray(self.x)
        rows = np.stack([Table1D(self.y, zr)(qy.reshape(-1)) for zr in self.z])  # [len(x), N]: along y first
        if len(x) == 1:
            return np.maximum(rows[0], 0.0).reshape(qx.shape)
        q = qx.reshape(-1)
        j = np.clip(np.searchsorted(x, q, side="right") - 1, 0, len(x) - 2)  # segment, last one extrapolates
        cols = np.arange(q.size)
        lo, hi = rows[j, cols], rows[j + 1, cols]
        frac = (np.maximum(q, x[0]) - x[j]) / (x[j + 1] - x[j])
        return np.maximum(lo + frac * (hi - lo), 0.0).reshape(qx.shape)


# Every table the format knows: name -> its axis names (one: Table1D, two: Table2D [x][y]).
TABLE_AXES: dict[str, tuple[str, ...]] = {
    "gpu_expert": ("tokens",), "cpu_expert": ("tokens",), "attention": ("tokens", "context"),
    "copy_h2d": ("bytes",), "copy_d2h": ("bytes",),
    "embed": ("tokens",), "dense_mlp": ("tokens",), "moe_dense": ("tokens",), "moe_overhead": ("tokens",),
    "lm_head": ("tokens",),
    "copy_h2d_pageable": ("bytes",), "copy_d2h_pageable": ("bytes",), "copy_duplex": ("bytes",),
    "cpu_expert_threads": ("threads", "tokens"),
}
_CALL_TABLES = ("gpu_expert", "cpu_expert")  # tables that may carry call_seconds
# Shape fields whose values a per-layer table depends on (everything but the depth of the network).
_LAYER_FIELDS = ("hidden_size", "intermediate_size", "moe_intermediate_size", "num_experts", "top_k",
                 "num_shared_experts", "num_heads", "num_kv_heads", "head_dim", "vocab_size", "n_group", "topk_group")


# Figures a range may name (``ranges``, ``with_figure``), by dotted path, with the values each admits: ">0"
# positive, ">=0" non-negative, "(0,1]" a fraction. The scalar numbers the cost model reads; names, threads and
# switches are facts of the machine, not guesses.
RANGE_FIGURES: dict[str, str] = {
    "gpu.memory_gib": ">0", "gpu.matmul_tflops": ">0", "gpu.hbm_gbps": ">0", "gpu.kernel_overhead_us": ">=0",
    "cpu.matmul_tflops": ">0", "cpu.dram_gbps": ">0", "cpu.expert_overhead_us": ">=0",
    "link.h2d_gbps": ">0", "link.d2h_gbps": ">0", "link.latency_us": ">=0",
    "step_overhead_us": ">=0", "moe_layer_overhead_us": ">=0",
    "host.dram_gbps": ">0", "host.pinned_gib": ">=0", "host.pageable_fraction": "(0,1]",
}
_RULE_TEXT = {">0": "a positive number", ">=0": "a non-negative number", "(0,1]": "a number in (0, 1]"}
_RULE_PLURAL = {">0": "positive numbers", ">=0": "non-negative numbers", "(0,1]": "numbers in (0, 1]"}


def _admits(rule: str, v: Any) -> bool:
    """Whether ``v`` is a value a figure of ``rule`` (RANGE_FIGURES) may take."""
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not np.isfinite(v):
        return False
    return v > 0 if rule == ">0" else v >= 0 if rule == ">=0" else 0 < v <= 1


def layer_shape_hash(spec: Any) -> str:
    """16 hex digits of sha256 over a ModelSpec's per-layer shape (the config hash without the layer counts)."""
    shape = {f: int(getattr(spec, f)) for f in _LAYER_FIELDS}
    return hashlib.sha256(json.dumps(shape, sort_keys=True).encode()).hexdigest()[:16]


def model_record(spec: Any, dtype_bytes: int) -> dict[str, Any]:
    """The profile's ``model`` section for tables measured on ``spec`` in a dtype of ``dtype_bytes`` bytes."""
    return {"name": spec.name, "config_hash": spec.config_hash, "layer_shape_hash": layer_shape_hash(spec),
            "dtype_bytes": int(dtype_bytes), "config": dict(spec.raw_config)}


@dataclass(frozen=True)
class HardwareProfile:
    name: str
    gpu: GpuSpec
    cpu: CpuSpec
    link: LinkSpec
    step_overhead_us: float = 500.0
    description: str = ""
    sources: tuple[str, ...] = ()
    tables: Mapping[str, Any] = field(default_factory=dict)
    environment: Mapping[str, Any] = field(default_factory=dict)
    moe_layer_overhead_us: float = 0.0
    single_device: bool = False
    model: Mapping[str, Any] = field(default_factory=dict)
    calibration: Mapping[str, Any] = field(default_factory=dict)
    host: HostSpec | None = None
    ranges: Mapping[str, tuple[float, float]] = field(default_factory=dict)  # figure path -> (low, high)

    @property
    def host_memory(self) -> HostSpec:
        """The host section, or the defaults when the profile has none."""
        return self.host if self.host is not None else HostSpec()

    # ---- loading ------------------------------------------------------------------------------------
    @classmethod
    def from_dict(cls, d: Mapping[str, Any], origin: str = "profile") -> "HardwareProfile":
        if not isinstance(d, Mapping):
            raise TideError(f"{origin}: a hardware profile must be a JSON object")
        if d.get("format", FORMAT) != FORMAT:
            raise TideError(f"{origin}: unsupported hardware profile format {d.get('format')!r} (expected {FORMAT})")
        if "decide_us" in d:
            raise TideError(f"{origin}: decide_us now lives in an executor profile (offload.executor; validate."
                            "calibrate writes <profile>.executor.json beside the profile): move the table there")
        try:
            gpu = GpuSpec(**d["gpu"])
            cpu = CpuSpec(**d["cpu"])
            link = LinkSpec(**d["link"])
        except KeyError as exc:
            raise TideError(f"{origin}: hardware profile lacks section {exc.args[0]!r}") from None
        except TypeError as exc:
            raise TideError(f"{origin}: bad field in hardware profile: {exc}") from None
        for section, obj in (("gpu", gpu), ("cpu", cpu), ("link", link)):
            for k, v in asdict(obj).items():
                if k in ("name", "shared_duplex"):
                    continue
                if isinstance(v, bool) or not isinstance(v, (int, float)) or not np.isfinite(v) or v < 0:
                    raise TideError(f"{origin}: {section}.{k} must be a non-negative number, got {v!r}")
                if v == 0 and k in ("memory_gib", "matmul_tflops", "hbm_gbps", "threads", "dram_gbps", "h2d_gbps", "d2h_gbps"):
                    raise TideError(f"{origin}: {section}.{k} must be positive")
        tables = _parse_tables(d.get("tables") or {}, origin)
        host = _parse_host(d.get("host"), origin)
        step = _non_negative(d.get("step_overhead_us", 500.0), "step_overhead_us", origin)
        moe_over = _non_negative(d.get("moe_layer_overhead_us", 0.0), "moe_layer_overhead_us", origin)
        single = d.get("single_device", False)
        if not isinstance(single, bool):
            raise TideError(f"{origin}: single_device must be true or false")
        sources = d.get("sources", ())
        if not isinstance(sources, (list, tuple)) or not all(isinstance(x, str) for x in sources):
            raise TideError(f"{origin}: sources must be a list of strings")
        sections = {}
        for key in ("environment", "model", "calibration"):
            val = d.get(key) or {}
            if not isinstance(val, Mapping):
                raise TideError(f"{origin}: {key} must be an object")
            sections[key] = dict(val)
        model = sections["model"]
        if model and not (isinstance(model.get("layer_shape_hash"), str) and isinstance(model.get("dtype_bytes"), int)):
            raise TideError(f"{origin}: model must name layer_shape_hash (string) and dtype_bytes (integer)")
        out = cls(name=str(d.get("name", origin)), gpu=gpu, cpu=cpu, link=link, step_overhead_us=step,
                  description=str(d.get("description", "")), sources=tuple(sources), tables=tables,
                  environment=sections["environment"], moe_layer_overhead_us=moe_over, single_device=single,
                  model=model, calibration=sections["calibration"], host=host)
        return replace(out, ranges=_parse_ranges(d.get("ranges"), out, origin))

    @classmethod
    def load(cls, name_or_path: str | Path) -> "HardwareProfile":
        d, origin = preset_or_file(str(name_or_path), HARDWARE_PRESETS, "offload.presets.hardware", "hardware",
                                   malformed="malformed hardware profile")
        return cls.from_dict(d, origin=origin)

    def to_dict(self) -> dict[str, Any]:
        tables: dict[str, Any] = {}
        for k, t in self.tables.items():
            axes = TABLE_AXES[k]
            if isinstance(t, Table2D):
                tables[k] = {axes[0]: list(t.x), axes[1]: list(t.y), "seconds": [list(r) for r in t.z]}
            else:
                tables[k] = {axes[0]: list(t.x), "seconds": list(t.y)}
                if t.call is not None:
                    tables[k]["call_seconds"] = t.call
        out = {"format": FORMAT, "name": self.name, "description": self.description, "sources": list(self.sources),
               "gpu": asdict(self.gpu), "cpu": asdict(self.cpu), "link": asdict(self.link),
               "step_overhead_us": self.step_overhead_us, "tables": tables, "environment": dict(self.environment)}
        # optional fields only when set, so roofline presets keep their original shape
        if self.moe_layer_overhead_us:
            out["moe_layer_overhead_us"] = self.moe_layer_overhead_us
        if self.single_device:
            out["single_device"] = True
        for key in ("model", "calibration"):
            if getattr(self, key):
                out[key] = dict(getattr(self, key))
        if self.host is not None:
            out["host"] = asdict(self.host)
        if self.ranges:
            out["ranges"] = {k: list(v) for k, v in self.ranges.items()}
        return out

    # ---- uncertain figures -------------------------------------------------------------------------------
    def figure(self, path: str) -> float | None:
        """The value of the figure at dotted ``path`` (RANGE_FIGURES); None where the profile leaves it unset
        (``host.dram_gbps`` null: no DRAM contention modelled)."""
        if path not in RANGE_FIGURES:
            raise TideError(f"unknown hardware figure {path!r} (known: {', '.join(RANGE_FIGURES)})")
        section, _, key = path.rpartition(".")
        obj = self.host_memory if section == "host" else getattr(self, section) if section else self
        v = getattr(obj, key)
        return None if v is None else float(v)

    def with_figure(self, path: str, value: float) -> "HardwareProfile":
        """This profile with the one figure at dotted ``path`` set to ``value`` (ranges and everything else kept);
        a value the figure cannot take is a one-line TideError."""
        rule = RANGE_FIGURES.get(path)
        if rule is None:
            raise TideError(f"unknown hardware figure {path!r} (known: {', '.join(RANGE_FIGURES)})")
        if not _admits(rule, value):
            raise TideError(f"{self.name}: {path} must be {_RULE_TEXT[rule]}, got {value!r}")
        section, _, key = path.rpartition(".")
        if not section:
            return replace(self, **{key: float(value)})
        # frozen sections: a new section object with the one field replaced (a profile without host: the defaults)
        obj = self.host_memory if section == "host" else getattr(self, section)
        return replace(self, **{section: replace(obj, **{key: float(value)})})

    @property
    def gpu_memory_bytes(self) -> int:
        return int(self.gpu.memory_gib * 2**30)

    def check_model(self, spec: Any) -> None:
        """Refuse (TideError) a model whose layer shape or dtype differs from the one the tables were measured
        for; profiles without tables, or without a model record, accept every model."""
        if not self.tables or not self.model:
            return
        want, got = self.model.get("layer_shape_hash"), layer_shape_hash(spec)
        if want != got:
            raise TideError(f"hardware profile {self.name} was calibrated for model {self.model.get('name')!r} "
                            f"(layer shape {want}); {spec.name} has layer shape {got}: recalibrate for it")
        if int(self.model.get("dtype_bytes", spec.dtype_bytes)) != int(spec.dtype_bytes):
            raise TideError(f"hardware profile {self.name} was calibrated with {self.model['dtype_bytes']}-byte "
                            f"weights; {spec.name} uses {spec.dtype_bytes}-byte weights: recalibrate with its dtype")


def _parse_ranges(raw: Any, hw: HardwareProfile, origin: str) -> dict[str, tuple[float, float]]:
    """The profile's ``ranges`` checked against its own figures (see the module docstring)."""
    if raw is None:
        return {}
    if not isinstance(raw, Mapping):
        raise TideError(f"{origin}: ranges must be an object of figure path -> [low, high]")
    out: dict[str, tuple[float, float]] = {}
    for path, pair in raw.items():
        rule = RANGE_FIGURES.get(path)
        if rule is None:
            raise TideError(f"{origin}: ranges names unknown figure {path!r} (known: {', '.join(RANGE_FIGURES)})")
        if not (isinstance(pair, (list, tuple)) and len(pair) == 2 and all(_admits(rule, x) for x in pair)):
            raise TideError(f"{origin}: ranges.{path} must be [low, high] of {_RULE_PLURAL[rule]}, got {pair!r}")
        lo, hi = float(pair[0]), float(pair[1])
        if lo > hi:
            raise TideError(f"{origin}: ranges.{path} has low {lo:g} > high {hi:g}")
        v = hw.figure(path)
        if v is None:
            raise TideError(f"{origin}: ranges.{path} given but the profile sets no {path}")
        if not lo <= v <= hi:  # a figure outside its own stated range is a typo in one or the other
            raise TideError(f"{origin}: {path} = {v:g} lies outside its range [{lo:g}, {hi:g}]")
        out[path] = (lo, hi)
    return out


def _parse_host(raw: Any, origin: str) -> HostSpec | None:
    if raw is None:
        return None
    if not isinstance(raw, Mapping):
        raise TideError(f"{origin}: host must be an object")
    unknown = sorted(set(raw) - {"dram_gbps", "pinned_gib", "pageable_fraction"})
    if unknown:
        raise TideError(f"{origin}: unknown host field(s) {', '.join(map(repr, unknown))}")
    vals: dict[str, Any] = {}
    for key in ("dram_gbps", "pinned_gib"):
        v = raw.get(key)
        if v is not None:
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not np.isfinite(v) or v < 0 or (key == "dram_gbps" and v == 0):
                raise TideError(f"{origin}: host.{key} must be a {'positive' if key == 'dram_gbps' else 'non-negative'} "
                                f"number or null, got {v!r}")
            vals[key] = float(v)
    if "pageable_fraction" in raw:
        v = raw["pageable_fraction"]
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0 < v <= 1:
            raise TideError(f"{origin}: host.pageable_fraction must be in (0, 1], got {v!r}")
        vals["pageable_fraction"] = float(v)
    return HostSpec(**vals)


def _non_negative(v: Any, what: str, origin: str) -> float:
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not np.isfinite(v) or v < 0:
        raise TideError(f"{origin}: {what} must be a non-negative number")
    return float(v)


def _check_axis(vals: Any, what: str, origin: str) -> tuple[float, ...]:
    try:
        arr = np.asarray(vals, dtype=np.float64)
    except (TypeError, ValueError):
        raise TideError(f"{origin}: table {what} must be a list of numbers") from None
    if arr.ndim != 1 or arr.size == 0 or not np.all(np.isfinite(arr)) or np.any(arr < 0):
        raise TideError(f"{origin}: table {what} must be a non-empty list of non-negative numbers")
    return tuple(float(v) for v in arr)


def _increasing(vals: tuple[float, ...]) -> bool:
    return all(b > a for a, b in zip(vals, vals[1:]))


def _parse_tables(raw: Mapping[str, Any], origin: str) -> dict[str, Any]:
    if not isinstance(raw, Mapping):
        raise TideError(f"{origin}: tables must be an object")
    out: dict[str, Any] = {}
    for name, t in raw.items():
        axes = TABLE_AXES.get(name)
        if axes is None:
            raise TideError(f"{origin}: unknown table {name!r} (known: {', '.join(TABLE_AXES)})")
        if not isinstance(t, Mapping):
            raise TideError(f"{origin}: table {name} must be an object")
        if len(axes) == 1:
            xs = _check_axis(t.get(axes[0]), f"{name}.{axes[0]}", origin)
            ys = _check_axis(t.get("seconds"), f"{name}.seconds", origin)
            if len(xs) != len(ys):
                raise TideError(f"{origin}: table {name} has {len(xs)} x values but {len(ys)} times")
            if not _increasing(xs):
                raise TideError(f"{origin}: table {name} x values must be strictly increasing")
            call = t.get("call_seconds")
            if call is not None:
                if name not in _CALL_TABLES:
                    raise TideError(f"{origin}: table {name} takes no call_seconds")
                call = _non_negative(call, f"table {name}.call_seconds", origin)
            out[name] = Table1D(xs, ys, call)
        else:
            xs = _check_axis(t.get(axes[0]), f"{name}.{axes[0]}", origin)
            ys = _check_axis(t.get(axes[1]), f"{name}.{axes[1]}", origin)
            z = t.get("seconds")
            if not isinstance(z, list) or len(z) != len(xs):
                raise TideError(f"{origin}: table {name}.seconds must have one row per {axes[0]} value")
            rows = tuple(_check_axis(r, f"{name}.seconds row", origin) for r in z)
            if any(len(r) != len(ys) for r in rows):
                raise TideError(f"{origin}: table {name}.seconds rows must have one value per {axes[1]} value")
            if not (_increasing(xs) and _increasing(ys)):
                raise TideError(f"{origin}: table {name} axes must be strictly increasing")
            out[name] = Table2D(xs, ys, rows)
    return out
