"""``python -m validate.calibrate``: measure this machine with micro-benchmarks and write a hardware profile.

    python -m validate.calibrate --device cuda|cpu [--out PROFILE.json] [--model M] [--dtype D] [--threads N]
                                 [--quick] [--max-seconds S] [--deadline-seconds S]

Every table of the simulator's cost model (``offload.cost``) is measured with the runtime's own code, on one
decoder layer of each kind of ``--model`` (default llada2-tiny on cpu, llada2.0-mini on cuda), in the
runtime's dtype (float32 on cpu, bfloat16 on cuda): routed experts on the device and on the host
(validate.bench_experts), attention / embeddings / dense MLP / router + shared expert / lm_head + sampler and
the generation loop's own per-step work (validate.bench_layers), the expert store's per-layer fixed work
(validate.bench_store), and the copies (validate.bench_copies); then each policy's decide() time
(validate.bench_decide: numpy, under a second), written to the ``tide-moe`` executor profile beside the hardware
profile (``offload.executor.beside``). Each table is checked on held-out points that were not used to build it;
the errors are printed and stored in the profile (``calibration.holdout``).

Written as it goes: the profile is rewritten (atomically) after every table, so a run killed by an outer
time limit leaves everything measured so far (see :class:`Progress`). The tables a profile needs (REQUIRED and
the step overhead) are measured first; until they exist the record goes to ``<out stem>.partial.json``, a file
HardwareProfile.load refuses; from then on ``--out`` is a loadable profile with ``calibration.complete``
false, true only at the end of a run that measured everything. Every line printed is flushed at once, so the
log of a killed run is whole too. ``--max-seconds`` skips the informational tables after that long;
``--deadline-seconds`` starts no table at all after that long (the run then ends with ``complete`` false, and
with exit status 2 if the required tables were not all measured).

On device=cpu the "GPU" is the CPU itself and the copies are memcpy: what the runtime executes there. The
profile then says ``single_device: true`` (one serial device; activations never move).

The CPU share each measurement got (offload.cpu_share) is recorded in ``calibration.cpu_share_by_table``, the
whole run's in ``calibration.cpu_share``; a measurement below 0.8 is marked on its line and named in a warning
on stderr (the machine was busy), and validate.compare compares no timings against such a profile.

Hold-out discipline: nothing here runs an end-to-end generation of the model; the profile comes from
micro-benchmarks only. Imports need torch and numpy only (no simpy, plotly, scipy): it runs on the GPU machine.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import torch

from offload.cli import add_model, Parser
from offload.errors import TideError, run_cli
from offload.atomic_io import atomic_write_text
from offload.cpu_share import CpuMeter, busy_warning, starved
from offload.cost import RooflineCostModel
from offload.executor import ExecutorProfile, beside
from offload.hardware import HardwareProfile
from validate import bench_copies, bench_decide, bench_experts, bench_layers, bench_store
from runtime.environment import environment
from validate.profile_build import build_profile, holdout_summary
from validate.rig import Rig, build_rig
from validate.tables import Measured, geometric_midpoints
from validate.timing import Clock, TimingSettings, host_flush_size, last_level_cache_bytes

HOST_TABLES = ("cpu_expert", "cpu_expert_threads")  # timed after a host-cache flush too
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
REQUIRED = ("gpu_expert", "cpu_expert", "copy_h2d", "copy_d2h")  # with the step overhead: what a profile needs
PARTIAL_FORMAT = "tide-moe-incomplete-calibration/1"  # not offload.hardware.FORMAT: HardwareProfile.load refuses it


def grids(device: str, quick: bool, E: int) -> dict[str, Any]:
    """Measurement grids (tokens, context, rows per expert, experts per copy) by device and --quick."""
    if quick:
        tokens = [1, 32, 64, 128, 256, 512]
        att = [32, 64, 128, 256]
        gpu_rows = [1, 4, 16, 64, 256] if device == "cpu" else [1, 4, 16, 64, 256, 1024, 4096]
        cpu_rows = [1, 4, 16, 64, 256]
        k = [1, 4, 16, E]
    else:
        tokens = [1, 8, 32, 64, 128, 256, 512, 1024, 2048] + ([4096] if device == "cuda" else [])
        att = [8, 32, 64, 128, 256, 512, 1024, 2048] + ([4096] if device == "cuda" else [])
        gpu_rows = [1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096]
        cpu_rows = [1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024]
        k = [1, 2, 4, 8, 16, 32, 64, 128, 256]
    k = sorted({min(v, E) for v in k})
    return {
        "tokens": tokens, "tokens_held": geometric_midpoints(tokens[1:], 2) or [48],
        "attention": att, "attention_held": [(48, 48), (32, 96), (96, 192)] + ([] if quick else [(32, 768), (384, 384)]),
        "gpu_rows": gpu_rows, "cpu_rows": cpu_rows, "batch_tokens": [32, 128] if quick else [32, 128, 512],
        "lm_rows": [1, 8, 32, 64, 128], "lm_held": [16, 48],
        "k": k, "k_held": [v for v in geometric_midpoints(k) if v not in k][:3],
        # host rows per call: bf16 experts of a LLaDA2.0-mini shape on the host are slow to compute
        "rows_cap_gpu": 65536 if device == "cuda" else 4096, "rows_cap_cpu": 2048 if device == "cuda" else 4096,
        "threads_tokens": [1, 16] if quick or device == "cuda" else [1, 16, 128],
    }


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = Parser(prog="python -m validate.calibrate", description=__doc__.split("\n\n")[0])
    p.add_argument("--device", required=True, choices=("cpu", "cuda"))
    p.add_argument("--out", default=None, help="profile JSON to write (default runs/profile-<device>-<model>-<time>.json)")
    add_model(p, what="; default llada2-tiny on cpu, llada2.0-mini on cuda")
    p.add_argument("--dtype", default=None, choices=tuple(DTYPES), help="default float32 on cpu, bfloat16 on cuda")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (as the runtime's --threads)")
    p.add_argument("--quick", action="store_true", help="fewer points and repeats (tests, a first look)")
    p.add_argument("--block-length", type=int, default=32, help="block length for the sampler and attention mask")
    p.add_argument("--max-seconds", type=float, default=None,
                   help="after this long, skip the informational tables (threads, pageable, duplex)")
    p.add_argument("--deadline-seconds", type=float, default=None,
                   help="after this long, start no further table at all: the profile is written with "
                        "calibration.complete false (set it below an outer kill, e.g. timeout)")
    return p.parse_args(argv)


def _say(text: str) -> None:
    """Print and flush at once: a phase killed by ``timeout`` keeps its log up to the kill."""
    print(text, flush=True)


def _share_note(share: float | None) -> str:
    """What follows a measurement's line when it was starved (offload.cpu_share), else nothing."""
    return f"  CPU share {share:.2f}: the machine was busy" if starved(share) else ""


