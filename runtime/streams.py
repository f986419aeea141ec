"""Streams and events for the expert store: one interface, three stream back-ends.

The store (``runtime.expert_store``) expresses all its device work as *launches* on three queues, ordered by
*events*, exactly as CUDA executes it:

  compute   the stream the model runs on (``torch.cuda.current_stream()``): expert kernels, gathers, scatters
  copy      expert weights host -> device: promotions, staging-slot streams, prefetches
  act       activations of the CPU experts: rows device -> host, results host -> device

  launch(s, fn)        enqueue ``fn`` on stream s (on CUDA: run it with s current, so its kernels go to s)
  record(s) -> ev      an event that fires when everything enqueued on s so far has run
  wait(s, ev, why)     s runs nothing enqueued after this until ev fired (CUDA wait_event; no host block)
  host_wait(ev, why)   the host blocks until ev fired (CUDA event synchronize)

Every wait carries a name (:data:`WAITS`), so a test can drop one and prove that the store then computes wrong
results: that is how CI checks the store's synchronisation without a GPU.

Back-ends:
  :class:`HostStreams`    device=cpu: one serial device, the host itself; launches run at once, waits are no-ops.
  :class:`CudaStreams`    CUDA: torch streams and events. Optional injected delays: a ``torch.cuda._sleep``
                          spin kernel before each launch on a stream, so a missing wait shows on a real GPU too.
  :class:`ThreadStreams`  a CPU stand-in for CUDA: each stream is a worker thread running its launches in order
                          after a random delay (seconds, uniform in [0, max], seeded per stream); events are
                          thread events. Device buffers are host tensors filled with NaN (or -1), so a read
                          of anything not yet written propagates. Waits named in ``skip`` are dropped.

Memory lifetimes: on CUDA a tensor read on another stream than the one that allocated it is kept alive with
``keep_alive`` (``record_stream``); the thread back-end keeps tensors alive through the closures that use them.
Page-locked staging (``pinned``) and ``to_device`` (a host array copied without blocking the host) avoid the
pageable copies that make CUDA synchronise the host with the stream first.
"""
from __future__ import annotations

import queue
import random
import threading
import time
from dataclasses import dataclass
from typing import Any, Callable, Mapping

import numpy as np
import torch

COMPUTE, COPY, ACT = "compute", "copy", "act"
STREAMS = (COMPUTE, COPY, ACT)

# Every wait the store makes, by name: the stream (or "host") that waits, and for what.
WAITS: Mapping[str, str] = {
    "host-after-counts": "host reads the layer's expert counts after the compute stream produced them",
    "copy-after-compute": "copy stream writes slots only after queued compute stopped reading them",
    "compute-after-promotion": "compute reads promoted slots only after their copies arrived",
    "compute-after-prefetch": "compute reads prefetched slots only after their copies arrived",
    "stage-after-compute": "copy stream refills a staging half only after the compute of its last chunk",
    "compute-after-stage": "compute reads a staging half only after its chunk arrived",
    "act-after-gather": "activation stream sends rows to the host only after compute gathered them",
    "host-after-d2h": "host computes CPU experts only after their rows arrived",
    "compute-after-h2d": "compute places CPU-expert results only after they arrived",
    "host-after-initial": "the store is ready only after the initial placement arrived",
    "host-after-forward": "the thread back-end's host reads a layer's output only after compute produced it",
}
# A wait for timing semantics only (TIDE's serial CPU path), never for correctness: not in WAITS' tests.
SERIAL_CPU = "serial-cpu"


def _poison(t: torch.Tensor) -> torch.Tensor:
    return t.fill_(float("nan")) if t.is_floating_point() else t.fill_(-1)


