"""Cache flushes sized from the host's last-level cache, and copy buffers and rates that are honest."""
from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from validate import bench_copies
from validate.bench_copies import _buffers, copy_rates, random_bytes
from validate.timing import (HOST_FLUSH_FALLBACK, HOST_FLUSH_MAX, HOST_FLUSH_MIN, Clock, TimingSettings,
                             host_flush_size, last_level_cache_bytes)

MiB = 2**20


def _cache_tree(root: Path, entries: list[tuple[str | None, str | None]]) -> Path:
    """A fake /sys/devices/system/cpu/cpu0/cache: index<i>/level and index<i>/size (None: file missing)."""
    for i, (level, size) in enumerate(entries):
        d = root / f"index{i}"
        d.mkdir(parents=True)
        if level is not None:
            (d / "level").write_text(level + "\n")
        if size is not None:
            (d / "size").write_text(size + "\n")
    return root


def test_last_level_cache_from_sysfs(tmp_path):
    epyc = _cache_tree(tmp_path / "a", [("1", "48K"), ("1", "32K"), ("2", "1024K"), ("3", "32768K")])
    assert last_level_cache_bytes(epyc) == 32 * MiB
    # the highest level wins even when a lower one is listed later; unreadable entries are skipped
    odd = _cache_tree(tmp_path / "b", [("3", "16M"), ("2", "64M"), (None, "1G"), ("4", "junk"), ("x", "8K")])
    assert last_level_cache_bytes(odd) == 16 * MiB
    assert last_level_cache_bytes(_cache_tree(tmp_path / "c", [("2", "2048")])) == 2048  # plain bytes
    assert last_level_cache_bytes(tmp_path / "missing") is None
    assert last_level_cache_bytes(_cache_tree(tmp_path / "d", [(None, None)])) is None


def test_host_flush_size():
    assert host_flush_size(32 * MiB) == 128 * MiB  # 4x the last-level cache
    assert host_flush_size(2 * MiB) == HOST_FLUSH_MIN == 32 * MiB  # floor
    assert host_flush_size(256 * MiB) == HOST_FLUSH_MAX == 512 * MiB  # cap
    assert host_flush_size(None) == host_flush_size(0) == HOST_FLUSH_FALLBACK == 256 * MiB


def test_clock_flushes_the_host_once_per_sample_on_cpu():
    clock = Clock(torch.device("cpu"), TimingSettings(warmup=1, repeats=3, flush_bytes=1 * MiB, host_flush_bytes=2 * MiB))
    assert clock.host_flush_bytes == 2 * MiB and clock.device_flush_bytes == 0  # one host scratch, the larger
    before = clock._host_scratch.clone()
    calls = []
    real = clock.flush
    clock.flush = lambda: (calls.append(1), real())[1]
    clock.measure(lambda: None)
    assert len(calls) == 1 + 3  # warm-up + repeats, each after a flush
    assert torch.all(clock._host_scratch == before + 4)  # every element written by every flush
    off = Clock(torch.device("cpu"), TimingSettings(flush_bytes=0, host_flush_bytes=2 * MiB))
    assert not off.flushing and off.host_flush_bytes == 0  # flush_bytes 0 is the hot-loop mode: no flush at all


def test_random_bytes_are_nonzero_and_random():
    n = 2 * MiB + 5  # two whole blocks and a tail
    b = random_bytes(n)
    assert b.dtype == torch.uint8 and b.numel() == n and b.device.type == "cpu"
    assert int((b == 0).sum()) == 0 and len(torch.unique(b)) == 255
    assert not torch.equal(random_bytes(4096, seed=1), random_bytes(4096, seed=0))
    assert int((random_bytes(3) == 0).sum()) == 0
    with pytest.raises(ValueError):
        random_bytes(0)


def test_copy_buffers_hold_random_bytes():
    host, dev = _buffers(4096 + 7, torch.device("cpu"), pinned=True)  # pinned is ignored without CUDA
    for t in (host, dev):
        assert t.numel() == 4096 + 7 and int((t == 0).sum()) == 0 and len(torch.unique(t)) > 200


def test_copy_rates_on_cpu(monkeypatch):
    made = []
    real = bench_copies.random_bytes

    def spy(*args, **kwargs):
        made.append(real(*args, **kwargs))
        return made[-1]

    monkeypatch.setattr(bench_copies, "random_bytes", spy)
    rates = copy_rates("cpu", nbytes=MiB + 3, repeats=3)
    assert list(rates) == ["h2d_pinned_gbps", "h2d_pageable_gbps", "d2h_pinned_gbps", "d2h_pageable_gbps"]
    assert all(math.isfinite(v) and v > 0 for v in rates.values()), rates
    # both sides of both pairs came from random_bytes, and the copies kept them non-zero
    assert len(made) == 4 and all(t.numel() == MiB + 3 and int((t == 0).sum()) == 0 for t in made)
    with pytest.raises(ValueError):
        copy_rates("cpu", nbytes=0)