def _table_line(row: tuple[str, int, int, float | None, float | None]) -> str:
    name, n, nh, med, mx = row
    fmt = lambda v: "-" if v is None else f"{100 * v:.1f}%"  # noqa: E731
    return f"{name:<20}{n:>7}{nh:>9}{fmt(med):>15}{fmt(mx):>12}"


def partial_path(out: Path) -> Path:
    """Where the record goes while the required tables are missing: ``profile.json`` -> ``profile.partial.json``."""
    return out.with_suffix(".partial.json")


def _unlink(path: Path) -> None:
    try:
        path.unlink()
    except FileNotFoundError:
        pass


@dataclass
class Progress:
    """The tables measured so far, rewritten to disk after each one so that a killed run leaves them all.

    Files (at most one of the two exists after any write, both atomic, both from this run):
      ``out``                a loadable hardware profile, once REQUIRED and the step overhead are measured;
                             ``calibration.complete`` is false until the last write of a run that measured
                             every table it set out to (the informational ones --max-seconds skips aside)
      ``beside(out)``        the ``tide-moe`` executor profile with the measured decide() times, once measured
      ``partial_path(out)``  before that: the tables so far under format PARTIAL_FORMAT, which
                             HardwareProfile.load refuses with a one-line error naming it
    A file left at ``out`` by an earlier run is removed by this run's first (partial) write: whatever sits at
    ``out`` afterwards was measured by this run.
    """

    out: Path
    rig: Rig
    env: dict[str, Any]
    base: dict[str, Any]  # calibration record fields fixed at the start
    clocks: tuple[Clock, ...]
    t_start: float
    max_seconds: float | None = None
    deadline_seconds: float | None = None
    on_save: Callable[[str, Path], None] | None = None  # after every write: (what was measured, path written)
    tables: dict[str, Measured] = field(default_factory=dict)
    step: dict[str, float] | None = None
    decide: dict[str, float] | None = None  # policy -> us per decide() (the executor's decide_us), once measured
    skipped: list[str] = field(default_factory=list)  # informational tables skipped by --max-seconds
    cut: list[str] = field(default_factory=list)  # tables not started because --deadline-seconds had passed
    finished: list[str] = field(default_factory=list)  # measured so far, in order ("step": the step overhead)
    # the CPU share each measurement got (offload.cpu_share; "step" and "decide" too), and the whole run's
    shares: dict[str, float | None] = field(default_factory=dict)
    meter: CpuMeter | None = None

    def __post_init__(self) -> None:
        if self.meter is None:
            self.meter = self._meter()

    def _meter(self) -> CpuMeter:
        return CpuMeter(torch.get_num_threads() if self.rig.device.type == "cpu" else 1)

    def starved_tables(self) -> list[str]:
        """The measurements that got less of the CPU than offload.cpu_share.STARVED_BELOW."""
        return [name for name, share in self.shares.items() if starved(share)]

    def elapsed(self) -> float:
        return time.perf_counter() - self.t_start

    def ready(self) -> bool:
        """True once build_profile has what it needs: REQUIRED tables and the step overhead."""
        return self.step is not None and all(name in self.tables for name in REQUIRED)

    def done(self) -> list[str]:
        return list(self.finished)

    @property
    def duplex_ratio(self) -> float | None:
        t = self.tables.get("copy_duplex")
        return float(max(t.extra["ratio"])) if t is not None else None

    def _may_start(self, name: str, optional: bool) -> bool:
        """False (and noted) when the deadline, or for an informational table --max-seconds, has passed."""
        if self.deadline_seconds is not None and self.elapsed() > self.deadline_seconds:
            self.cut.append(name)
            return False
        if optional and self.max_seconds is not None and self.elapsed() > self.max_seconds:
            self.skipped.append(name)
            return False
        return True

    def run(self, name: str, fn: Callable[[], Measured | None], optional: bool = False) -> None:
        """Measure one table (None: not applicable here), print its time, rewrite the file."""
        if not self._may_start(name, optional):
            return
        t0, meter = time.perf_counter(), self._meter()
        t = fn()
        if t is None:
            return
        self.shares[name] = meter.stop()
        self.tables[name] = t
        self.finished.append(name)
        _say(f"  {name:<20} {time.perf_counter() - t0:6.1f} s{_share_note(self.shares[name])}")
        self._saved(name, self.save())

    def run_step(self, fn: Callable[[], dict[str, float]]) -> None:
        """Measure the generation loop's per-forward overhead (not a table, but build_profile needs it)."""
        if not self._may_start("step", optional=False):
            return
        t0, meter = time.perf_counter(), self._meter()
        self.step = fn()
        self.shares["step"] = meter.stop()
        self.finished.append("step")
        _say(f"  {'step':<20} {time.perf_counter() - t0:6.1f} s{_share_note(self.shares['step'])}")
        self._saved("step", self.save())

    def run_decide(self, fn: Callable[[], dict[str, float]]) -> None:
        """Measure the policies' decide() times (the executor profile's ``decide_us``); after the required
        tables, since riptide and tide-opt price their choices with the cost model of the profile so far."""
        if not self._may_start("decide", optional=False) or not self.ready():
            return
        t0, meter = time.perf_counter(), self._meter()
        self.decide = fn()
        self.shares["decide"] = meter.stop()
        self.finished.append("decide")
        _say(f"  {'decide':<20} {time.perf_counter() - t0:6.1f} s{_share_note(self.shares['decide'])}")
        self._saved("decide", self.save())

    def profile(self, complete: bool = False) -> dict[str, Any]:
        """The hardware profile as of now (only once ready())."""
        return build_profile(self.rig, self.tables, self.step, self.env, self.calibration(complete),
                             self.duplex_ratio)

    def _saved(self, name: str, path: Path) -> None:
        if self.on_save is not None:
            self.on_save(name, path)

    def calibration(self, complete: bool) -> dict[str, Any]:
        """The profile's ``calibration`` record as of now."""
        timing = {**self.base["timing"], "samples": sum(c.samples for c in self.clocks)}
        return {
            **self.base, "timing": timing, "complete": complete, "tables_done": self.done(),
            "required": [*REQUIRED, "step"], "seconds": round(self.elapsed(), 2), "skipped": list(self.skipped),
            "deadline_cut": list(self.cut), "step_overhead": dict(self.step) if self.step else None,
            "duplex_ratio": self.duplex_ratio,
            "holdout": {name: t.holdout for name, t in self.tables.items() if t.holdout},
            "notes": {name: t.note for name, t in self.tables.items() if t.note},
            "raw": {name: t.extra for name, t in self.tables.items() if t.extra},
            # offload.cpu_share: the whole run so far, and each measurement (validate.compare does not compare
            # timings against a profile any of whose measurements was starved)
            "cpu_share": self.meter.stop() if self.meter is not None else None,
            "cpu_share_by_table": dict(self.shares),
        }

    def save(self, complete: bool = False) -> Path:
        """Rewrite the profile (or, before the required tables, the partial record) atomically; its path."""
        if self.ready():
            profile = self.profile(complete)
            atomic_write_text(self.out, json.dumps(profile, indent=1) + "\n")
            if self.decide:  # decide() time is the executor's: tide-moe with this host's table, beside the profile
                x = ExecutorProfile.load("tide-moe").to_dict()
                x["decide_us"] = dict(self.decide)
                x["sources"]["decide_us"] = f"validate.bench_decide: median us per decide() call on {profile['name']}"
                atomic_write_text(beside(self.out), json.dumps(x, indent=1) + "\n")
            _unlink(partial_path(self.out))
            return self.out
        missing = [name for name in (*REQUIRED, "step") if name not in self.done()]
        record = {
            "format": PARTIAL_FORMAT,
            "note": (f"incomplete calibration, not a hardware profile: {', '.join(missing)} not measured yet; "
                     f"python -m validate.calibrate writes {self.out.name} once they are"),
            "tables": {name: t.to_json() for name, t in self.tables.items()},
            "calibration": self.calibration(complete),
            "environment": dict(self.env),
        }
        path = partial_path(self.out)
        atomic_write_text(path, json.dumps(record, indent=1) + "\n")
        _unlink(self.out)
        _unlink(beside(self.out))
        return path


