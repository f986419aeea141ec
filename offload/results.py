"""Records of runs, simulated and measured, and the one way they go to JSON and back (no simpy here).

:class:`Counters` carry the same names on both sides (the engine and the store). Definitions:

  tokens_per_s   = generated_tokens (positions committed, EOS or not: what traces record and the simulator
                   replays) / sim_time_s (completion of the last work item) or wall_s (measured runs)
  hit_ratio      = gpu_assignments / (gpu_assignments + cpu_assignments)   (token-assignments, routed experts)
  h2d_bytes      = promotions x expert_bytes + activation bytes returned from the CPU
  d2h_bytes      = activation bytes sent to the CPU (one hidden vector per CPU token-assignment)
  busy_s[r]      = total time resource r (gpu, cpu, h2d, d2h, host) was working; <= sim_time_s (records written
                   before the host resource existed lack "host": read it as 0)

:func:`to_json` writes a record (:class:`SimRecord`: a row of ``sim.explore``'s results.json; :class:`RunRecord`:
one of ``runtime.bench``'s runtime_results.json, ``runtime.generate --metrics-out``) as one flat object: nested
records' keys and the REST dict's items inline, then the DERIVED properties; :func:`from_json` reads it back,
dropping RETIRED keys (fields records no longer have, so that files written before still load).
"""
from __future__ import annotations

import sys
from dataclasses import MISSING, dataclass, field, fields
from typing import Any, ClassVar, TypeVar

import numpy as np

from offload.errors import TideError
from offload.plan import PlanTotals
from offload.policies.residency import MoveCounters
from offload.policies.spec import format_policy

RESOURCES = ("gpu", "cpu", "h2d", "d2h", "host")  # host: the thread that syncs, decides and issues (sim.engine)
# what an event was, for the timeline (appended only: timelines store the index)
WHAT = ("step", "dense", "experts_gpu", "experts_cpu", "weights_h2d", "prefetch_h2d", "act_d2h", "act_h2d", "wait",
        "decide", "demote_d2h")


class Record:
    """Base of the records :func:`to_json` writes and :func:`from_json` reads."""

    DERIVED: ClassVar[tuple[str, ...]] = ()  # properties written with the fields (recomputed on reading)
    REST: ClassVar[str | None] = None        # a dict field written inline that takes the keys no field names
    RETIRED: ClassVar[tuple[str, ...]] = ()  # keys older files carry and reading drops


R = TypeVar("R", bound=Record)
_JSON_TYPES = {"int": (int,), "float": (int, float), "str": (str,), "bool": (bool,), "dict": (dict,)}


def to_json(record: Record) -> dict[str, Any]:
    """``record`` as one flat JSON-ready object (tuples and arrays as lists, numpy scalars as Python's)."""
    out: dict[str, Any] = {}
    for f in fields(record):  # type: ignore[arg-type]
        v = getattr(record, f.name)
        out.update(to_json(v) if isinstance(v, Record) else _plain(v) if f.name == record.REST else {f.name: _plain(v)})
    return out | {k: _plain(getattr(record, k)) for k in record.DERIVED}


def _plain(v: Any) -> Any:
    if isinstance(v, dict):
        return {k: _plain(x) for k, x in v.items()}
    if isinstance(v, (tuple, list, np.ndarray)):
        return [_plain(x) for x in v]
    return v.item() if isinstance(v, np.generic) else v


def from_json(cls: type[R], d: Any) -> R:
    """The ``cls`` record :func:`to_json` wrote as ``d``; a missing, unknown or mistyped key is a TideError."""
    if not isinstance(d, dict):
        raise TideError(f"{cls.__name__}: expected a JSON object, got {type(d).__name__}")
    rest = {k: v for k, v in d.items() if k not in cls.DERIVED + cls.RETIRED}
    args: dict[str, Any] = {}
    for f in fields(cls):  # type: ignore[arg-type]
        sub = vars(sys.modules[cls.__module__]).get(str(f.type))
        if isinstance(sub, type) and issubclass(sub, Record):  # a nested record: its keys are inline
            own = {g.name for g in fields(sub)} | set(sub.DERIVED)  # type: ignore[arg-type]
            args[f.name] = from_json(sub, {k: rest.pop(k) for k in list(rest) if k in own})
        elif f.name in rest and f.name != cls.REST:
            args[f.name] = _typed(f"{cls.__name__} key {f.name!r}", str(f.type), rest.pop(f.name))
        elif f.default is MISSING and f.default_factory is MISSING:
            raise TideError(f"{cls.__name__}: missing key {f.name!r}")
    if cls.REST is not None:
        args[cls.REST] = rest
    elif rest:
        raise TideError(f"{cls.__name__}: unknown key(s) {', '.join(map(repr, sorted(rest)))}")
    return cls(**args)


