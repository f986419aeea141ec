"""Where a measurement was taken: GPU, driver, CUDA, torch, CPU model, cores, threads, host, date.

Recorded in every calibrated profile (``environment``) so ``validate.compare`` can tell whether the runs it
validates come from the machine the profile was calibrated on.
"""
from __future__ import annotations

import os
import platform
import socket
import subprocess
import time
from pathlib import Path
from typing import Any

import torch


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def host_memory_gib() -> float:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    except (ValueError, OSError, AttributeError):
        return 1.0


def _driver() -> str | None:
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=20)
        return out.stdout.strip().splitlines()[0] if out.returncode == 0 and out.stdout.strip() else None
    except (OSError, subprocess.SubprocessError):  # no nvidia-smi: the driver is unknown, not an error
        return None


def environment(device: torch.device, dtype: torch.dtype | None = None) -> dict[str, Any]:
    env: dict[str, Any] = {
        "device": device.type, "torch": torch.__version__, "python": platform.python_version(),
        "cpu": cpu_model(), "cores": os.cpu_count(), "threads": torch.get_num_threads(),
        "host": socket.gethostname(), "date": time.strftime("%Y-%m-%d %H:%M:%S %z"),
    }
    if dtype is not None:
        env["dtype"] = str(dtype).replace("torch.", "")
    if device.type == "cuda":
        env.update(gpu=torch.cuda.get_device_name(device), cuda=torch.version.cuda, driver=_driver(),
                   gpu_memory_gib=torch.cuda.get_device_properties(device).total_memory / 2**30)
    return env