def _timing(device: str, quick: bool) -> tuple[TimingSettings, int | None]:
    """Timing settings for ``device`` and the last-level cache size they were sized from (bytes, None unread).

    cuda: 256 MiB of GPU scratch (beyond the L2 of any GPU) and host scratch sized from the host's last-level
      cache (validate.timing.host_flush_size): the CPU experts run on the host and, in the runtime, read their
      weights from DRAM.
    cpu: one 16 MiB host scratch, beyond a core's L1 + L2 but not the last-level cache. Kept modest on purpose:
      the CPU path is calibrated on llada2-tiny, whose whole model (~10 MiB) stays in the last-level cache in
      the runtime too, so an LLC-sized flush would time it colder than it runs; and at 4x a 32 MiB L3 each
      flush costs ~4 ms, about 4 s more per --quick calibration (~1100 flushes), which the tests run.
    """
    llc = last_level_cache_bytes()
    repeats = 5 if quick else 9
    if device == "cuda":
        return TimingSettings(warmup=2, repeats=repeats, flush_bytes=256 * 2**20,
                              host_flush_bytes=host_flush_size(llc)), llc
    return TimingSettings(warmup=2, repeats=repeats, flush_bytes=16 * 2**20), llc


def calibrate(a: argparse.Namespace, on_save: Callable[[str, Path], None] | None = None) -> tuple[dict[str, Any], Path]:
    """Measure every table, rewriting the profile after each (see Progress); the final profile and its path.

    ``on_save(name, path)`` is called after each write (tests use it to stop a run as a kill would).
    """
    if a.device == "cuda" and not torch.cuda.is_available():
        raise TideError(f"--device cuda requested but CUDA is not available (torch {torch.__version__})")
    if a.threads is not None and a.threads < 1:
        raise TideError("--threads must be >= 1")
    if a.block_length < 1:
        raise TideError("--block-length must be >= 1")
    deadline = getattr(a, "deadline_seconds", None)
    if deadline is not None and not 0 < deadline < float("inf"):
        raise TideError(f"--deadline-seconds must be a number of seconds > 0, got {deadline}")
    max_seconds = getattr(a, "max_seconds", None)
    if max_seconds is not None and not 0 < max_seconds < float("inf"):
        raise TideError(f"--max-seconds must be a number of seconds > 0, got {max_seconds}")
    device = torch.device(a.device)
    dtype = DTYPES[a.dtype or ("bfloat16" if a.device == "cuda" else "float32")]
    model = a.model or ("llada2.0-mini" if a.device == "cuda" else "llada2-tiny")
    out = Path(a.out) if a.out else Path("runs") / f"profile-{a.device}-{model.replace('/', '_')}-{time.strftime('%Y%m%d-%H%M%S')}.json"
    t_start = time.perf_counter()
    rig = build_rig(model, device, dtype, a.threads)
    env = environment(device, dtype)
    timing, llc = _timing(a.device, a.quick)
    # host caches matter for what runs on the host (the CPU experts); flushing them before every sample of a
    # GPU table would only add tens of ms per sample (and cold host code to launch-bound GPU tables), so on CUDA
    # the device tables get a clock that flushes the GPU only
    host_clock = Clock(device, timing)
    clock = Clock(device, dataclasses.replace(timing, host_flush_bytes=0)) if device.type == "cuda" else host_clock
    g = grids(a.device, a.quick, rig.spec.num_experts)
    base = {
        "method": "micro-benchmarks only (validate.calibrate); no end-to-end generation was run or used",
        "device": a.device, "dtype": env["dtype"], "threads": env["threads"], "quick": bool(a.quick),
        "model": rig.full_spec.name, "block_length": a.block_length,
        "timing": {"warmup": timing.warmup, "repeats": timing.repeats, "flush_bytes": timing.flush_bytes,
                   "device_flush_bytes": clock.device_flush_bytes, "host_flush_bytes": host_clock.host_flush_bytes,
                   "host_flush_tables": list(HOST_TABLES),
                   "host_llc_bytes": llc,
                   "statistic": "median of single calls, each after a cache flush (*_flush_bytes)"},
    }
    p = Progress(out, rig, env, base, tuple({id(c): c for c in (clock, host_clock)}.values()), t_start, a.max_seconds, deadline, on_save)
    _say(f"calibrating {rig.full_spec.name} layers on {env.get('gpu', env['cpu'])} ({a.device}, {env['dtype']}, "
         f"{env['threads']} threads){' --quick' if a.quick else ''}; built in {p.elapsed():.1f} s; "
         f"flush {clock.device_flush_bytes / 2**20:.0f} MiB device + {host_clock.host_flush_bytes / 2**20:.0f} MiB host")
    with torch.inference_mode():
        _measure_all(p, clock, host_clock, rig, g, a)
    complete = not p.cut
    path = p.save(complete=complete)
    if not p.ready():
        missing = ", ".join(name for name in (*REQUIRED, "step") if name not in p.done())
        why = f" before --deadline-seconds {deadline:g} passed" if p.cut else ""
        raise TideError(f"incomplete calibration: {missing} not measured{why}; the tables so far are in {path}")
    profile = json.loads(path.read_text())
    _report(p, profile, path, complete)
    return profile, path


