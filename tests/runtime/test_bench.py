"""``python -m runtime.bench`` on the tiny preset: what its two files promise validate.compare."""
from __future__ import annotations

import json
import tarfile

import numpy as np
import pytest

from offload.trace_io import read_trace
from runtime import bench


@pytest.fixture(scope="module")
def out(tmp_path_factory):
    od = tmp_path_factory.mktemp("bench")
    args = ["--threads", "1", "--gen-length", "16", "--block-length", "8", "--steps", "4", "--prompt-length", "8",
            "--gpu-experts-per-layer", "8", "--policies", "all-gpu", "tide(tau=2)", "--modes", "prefix-recompute", "block-cache",
            "--out", str(od)]
    assert bench.main(args) == 0
    return od


def test_every_run_has_its_trace_and_the_requested_budget(out, tmp_path):
    runs = json.loads((out / "runtime_results.json").read_text())["runs"]
    assert [(r["label"], r["mode"]) for r in runs] == [
        ("all-gpu", "prefix-recompute"), ("tide(tau=2)", "prefix-recompute"),
        ("all-gpu", "block-cache"), ("tide(tau=2)", "block-cache")]
    # all-gpu needs no budget, yet records the requested one: validate.stats ranks runs of equal budget together
    assert {r["budget"] for r in runs} == {8}
    with tarfile.open(out / "runtime_traces.tar") as tar:
        assert sorted(tar.getnames()) == sorted(f"{r['mode']}__{r['label']}.npz" for r in runs)
        for name in tar.getnames():
            (tmp_path / name).write_bytes(tar.extractfile(name).read())
    for r in runs:
        trace = read_trace(tmp_path / f"{r['mode']}__{r['label']}.npz")
        assert trace.mode == r["mode"] and trace.num_steps == r["forwards"] == len(r["step_wall_s"])
        # what the simulator replays: every committed position, EOS or not (stop_at_eos is off)
        assert r["generated_tokens"] == trace.generated_tokens == 16
        assert np.sum(r["step_wall_s"]) == pytest.approx(r["wall_s"])


def test_settings_are_recorded_for_the_replay(out):
    d = json.loads((out / "runtime_results.json").read_text())
    assert d["settings"]["device"] == "cpu" and d["settings"]["threads"] == 1 and "out" not in d["settings"]
    assert d["model"]["name"] == "llada2-tiny" and d["environment"]["threads"] == 1