def _typed(where: str, hint: str, v: Any) -> Any:
    """``v`` checked against a field's annotation in JSON's types (a tuple comes as a list, a float may be an int)."""
    base, _, none = hint.partition(" | ")
    if v is None and none == "None":
        return None
    if base.startswith("tuple[") and isinstance(v, list):
        return tuple(_typed(where, base[6:base.index(",")], x) for x in v)
    if isinstance(v, _JSON_TYPES.get(base.split("[")[0], ())) and (base == "bool" or not isinstance(v, bool)):
        return float(v) if base == "float" else v
    raise TideError(f"{where}: expected {hint}, got {type(v).__name__} {v!r:.40}")


@dataclass(frozen=True)
class Counters(Record):
    """The work one run did, counted alike by the engine and the store (definitions in the module docstring)."""

    h2d_bytes: int
    d2h_bytes: int
    h2d_weight_bytes: int  # promoted, streamed and prefetched expert weights (the rest of h2d_bytes: activations)
    promotions: int
    demotions: int
    cpu_assignments: int
    gpu_assignments: int
    DERIVED: ClassVar[tuple[str, ...]] = ("hit_ratio",)

    @property
    def hit_ratio(self) -> float:
        total = self.gpu_assignments + self.cpu_assignments
        return self.gpu_assignments / total if total else 1.0

    @classmethod
    def of(cls, moves: MoveCounters, totals: PlanTotals, expert_bytes: int) -> Counters:
        """The engine's or store's counters from its residency's moves and the sums of the plans it carried out."""
        weight, act = int(moves.promotions) * int(expert_bytes), int(totals.act_bytes)  # promotions count streams too
        return cls(h2d_bytes=weight + act, d2h_bytes=act, h2d_weight_bytes=weight, promotions=int(moves.promotions),
                   demotions=int(moves.demotions), cpu_assignments=int(totals.cpu_assignments),
                   gpu_assignments=int(totals.gpu_assignments))


@dataclass(frozen=True)
class SimRecord(Record):
    """One simulated run as sweeps, studies and reports read it: a row of ``sim.explore``'s results.json."""

    policy: str
    params: dict[str, Any]
    trace: str                     # the trace's name
    mode: str                      # its diffusion mode
    tau: int | None                # refresh interval: the policy's parameter, or the one it chose (tide-opt)
    budget: int                    # GPU experts per MoE layer (all of them for a policy that needs no budget)
    causal: bool                   # False: a bound the runtime cannot execute (oracle)
    policy_report: dict[str, Any]  # what the policy decided for itself during the run (Policy.report)
    generated_tokens: int
    sim_time_s: float
    counters: Counters
    busy_s: dict[str, float]       # per resource (RESOURCES)
    step_time_mean_s: float
    step_time_p50_s: float
    steps: int                     # forward passes
    events: int                    # simulation events processed
    wall_s: float                  # wall time the simulation took
    # a true lower bound on the run time of any policy for this trace, budget and machine (sim.bound: a fluid
    # relaxation); None where it was not computed (a bare simulate call)
    bound_s: float | None = None
    tags: dict[str, Any] = field(default_factory=dict)  # the task's tags (a study's grid coordinates)
    DERIVED: ClassVar[tuple[str, ...]] = ("label", "tokens_per_s", "bound_tokens_per_s", "utilisation",
                                          "events_per_s")
    REST: ClassVar[str | None] = "tags"
    RETIRED: ClassVar[tuple[str, ...]] = ("lower_bound_s",)  # mandatory GPU work: sim.engine.mandatory_gpu_time

    @property
    def label(self) -> str:
        return format_policy(self.policy, self.params)

    @property
    def tokens_per_s(self) -> float:
        return self.generated_tokens / self.sim_time_s if self.sim_time_s > 0 else 0.0

    @property
    def bound_tokens_per_s(self) -> float | None:
        """The throughput no policy can exceed on this trace, budget and machine (from ``bound_s``)."""
        return self.generated_tokens / self.bound_s if self.bound_s else None

    @property
    def utilisation(self) -> dict[str, float]:
        """Busy share of the simulated time, per resource."""
        return {k: v / self.sim_time_s if self.sim_time_s else 0.0 for k, v in self.busy_s.items()}

    @property
    def events_per_s(self) -> float:
        return self.events / max(self.wall_s, 1e-9)  # finite, so the JSON stays valid