def _measure_all(p: Progress, clock: Clock, host_clock: Clock, rig: Rig, g: dict[str, Any],
                 a: argparse.Namespace) -> None:
    """Every table, the ones a profile needs first (REQUIRED, then the step overhead): killed after them, a run
    still leaves a loadable profile. The order does not change a measurement: each sample starts cold. The
    tables of work on the host (HOST_TABLES) are timed with ``host_clock``, which also flushes host caches."""
    p.run("gpu_expert", lambda: bench_experts.expert_table("gpu_expert", clock, rig, g["gpu_rows"], g["rows_cap_gpu"],
                                                           g["batch_tokens"], on_host=False))
    p.run("cpu_expert", lambda: bench_experts.expert_table("cpu_expert", host_clock, rig, g["cpu_rows"], g["rows_cap_cpu"],
                                                           g["batch_tokens"], on_host=True))
    p.run("copy_h2d", lambda: bench_copies.h2d_table(clock, rig, g["k"], g["k_held"]))
    d2h_grid, d2h_held = bench_copies.d2h_sizes(rig, a.quick)
    p.run("copy_d2h", lambda: bench_copies.single_table("copy_d2h", clock, rig, d2h_grid, d2h_held, pinned=True))
    p.run_step(lambda: bench_layers.step_overhead(clock, rig, a.block_length, clock.settings.repeats))
    p.run("attention", lambda: bench_layers.attention_table(clock, rig, g["attention"], g["attention_held"], a.block_length))
    p.run("embed", lambda: bench_layers.embed_table(clock, rig, g["tokens"], g["tokens_held"]))
    if rig.dense_layer is not None:
        p.run("dense_mlp", lambda: bench_layers.mlp_table("dense_mlp", clock, rig, g["tokens"], g["tokens_held"]))
    p.run("moe_dense", lambda: bench_layers.mlp_table("moe_dense", clock, rig, g["tokens"], g["tokens_held"]))
    p.run("moe_overhead", lambda: bench_store.moe_overhead_table(clock, rig, g["tokens"], g["tokens_held"]))
    p.run("lm_head", lambda: bench_layers.lm_head_table(clock, rig, g["lm_rows"], g["lm_held"]))
    p.run_decide(lambda: bench_decide.decide_table(*_decide_model(p)))
    threads = sorted({1, torch.get_num_threads()} | ({max(1, torch.get_num_threads() // 2)} if not a.quick else set()))
    p.run("cpu_expert_threads", lambda: bench_experts.threads_table(host_clock, rig, threads, g["threads_tokens"]),
          optional=True)
    if rig.device.type == "cuda":
        # informational: a few sizes from one expert up to 64 MiB keep these tables to seconds
        big = [b for b in d2h_grid if rig.store.expert_bytes <= b <= 64 * 2**20][:3] or d2h_grid[-1:]
        for name in ("copy_h2d_pageable", "copy_d2h_pageable"):
            p.run(name, lambda name=name: bench_copies.single_table(name, clock, rig, big, [], pinned=False), optional=True)
        if "copy_d2h" in p.tables:
            p.run("copy_duplex", lambda: bench_copies.duplex_table(clock, rig, big, p.tables["copy_d2h"]), optional=True)


def _decide_model(p: Progress) -> tuple[Any, RooflineCostModel]:
    """The calibrated model's spec in the calibration dtype and the cost model of the profile measured so far."""
    rig = p.rig
    spec = dataclasses.replace(rig.full_spec, dtype_bytes=torch.empty(0, dtype=rig.dtype).element_size())
    return spec, RooflineCostModel(spec, HardwareProfile.from_dict(p.profile(), origin="profile so far"))


def _report(p: Progress, profile: dict[str, Any], path: Path, complete: bool) -> None:
    """The held-out summary and the closing lines."""
    step = p.step or {}
    _say(f"\n{'table':<20}{'points':>7}{'held-out':>9}{'median |err|':>15}{'max |err|':>12}")
    for row in holdout_summary(p.tables):
        _say(_table_line(row))
    _say(f"step overhead {step['step_overhead_s'] * 1e6:.1f} us per forward (loop {step['loop_per_forward_s'] * 1e6:.1f} us"
         f" - sampler {step['sampler_s'] * 1e6:.1f} us); link shared_duplex={profile['link']['shared_duplex']}"
         + (f"; skipped {', '.join(p.skipped)}" if p.skipped else ""))
    if p.decide:
        _say("decide() per layer: " + ", ".join(f"{k} {v:.1f} us" for k, v in p.decide.items()) + f" ({beside(path)})")
    if not complete:
        _say(f"INCOMPLETE: --deadline-seconds passed before {', '.join(p.cut)}; calibration.complete is false")
    busy = p.starved_tables()
    if busy:
        worst = min(p.shares[name] for name in busy)
        names = ", ".join(busy[:3]) + (f" and {len(busy) - 3} more" if len(busy) > 3 else "")
        print(busy_warning(worst, f"calibration ({names})") + "; validate.compare will not compare timings "
              "against this profile", file=sys.stderr, flush=True)
    _say(f"wrote {path} in {p.elapsed():.1f} s")


def main(argv: Sequence[str] | None = None) -> int:
    calibrate(parse_args(argv))
    return 0


if __name__ == "__main__":
    run_cli(main)
