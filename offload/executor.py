"""Executor profiles: how a policy's moves and computations are carried out, as data (no simpy here).

A policy decides *what* moves and where each expert runs (``offload.plan``); an executor profile says *how*
the code that carries the plan out pays for it. The simulator (``sim.engine``) prices one plan differently
under different executors, so that a policy can be timed on this project's runtime (``tide-moe``) and on the
authors' released code (``tide-reference``), whose costs are behind the paper's figures.

File format (JSON object; units: microseconds for overheads)::

    {
      "format": "tide-moe-executor/1",
      "name": "tide-reference",
      "description": "...",
      "copy_granularity": "batched" | "expert" | "projection",
          # weights H2D: one copy per layer's batch | one per expert | one per projection (3 per expert)
      "host_memory": "pinned" | "pageable",
          # where host expert weights live: pageable copies run at the hardware profile's pageable rate
          # (``offload.hardware.HostSpec``); "pinned" is still capped by the profile's pinned capacity
      "demote_d2h": bool,            # a demotion copies the expert back to the host (blocking D2H)
      "gpu_expert_overhead_us": x,   # per active GPU expert (a Python loop of launches), on top of the cost model
      "cpu_expert_overhead_us": x,   # per active CPU expert, on top of the cost model's CPU expert time
      "act_copies": "batched" | "per_expert",
          # CPU experts' activations: one copy each way per layer | one blocking copy each way per CPU expert
      "overlap": bool,               # false: nothing overlaps (copies, CPU and GPU work one after another)
      "lm_head_rows": "block" | "prefix",   # logits for the forward's lm rows | the whole forwarded prefix
      "lm_head_fp32": bool,          # the logits are cast to float32 (one extra pass over [rows, V])
      "staging_slots": n,            # 0: streamed experts copied with the promotions as one batch; n >= 1: through
                                     # n staging slots in chunks of n // 2 (ping-pong halves; n // 1 if n = 1)
      "host_sync_us": x,             # per MoE layer: the host waits for the GPU (counts for the decision)
      "decide_us": {"policy": x, ...},   # per MoE layer: one decide() of that policy on the host thread
      "decide_default_us": x,        # decide() of a policy the table does not name
      "shared_dram": bool,           # copies and CPU experts share host DRAM bandwidth (``sim.engine``)
      "sources": {"field": "where the figure comes from", ...},
      "ranges": {"field": [low, high], ...}    # plausible range of a figure that is a guess
    }

Every field but name has a default: the defaults are the ``tide-moe`` executor, which prices a plan exactly as
the engine did before executors existed (batched pinned copies, overlap, grouped GEMM; decision time and the
host sync are part of the calibrated ``moe_overhead`` table, whose store runs the all-gpu policy: its decision
is KEEP, about 0). decide() time lives here only (``decide_s``): the ``tide-moe`` preset charges 0, and
``validate.calibrate`` writes ``tide-moe`` with the measured table (``validate.bench_decide``) beside the hardware
profile it calibrates (:func:`beside`), which replays of calibrated runs use. Its keys are checked against the
policy registry where a run starts (``offload.step``: this module cannot import the policies, which price with
``offload.cost``, which imports it). A bad value is a one-line TideError naming the field and its allowed range.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from offload.errors import TideError
from offload.presets import preset_or_file

FORMAT = "tide-moe-executor/1"
EXECUTOR_PRESETS = {"tide-moe": "tide-moe.json", "tide-reference": "tide-reference.json"}
DEFAULT_EXECUTOR = "tide-moe"

_CHOICES = {"copy_granularity": ("batched", "expert", "projection"), "host_memory": ("pinned", "pageable"),
            "act_copies": ("batched", "per_expert"), "lm_head_rows": ("block", "prefix")}
_BOOLS = ("demote_d2h", "overlap", "lm_head_fp32", "shared_dram")
_MAX_US = 1e6  # one second per item: anything above is a unit mistake, not an overhead
_US = ("gpu_expert_overhead_us", "cpu_expert_overhead_us", "host_sync_us", "decide_default_us")
_MAX_SLOTS = 4096
_COPIES_PER_EXPERT = {"batched": 1, "expert": 1, "projection": 3}  # gate, up, down are equal [i, h] blocks


@dataclass(frozen=True)
class ExecutorProfile:
    name: str
    description: str = ""
    copy_granularity: str = "batched"
    host_memory: str = "pinned"
    demote_d2h: bool = False
    gpu_expert_overhead_us: float = 0.0
    cpu_expert_overhead_us: float = 0.0
    act_copies: str = "batched"
    overlap: bool = True
    lm_head_rows: str = "block"
    lm_head_fp32: bool = False
    staging_slots: int = 0
    host_sync_us: float = 0.0
    decide_us: Mapping[str, float] = field(default_factory=dict)
    decide_default_us: float = 0.0
    shared_dram: bool = False
    sources: Mapping[str, str] = field(default_factory=dict)
    ranges: Mapping[str, tuple[float, float]] = field(default_factory=dict)

    # ---- derived ------------------------------------------------------------------------------------
    @property
    def pageable(self) -> bool:
        return self.host_memory == "pageable"

    @property
    def copies_per_expert(self) -> int:
        """Separate copies one expert's weights take (per-expert and per-projection granularity)."""
        return _COPIES_PER_EXPERT[self.copy_granularity]

    @property
    def stage_chunk(self) -> int:
        """Streamed experts per staging chunk (``offload.step`` cuts streams by it): half the slots, ping-pong."""
        return self.staging_slots // (2 if self.staging_slots >= 2 else 1)

    @property
    def stage_buffers(self) -> int:
        return 2 if self.staging_slots >= 2 else 1

    def decide_s(self, policy: str) -> float:
        """Seconds one decide() of ``policy`` takes on the host thread: decide_us[policy], else decide_default_us."""
        return float(self.decide_us.get(policy, self.decide_default_us)) * 1e-6

    # ---- loading ------------------------------------------------------------------------------------
    @classmethod
    def from_dict(cls, d: Mapping[str, Any], origin: str = "executor") -> "ExecutorProfile":
        if not isinstance(d, Mapping):
            raise TideError(f"{origin}: an executor profile must be a JSON object")
        if d.get("format", FORMAT) != FORMAT:
            raise TideError(f"{origin}: unsupported executor format {d.get('format')!r} (expected {FORMAT})")
        known = {f.name for f in fields(cls)} | {"format"}
        unknown = sorted(set(d) - known)
        if unknown:
            raise TideError(f"{origin}: unknown executor field(s) {', '.join(map(repr, unknown))}")
        name = d.get("name", origin)
        if not isinstance(name, str) or not name:
            raise TideError(f"{origin}: name must be a non-empty string")
        args: dict[str, Any] = {"name": name, "description": str(d.get("description", ""))}
        for key, choices in _CHOICES.items():
            if key in d:
                if d[key] not in choices:
                    raise TideError(f"{origin}: {key} must be one of {', '.join(choices)}, got {d[key]!r}")
                args[key] = d[key]
        for key in _BOOLS:
            if key in d:
                if not isinstance(d[key], bool):
                    raise TideError(f"{origin}: {key} must be true or false, got {d[key]!r}")
                args[key] = d[key]
        for key in _US:
            if key in d:
                args[key] = _micros(d[key], key, origin)
        if "staging_slots" in d:
            v = d["staging_slots"]
            if isinstance(v, bool) or not isinstance(v, int) or not 0 <= v <= _MAX_SLOTS:
                raise TideError(f"{origin}: staging_slots must be an integer in [0, {_MAX_SLOTS}], got {v!r}")
            args["staging_slots"] = v
        decide = d.get("decide_us", {})
        if not isinstance(decide, Mapping):
            raise TideError(f"{origin}: decide_us must be an object of policy name -> microseconds")
        args["decide_us"] = {str(k): _micros(v, f"decide_us.{k}", origin) for k, v in decide.items()}
        sources = d.get("sources", {})
        if not isinstance(sources, Mapping) or not all(isinstance(v, str) for v in sources.values()):
            raise TideError(f"{origin}: sources must be an object of field -> string")
        args["sources"] = dict(sources)
        ranges = d.get("ranges", {})
        if not isinstance(ranges, Mapping):
            raise TideError(f"{origin}: ranges must be an object of field -> [low, high]")
        args["ranges"] = {str(k): _range(v, str(k), origin) for k, v in ranges.items()}
        for key in list(args["sources"]) + list(args["ranges"]):
            base = key.split(".")[0]
            if base not in known:
                raise TideError(f"{origin}: sources/ranges name {key!r}, which is no executor field")
        out = cls(**args)
        for key, (lo, hi) in out.ranges.items():  # a figure outside its own stated range is a typo
            base, _, sub = key.partition(".")
            v = out.decide_us.get(sub) if base == "decide_us" and sub else getattr(out, base)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not lo <= v <= hi:
                raise TideError(f"{origin}: {key} = {v!r} lies outside its range [{lo:g}, {hi:g}]")
        return out

    @classmethod
    def load(cls, name_or_path: str | Path | None = None) -> "ExecutorProfile":
        """A preset name (``tide-moe``, ``tide-reference``; None: the default) or an executor JSON file."""
        key = DEFAULT_EXECUTOR if name_or_path is None else str(name_or_path)
        d, origin = preset_or_file(key, EXECUTOR_PRESETS, "offload.presets.executors", "executor",
                                   malformed="malformed executor profile")
        return cls.from_dict(d, origin=origin)

    def to_dict(self) -> dict[str, Any]:
        out = {"format": FORMAT, **asdict(self)}
        out["decide_us"] = dict(self.decide_us)
        out["sources"] = dict(self.sources)
        out["ranges"] = {k: list(v) for k, v in self.ranges.items()}
        return out


