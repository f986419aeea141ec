"""Copy buffers and rates that are honest (runtime/copy_rates.py): random non-zero bytes on every page, and the
four link rates measured on such buffers."""
from __future__ import annotations

import math

import pytest
import torch

from runtime import copy_rates as copy_mod
from runtime.copy_rates import copy_rates, random_buffers, random_bytes

MiB = 2**20


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
    host, dev = random_buffers(4096 + 7, torch.device("cpu"), pinned=True)  # pinned is ignored without CUDA
    for t in (host, dev):
        assert t.numel() == 4096 + 7 and int((t == 0).sum()) == 0 and len(torch.unique(t)) > 200


def test_copy_rates_on_cpu(monkeypatch):
    made = []
    real = copy_mod.random_bytes

    def spy(*args, **kwargs):
        made.append(real(*args, **kwargs))
        return made[-1]

    monkeypatch.setattr(copy_mod, "random_bytes", spy)
    rates = copy_rates("cpu", nbytes=MiB + 3, repeats=3)
    assert list(rates) == ["h2d_pinned_gbps", "h2d_pageable_gbps", "d2h_pinned_gbps", "d2h_pageable_gbps"]
    assert all(math.isfinite(v) and v > 0 for v in rates.values()), rates
    # both sides of both pairs came from random_bytes, and the copies kept them non-zero
    assert len(made) == 4 and all(t.numel() == MiB + 3 and int((t == 0).sum()) == 0 for t in made)
    with pytest.raises(ValueError):
        copy_rates("cpu", nbytes=0)
