"""Hardware profiles: one JSON format for the simulator, the runtime's budget checks and calibration.

A profile describes one GPU, the host CPU that runs offloaded experts, the host link, and a fixed per-step
overhead. Units: memory in GiB (2^30 bytes), bandwidths in GB/s (1e9 bytes/s), matmul rates in TFLOP/s
(1e12 FLOP/s), latencies and overheads in microseconds, table times in seconds.

File format (JSON object)::

    {
      "format": "tide-moe-hardware/1",
      "name": "H100-80GB-PCIe5",
      "description": "...",                  # free text
      "sources": ["...", "..."],             # where each figure comes from
      "gpu":  {"name": str, "memory_gib": float, "matmul_tflops": float, "hbm_gbps": float,
               "kernel_overhead_us": float},   # per launched operator group
      "cpu":  {"name": str, "threads": int, "matmul_tflops": float, "dram_gbps": float,
               "expert_overhead_us": float},   # per expert invocation (dispatch, thread-pool wake-up)
      "link": {"name": str, "h2d_gbps": float, "d2h_gbps": float, "latency_us": float,
               "shared_duplex": bool},         # true: H2D and D2H share one engine's bandwidth
      "step_overhead_us": float,             # per forward: sampling, scheduling, Python
      "tables": {                            # optional, measured; each takes precedence over the roofline
        "gpu_expert": {"tokens": [...], "seconds": [...]},     # one routed expert on the GPU
        "cpu_expert": {"tokens": [...], "seconds": [...]},     # one routed expert on the CPU
        "attention":  {"tokens": [...], "context": [...], "seconds": [[...], ...]},  # one layer, [tokens][context]
        "copy_h2d":   {"bytes": [...], "seconds": [...]},
        "copy_d2h":   {"bytes": [...], "seconds": [...]}
      },
      "environment": {...}                   # optional: where a calibrated profile was measured
    }

Tables are interpolated piecewise-linearly and extrapolated along the last segment; x values must be strictly
increasing and all values non-negative.
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from sim.errors import TideError

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
class Table1D:
    """Measured y(x); piecewise-linear, extrapolated along the last segment, never below 0."""

    x: tuple[float, ...]
    y: tuple[float, ...]

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

    # ---- loading ------------------------------------------------------------------------------------
    @classmethod
    def from_dict(cls, d: Mapping[str, Any], origin: str = "profile") -> "HardwareProfile":
        if not isinstance(d, Mapping):
            raise TideError(f"{origin}: a hardware profile must be a JSON object")
        if d.get("format", FORMAT) != FORMAT:
            raise TideError(f"{origin}: unsupported hardware profile format {d.get('format')!r} (expected {FORMAT})")
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
        step = d.get("step_overhead_us", 500.0)
        if isinstance(step, bool) or not isinstance(step, (int, float)) or not np.isfinite(step) or step < 0:
            raise TideError(f"{origin}: step_overhead_us must be a non-negative number")
        sources = d.get("sources", ())
        if not isinstance(sources, (list, tuple)) or not all(isinstance(x, str) for x in sources):
            raise TideError(f"{origin}: sources must be a list of strings")
        environment = d.get("environment") or {}
        if not isinstance(environment, Mapping):
            raise TideError(f"{origin}: environment must be an object")
        return cls(name=str(d.get("name", origin)), gpu=gpu, cpu=cpu, link=link, step_overhead_us=float(step),
                   description=str(d.get("description", "")), sources=tuple(sources),
                   tables=tables, environment=dict(environment))

    @classmethod
    def load(cls, name_or_path: str | Path) -> "HardwareProfile":
        key = str(name_or_path)
        if key in HARDWARE_PRESETS:
            text = resources.files("sim.presets.hardware").joinpath(HARDWARE_PRESETS[key]).read_text()
            return cls.from_dict(json.loads(text), origin=key)
        path = Path(key)
        if not path.is_file():
            raise TideError(f"unknown hardware {key!r}: not a preset ({', '.join(HARDWARE_PRESETS)}) and no such file")
        try:
            d = json.loads(path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise TideError(f"malformed hardware profile {path}: {exc}") from None
        return cls.from_dict(d, origin=str(path))

    def to_dict(self) -> dict[str, Any]:
        tables: dict[str, Any] = {}
        for k, t in self.tables.items():
            if isinstance(t, Table2D):
                tables[k] = {"tokens": list(t.x), "context": list(t.y), "seconds": [list(r) for r in t.z]}
            else:
                xname = "bytes" if k.startswith("copy") else "tokens"
                tables[k] = {xname: list(t.x), "seconds": list(t.y)}
        return {"format": FORMAT, "name": self.name, "description": self.description, "sources": list(self.sources),
                "gpu": asdict(self.gpu), "cpu": asdict(self.cpu), "link": asdict(self.link),
                "step_overhead_us": self.step_overhead_us, "tables": tables, "environment": dict(self.environment)}

    @property
    def gpu_memory_bytes(self) -> int:
        return int(self.gpu.memory_gib * 2**30)


_TABLE_X = {"gpu_expert": "tokens", "cpu_expert": "tokens", "copy_h2d": "bytes", "copy_d2h": "bytes"}


def _check_axis(vals: Any, what: str, origin: str) -> tuple[float, ...]:
    try:
        arr = np.asarray(vals, dtype=np.float64)
    except (TypeError, ValueError):
        raise TideError(f"{origin}: table {what} must be a list of numbers") from None
    if arr.ndim != 1 or arr.size == 0 or not np.all(np.isfinite(arr)) or np.any(arr < 0):
        raise TideError(f"{origin}: table {what} must be a non-empty list of non-negative numbers")
    return tuple(float(v) for v in arr)


def _parse_tables(raw: Mapping[str, Any], origin: str) -> dict[str, Any]:
    if not isinstance(raw, Mapping):
        raise TideError(f"{origin}: tables must be an object")
    out: dict[str, Any] = {}
    for name, t in raw.items():
        if (name in _TABLE_X or name == "attention") and not isinstance(t, Mapping):
            raise TideError(f"{origin}: table {name} must be an object")
        if name in _TABLE_X:
            xs = _check_axis(t.get(_TABLE_X[name]), f"{name}.{_TABLE_X[name]}", origin)
            ys = _check_axis(t.get("seconds"), f"{name}.seconds", origin)
            if len(xs) != len(ys):
                raise TideError(f"{origin}: table {name} has {len(xs)} x values but {len(ys)} times")
            if any(b <= a for a, b in zip(xs, xs[1:])):
                raise TideError(f"{origin}: table {name} x values must be strictly increasing")
            out[name] = Table1D(xs, ys)
        elif name == "attention":
            xs = _check_axis(t.get("tokens"), "attention.tokens", origin)
            ys = _check_axis(t.get("context"), "attention.context", origin)
            z = t.get("seconds")
            if not isinstance(z, list) or len(z) != len(xs):
                raise TideError(f"{origin}: table attention.seconds must have one row per tokens value")
            rows = tuple(_check_axis(r, "attention.seconds row", origin) for r in z)
            if any(len(r) != len(ys) for r in rows):
                raise TideError(f"{origin}: table attention.seconds rows must have one value per context value")
            if any(b <= a for a, b in zip(xs, xs[1:])) or any(b <= a for a, b in zip(ys, ys[1:])):
                raise TideError(f"{origin}: table attention axes must be strictly increasing")
            out[name] = Table2D(xs, ys, rows)
        else:
            raise TideError(f"{origin}: unknown table {name!r} (known: {', '.join([*_TABLE_X, 'attention'])})")
    return out