def beside(hardware: str | Path) -> Path:
    """The executor profile validate.calibrate writes beside a hardware profile: ``p.json`` -> ``p.executor.json``."""
    return Path(hardware).with_suffix(".executor.json")


def executor_for(hardware: str | Path, executor: str | None = None) -> str:
    """The executor profile to price a run on ``hardware`` with: ``executor`` where one is named, else the one
    calibrated with a hardware profile file (``beside`` it: that host's measured decide() times), else the default."""
    if executor is not None:
        return executor
    mine = beside(hardware)
    return str(mine) if Path(hardware).is_file() and mine.is_file() else DEFAULT_EXECUTOR


def _micros(v: Any, what: str, origin: str) -> float:
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not np.isfinite(v) or not 0 <= v <= _MAX_US:
        raise TideError(f"{origin}: {what} must be a number of microseconds in [0, {_MAX_US:g}], got {v!r}")
    return float(v)


def _range(v: Any, what: str, origin: str) -> tuple[float, float]:
    ok = (isinstance(v, (list, tuple)) and len(v) == 2
          and all(not isinstance(x, bool) and isinstance(x, (int, float)) and np.isfinite(x) for x in v)
          and v[0] <= v[1])
    if not ok:
        raise TideError(f"{origin}: ranges.{what} must be [low, high] with finite low <= high, got {v!r}")
    return float(v[0]), float(v[1])
