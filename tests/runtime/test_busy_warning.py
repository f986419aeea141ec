"""The CPU share a measurement got (offload.cpu_share), and its warning in runtime.generate and runtime.bench
(issue 17: a bench run at 0.99 tokens/s against 74-102 on reruns, and nothing warned).

A starved run is made deterministic by replacing the sampler with one whose clocks say the process ran a quarter
of the time it was runnable; no test here asserts on a timing."""

from __future__ import annotations

import itertools
import json
import threading

import pytest

from offload import cpu_share
from offload.cpu_share import STARVED_BELOW, CpuMeter, Sample, busy_warning, share_between, starved

TINY = ["--threads", "1", "--gen-length", "16", "--block-length", "8", "--steps", "4", "--prompt-length", "8"]


def test_the_threshold_is_one_number():
    assert STARVED_BELOW == 0.8
    assert not starved(None) and not starved(0.8) and not starved(1.0) and starved(0.79)


def test_share_from_the_schedulers_counts():
    """run / (run + waited) over the threads; a thread born in the interval counts from 0, one whose id was
    reused (counts went down) counts as new; a thread that sleeps (no run, no wait) does not count at all."""
    a = Sample(wall_s=10.0, cpu_s=5.0, sched={1: (4.0, 1.0), 2: (1.0, 0.0), 3: (9.0, 9.0), 4: (2.0, 0.0)})
    b = Sample(wall_s=12.0, cpu_s=7.0, sched={1: (5.0, 2.0), 2: (1.0, 0.0), 3: (0.5, 0.5), 5: (1.5, 0.0)})
    # thread 1: ran 1, waited 1; thread 2 slept; thread 3 is new (0.5, 0.5); thread 5 is new (1.5, 0); 4 ended
    assert share_between(a, b) == pytest.approx(3.0 / (3.0 + 1.5))


def test_share_without_scheduler_counts_is_cpu_over_wall_times_threads():
    a, b = Sample(wall_s=0.0, cpu_s=0.0), Sample(wall_s=2.0, cpu_s=3.0)
    assert share_between(a, b, threads=2) == pytest.approx(0.75)
    assert share_between(a, b, threads=1) == 1.0  # clamped: more CPU than wall time is not more than all of it
    assert share_between(b, a) is None  # an empty (or reversed) interval has no share
    idle = Sample(wall_s=2.0, cpu_s=3.0, sched={1: (0.0, 0.0)})  # no scheduler time in the interval: the fallback
    assert share_between(Sample(0.0, 0.0, {1: (0.0, 0.0)}), idle, threads=4) == pytest.approx(3 / 8)


def test_busy_warning():
    assert busy_warning(None) is None and busy_warning(0.95) is None
    w = busy_warning(0.25, "tide [block-cache]")
    assert w.startswith("warning: tide [block-cache]: the machine was busy: these timings are not comparable")
    assert "0.25 < 0.8" in w and "\n" not in w


def test_a_real_meter_gives_a_share_between_0_and_1():
    """The live sampler, with a second busy thread: only the bounds are asserted (the share depends on the load)."""
    stop = threading.Event()

    def spin() -> None:
        while not stop.is_set():
            sum(range(1000))

    worker = threading.Thread(target=spin)
    m = CpuMeter(threads=2)
    worker.start()
    sum(i * i for i in range(200_000))
    stop.set()
    worker.join()
    share = m.stop()
    assert share is not None and 0.0 <= share <= 1.0


@pytest.fixture
def starving(monkeypatch):
    """The process's clocks as a busy machine shows them: each sample 1 s later, of which it ran 0.25 s."""
    tick = itertools.count()

    def fake() -> Sample:
        t = float(next(tick))
        return Sample(wall_s=t, cpu_s=0.25 * t, sched={1: (0.25 * t, 0.75 * t)})

    monkeypatch.setattr(cpu_share, "sample", fake)


def test_generate_flags_a_starved_run(starving, tmp_path, capsys):
    from runtime import generate

    m = tmp_path / "m.json"
    assert generate.main([*TINY, "--policy", "tide(tau=2)", "--quiet", "--metrics-out", str(m)]) == 0
    out, err = capsys.readouterr()
    assert "CPU share 0.25" in out
    assert err.strip().startswith("warning: tide(tau=2): the machine was busy: these timings are not comparable")
    assert json.loads(m.read_text())["cpu_share"] == pytest.approx(0.25)


def test_generate_says_nothing_of_an_unstarved_run(monkeypatch, tmp_path, capsys):
    from runtime import generate

    tick = itertools.count()

    def fake() -> Sample:  # ran all the time it was runnable
        t = float(next(tick))
        return Sample(wall_s=t, cpu_s=t, sched={1: (t, 0.0)})

    monkeypatch.setattr(cpu_share, "sample", fake)
    m = tmp_path / "m.json"
    assert generate.main([*TINY, "--policy", "fetch-lru", "--quiet", "--metrics-out", str(m)]) == 0
    out, err = capsys.readouterr()
    assert "CPU share 1.00" in out and "busy" not in err
    assert json.loads(m.read_text())["cpu_share"] == 1.0


def test_bench_flags_every_starved_run(starving, tmp_path, capsys):
    from runtime import bench

    od = tmp_path / "bench"
    assert (
        bench.main(
            [
                *TINY,
                "--gpu-experts-per-layer",
                "8",
                "--policies",
                "all-gpu",
                "tide(tau=2)",
                "--modes",
                "block-cache",
                "--out",
                str(od),
            ]
        )
        == 0
    )
    out, err = capsys.readouterr()
    header = next(line for line in out.splitlines() if line.startswith("policy"))
    assert header.split()[-1] == "cpu"
    rows = [line for line in out.splitlines() if line.startswith(("all-gpu", "tide(tau=2)"))]
    assert len(rows) == 2 and all(line.split()[-1] == "0.25" for line in rows)
    lines = err.strip().splitlines()
    assert lines[0].startswith("warning: all-gpu [block-cache]: the machine was busy")
    assert lines[1].startswith("warning: tide(tau=2) [block-cache]: the machine was busy")
    assert lines[2].startswith("warning: 2 of 2 runs got less than 80% of the CPU")
    runs = json.loads((od / "runtime_results.json").read_text())["runs"]
    assert [r["cpu_share"] for r in runs] == pytest.approx([0.25, 0.25])
