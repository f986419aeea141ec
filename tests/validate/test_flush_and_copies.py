"""Cache flushes sized from the host's last-level cache (the copy buffers and rates: tests/runtime/test_copy_rates.py)."""
from __future__ import annotations

from pathlib import Path

import torch

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