class HostStreams:
    """device=cpu: the host is the device; every launch runs now, in program order, so no wait is needed."""

    host_is_device = True
    cuda = False

    def __init__(self, device: torch.device | str = "cpu") -> None:
        self.device = torch.device(device)

    def launch(self, stream: str, fn: Callable[[], Any]) -> None:
        fn()

    def record(self, stream: str) -> Any:
        return None

    def wait(self, stream: str, event: Any, why: str) -> None:
        pass

    def host_wait(self, event: Any, why: str) -> None:
        pass

    def done(self, event: Any) -> bool:
        return True

    def empty(self, shape: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
        return torch.empty(shape, dtype=dtype, device=self.device)

    def pinned(self, shape: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
        return torch.empty(shape, dtype=dtype)

    def to_device(self, array: np.ndarray, stream: str) -> torch.Tensor:
        return torch.from_numpy(np.ascontiguousarray(array))

    def keep_alive(self, t: torch.Tensor, stream: str) -> None:
        pass

    def pin_host(self, t: torch.Tensor) -> bool:
        return True

    def forward_done(self) -> None:
        pass


@dataclass(frozen=True)
class Delays:
    """Injected delay before each launch, seconds, drawn uniformly in [0, max] per stream (seeded)."""

    compute: float = 0.0
    copy: float = 0.0
    act: float = 0.0
    seed: int = 0

    def of(self, stream: str) -> float:
        return float(getattr(self, stream))


class CudaStreams:
    """torch.cuda streams and events; ``delays`` spin each stream's queue before every launch (tests only)."""

    host_is_device = False
    cuda = True
    _CYCLES_PER_S = 1.5e9  # torch.cuda._sleep counts GPU clock cycles; H100/H200 boost ~1.7-1.98 GHz: approximate

    def __init__(self, device: torch.device | str, delays: Delays | None = None, skip: frozenset[str] = frozenset()) -> None:
        self.device = torch.device(device)
        self._side = {COPY: torch.cuda.Stream(self.device), ACT: torch.cuda.Stream(self.device)}
        self.delays, self.skip = delays, frozenset(skip)
        self._rng = random.Random(delays.seed if delays else 0)

    def stream(self, name: str) -> Any:
        return torch.cuda.current_stream(self.device) if name == COMPUTE else self._side[name]

    def launch(self, stream: str, fn: Callable[[], Any]) -> None:
        s = self.stream(stream)
        with torch.cuda.stream(s):
            if self.delays is not None and self.delays.of(stream) > 0:
                torch.cuda._sleep(int(self._rng.uniform(0, self.delays.of(stream)) * self._CYCLES_PER_S))
            fn()

    def record(self, stream: str) -> Any:
        ev = torch.cuda.Event()
        ev.record(self.stream(stream))
        return ev

    def wait(self, stream: str, event: Any, why: str) -> None:
        if event is not None and why not in self.skip:
            self.stream(stream).wait_event(event)

    def host_wait(self, event: Any, why: str) -> None:
        if event is not None and why not in self.skip:
            event.synchronize()

    def done(self, event: Any) -> bool:
        return event is None or event.query()

    def empty(self, shape: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
        return torch.empty(shape, dtype=dtype, device=self.device)

    def pinned(self, shape: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
        return torch.empty(shape, dtype=dtype, pin_memory=True)

    def to_device(self, array: np.ndarray, stream: str) -> torch.Tensor:
        """A host array on the device without a host sync: staged through a page-locked block (the caching
        host allocator recycles it only after this copy ran), copied on ``stream``."""
        staged = torch.from_numpy(np.ascontiguousarray(array)).pin_memory()
        with torch.cuda.stream(self.stream(stream)):
            return staged.to(self.device, non_blocking=True)

    def keep_alive(self, t: torch.Tensor, stream: str) -> None:
        t.record_stream(self.stream(stream))

    def pin_host(self, t: torch.Tensor) -> bool:
        """Page-lock ``t`` in place (cudaHostRegister: no copy, unlike ``pin_memory()``); False if refused."""
        if pin_in_place(t, torch.cuda.cudart().cudaHostRegister):
            return True
        # a refused registration leaves its error code for the next cudaGetLastError, which PyTorch's launch
        # check after some later kernel would raise: consume it here, with a kernel of our own
        try:
            torch.empty(1, device=self.device).fill_(0)
            torch.cuda.synchronize(self.device)
        except RuntimeError:
            pass
        return False

    def forward_done(self) -> None:
        pass


def pin_in_place(t: torch.Tensor, register: Callable[[int, int, int], Any]) -> bool:
    """Register ``t``'s memory as page-locked with ``register(ptr, bytes, flags)`` (cudaHostRegister's
    signature); True when it is pinned afterwards. A refusal (the OS's locked-memory limit) returns False and
    leaves ``t`` pageable, never copies it: a copy would double the host memory of every expert stack."""
    if t.is_pinned():
        return True
    if not t.is_contiguous() or t.numel() == 0:
        return False
    try:
        err = register(t.data_ptr(), t.numel() * t.element_size(), 0)
    except RuntimeError:
        return False
    code = getattr(err, "value", err)
    return int(code or 0) == 0


class _Event:
    __slots__ = ("fired",)

    def __init__(self) -> None:
        self.fired = threading.Event()


class _Worker:
    """One fake stream: a thread running its queue in order, each launch after a random delay."""

    def __init__(self, name: str, max_delay: float, seed: int) -> None:
        self.name, self.max_delay = name, max_delay
        self._rng = random.Random(seed)
        self._q: queue.SimpleQueue = queue.SimpleQueue()
        self.error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name=f"fake-{name}-stream", daemon=True)
        self._thread.start()

    def submit(self, fn: Callable[[], Any], delay: bool) -> None:
        self._q.put((fn, delay))

    def stop(self) -> None:
        self._q.put(None)

    def _run(self) -> None:
        while True:
            item = self._q.get()
            if item is None:
                return
            fn, delay = item
            try:
                if delay and self.max_delay > 0:
                    time.sleep(self._rng.uniform(0, self.max_delay))
                fn()
            except BaseException as exc:  # noqa: BLE001 - reported to the host at its next wait
                if self.error is None:
                    self.error = exc


class ThreadStreams:
    """A CPU stand-in for CUDA streams (see the module docstring); ``skip`` drops the named waits."""

    host_is_device = False
    cuda = False

    def __init__(self, delays: Delays = Delays(), skip: frozenset[str] = frozenset(), timeout_s: float = 60.0) -> None:
        self.device = torch.device("cpu")
        self.delays, self.skip, self.timeout_s = delays, frozenset(skip), timeout_s
        self._workers = {s: _Worker(s, delays.of(s), delays.seed * 101 + i) for i, s in enumerate(STREAMS)}

    def close(self) -> None:
        for w in self._workers.values():
            w.stop()

    def __del__(self) -> None:
        if hasattr(self, "_workers"):  # a failed __init__ has no workers to stop
            self.close()

    def _check(self) -> None:
        for w in self._workers.values():
            if w.error is not None:
                err, w.error = w.error, None
                raise RuntimeError(f"fake {w.name} stream: {type(err).__name__}: {err}") from err

    def launch(self, stream: str, fn: Callable[[], Any]) -> None:
        # inference and grad mode are thread-local: run the launch in the launching thread's (a CUDA kernel
        # likewise belongs to the host call that queued it)
        inference, grad = torch.is_inference_mode_enabled(), torch.is_grad_enabled()

        def call() -> None:
            with torch.inference_mode(inference), torch.set_grad_enabled(grad):
                fn()

        self._workers[stream].submit(call, True)

    def record(self, stream: str) -> _Event:
        ev = _Event()
        self._workers[stream].submit(ev.fired.set, False)
        return ev

    def _block(self, ev: _Event, who: str, why: str) -> None:
        if not ev.fired.wait(self.timeout_s):
            raise RuntimeError(f"{who} waited {self.timeout_s} s for '{why}': deadlock in the store's ordering")

    def wait(self, stream: str, event: _Event | None, why: str) -> None:
        if event is not None and why not in self.skip:
            self._workers[stream].submit(lambda: self._block(event, f"fake {stream} stream", why), False)

    def host_wait(self, event: _Event | None, why: str) -> None:
        if event is not None and why not in self.skip:
            self._block(event, "host", why)
        self._check()

    def done(self, event: _Event | None) -> bool:
        return event is None or event.fired.is_set()

    def empty(self, shape: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
        return _poison(torch.empty(shape, dtype=dtype))

    def pinned(self, shape: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
        return _poison(torch.empty(shape, dtype=dtype))

    def to_device(self, array: np.ndarray, stream: str) -> torch.Tensor:
        return torch.from_numpy(np.array(array, copy=True))

    def keep_alive(self, t: torch.Tensor, stream: str) -> None:
        pass

    def pin_host(self, t: torch.Tensor) -> bool:
        return True

    def forward_done(self) -> None:
        """The rest of the model runs on the host thread: it may read the layer's output only once the fake
        compute stream produced it (on CUDA the model's kernels simply queue behind it)."""
        self.host_wait(self.record(COMPUTE), "host-after-forward")

    def synchronize(self) -> None:
        """Wait for every stream (tests, teardown)."""
        for s in STREAMS:
            ev = self.record(s)
            self._block(ev, "host", f"synchronize {s}")
        self._check()


def default_streams(device: torch.device) -> HostStreams | CudaStreams:
    return CudaStreams(device) if device.type == "cuda" else HostStreams(device)