@dataclass(frozen=True)
class RunRecord(Record):
    """One runtime run (``runtime.session.Session.run``), as ``validate.runs`` reads it back."""

    policy: str
    params: dict[str, Any]
    mode: str
    model: str                     # the model spec's name
    random_weights: bool
    device: str                    # cpu or cuda
    dtype: str                     # of the weights that ran, e.g. bfloat16
    budget: int                    # GPU experts per MoE layer requested (recorded for all-gpu too: runs rank by it)
    settings: dict[str, Any]       # runtime.diffusion.GenerationSettings
    prompt_tokens: int
    tokens: tuple[int, ...]        # the output: ids up to and including the first EOS, at most gen_length
    generated_tokens: int          # len(tokens), what tokens_per_s counts as TIDE's evaluation does (trace header's
                                   # output_tokens; positions committed after the EOS are work, not output)
    forwards: int
    wall_s: float                  # first forward to last
    step_times_s: tuple[float, ...]  # each forward (model call and synchronisation)
    step_wall_s: tuple[float, ...]   # each step's share of wall_s (sampler and bookkeeping included; sums to wall_s)
    cpu_s: float | None              # process CPU time over the generation, all threads
    step_cpu_s: tuple[float, ...]    # the same per step
    counters: Counters
    max_resident: tuple[int, ...]    # most experts resident at once, per MoE layer
    layer_budgets: tuple[int, ...]   # per MoE layer at the end (a policy may move budget between layers)
    host_pinned: bool                # the host expert stacks are page-locked
    environment: dict[str, Any] = field(default_factory=dict)  # runtime.environment (runtime.bench: once per file)
    priced_with: str = ""            # the hardware profile cost-aware decisions were priced with ("": none)
    # the share of the CPU the generation got (offload.cpu_share; below its STARVED_BELOW the timings are not
    # comparable); None: not measured (records written before it was)
    cpu_share: float | None = None
    DERIVED: ClassVar[tuple[str, ...]] = ("label", "tokens_per_s")

    @property
    def label(self) -> str:
        return format_policy(self.policy, self.params)

    @property
    def tokens_per_s(self) -> float:
        """Output tokens per second of wall time (the simulator's definition: the trace's generated_tokens)."""
        return self.generated_tokens / self.wall_s if self.wall_s > 0 else 0.0


@dataclass(frozen=True, eq=False)
class EventLog:
    """Columns of the timeline; one row per busy interval of a resource, plus rows with what = "wait" on the gpu
    resource for the intervals the GPU stream stalled (idle, not counted in busy_s). With a shared-duplex link
    the "h2d" and "d2h" rows occupy one engine."""

    resource: np.ndarray  # int8 index into RESOURCES
    start: np.ndarray     # float64 seconds
    end: np.ndarray       # float64 seconds
    step: np.ndarray      # int32
    layer: np.ndarray     # int16 (-1: not a MoE layer)
    what: np.ndarray      # int8 index into WHAT

    def __len__(self) -> int:
        return int(self.start.size)


@dataclass(frozen=True, eq=False, kw_only=True)
class SimResult(SimRecord):
    """What ``sim.engine.simulate`` returns: the run's record (:meth:`record`) and its per-step and per-layer arrays."""

    step_times_s: np.ndarray  # [S]
    max_resident: np.ndarray  # [L] most experts resident at once, per layer
    layer_budget: np.ndarray  # [L] the budget it started with
    timeline: EventLog | None = None

    def record(self, tags: dict[str, Any] | None = None) -> SimRecord:
        """The JSON-ready record alone, with the task's ``tags``."""
        return SimRecord(**{f.name: getattr(self, f.name) for f in fields(SimRecord)} | {"tags": dict(tags or {})})
