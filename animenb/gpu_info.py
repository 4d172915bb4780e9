"""GPU facts from NVML (nvidia-ml-py), for processes that must not load torch: the server.

NVML reads the driver's own counters in microseconds, without a CUDA context, a subprocess
(`nvidia-smi` took 30-60 ms and a fork per /health) or importing torch (2-3 s, ~360 MB in
the server process). Facts are cached for `TTL_SECONDS`, so a burst of /health requests costs
one NVML read. GPUs follow CUDA_VISIBLE_DEVICES (indices or GPU-UUIDs), as the kernels see them.
"""

from __future__ import annotations

import importlib.metadata
import os
import threading
import time

TTL_SECONDS = 1.5

_lock = threading.Lock()
_cached: tuple[float, dict] | None = None
_nvml_ready: bool | str | None = None  # True once initialised; a reason string when NVML is unusable


def _torch_version() -> str | None:
    try:
        return importlib.metadata.version("torch")  # the installed wheel's metadata: no import
    except importlib.metadata.PackageNotFoundError:
        return None


def _init_nvml() -> bool | str:
    global _nvml_ready
    if _nvml_ready is None:
        try:
            import pynvml

            pynvml.nvmlInit()
            _nvml_ready = True
        except ImportError:
            _nvml_ready = "nvidia-ml-py is not installed"
        except Exception as exc:  # pynvml.NVMLError_LibraryNotFound, _DriverNotLoaded, ...: no NVIDIA driver here
            _nvml_ready = f"NVML unavailable: {exc}"
    return _nvml_ready


def _visible(index: int, uuid: str) -> bool:
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is None:
        return True
    wanted = [v.strip() for v in visible.split(",") if v.strip()]
    return str(index) in wanted or any(uuid.startswith(w) for w in wanted if w.startswith("GPU-"))


def _read() -> dict:
    ready = _init_nvml()
    base = {"torch": _torch_version(), "source": "nvml"}
    if ready is not True:
        return {**base, "available": False, "device": "cpu", "reason": ready}
    import pynvml

    gpus = []
    for index in range(pynvml.nvmlDeviceGetCount()):
        handle = pynvml.nvmlDeviceGetHandleByIndex(index)
        uuid = pynvml.nvmlDeviceGetUUID(handle)
        if not _visible(index, uuid):
            continue
        memory = pynvml.nvmlDeviceGetMemoryInfo(handle)
        try:
            utilization = pynvml.nvmlDeviceGetUtilizationRates(handle).gpu
        except pynvml.NVMLError:  # not supported on some devices (MIG slices)
            utilization = None
        gpus.append(
            {
                "index": index,
                "name": pynvml.nvmlDeviceGetName(handle),
                "uuid": uuid,
                "memory_total_mb": memory.total // 2**20,
                "memory_used_mb": memory.used // 2**20,
                "utilization_percent": utilization,
            }
        )
    if not gpus:
        return {**base, "available": False, "device": "cpu", "reason": "no visible NVIDIA GPU"}
    return {
        **base,
        "available": True,
        "device": "cuda",
        "count": len(gpus),
        "names": [g["name"] for g in gpus],
        "driver": pynvml.nvmlSystemGetDriverVersion(),
        "gpus": gpus,
    }


def gpu_facts(max_age: float = TTL_SECONDS) -> dict:
    """{"available", "device", "torch", ...; with GPUs: "count", "names", "driver", "gpus": [...]}.

    A fresh dict each call (callers may add keys); NVML is read at most once per `max_age` seconds.
    """
    global _cached
    with _lock:
        now = time.monotonic()
        if _cached is None or now - _cached[0] > max_age:
            try:
                facts = _read()
            except Exception as exc:  # a driver hiccup must not fail /health
                facts = {
                    "torch": _torch_version(),
                    "source": "nvml",
                    "available": False,
                    "device": "cpu",
                    "reason": f"NVML read failed: {exc}",
                }
            _cached = (now, facts)
        facts = _cached[1]
    return {**facts, "gpus": [dict(g) for g in facts.get("gpus", [])]} if "gpus" in facts else dict(facts)


def cuda_devices() -> list[str]:
    """`cuda:N` for each visible GPU (N counts visible GPUs, as torch numbers them), else ["cpu"]."""
    facts = gpu_facts()
    return [f"cuda:{i}" for i in range(facts["count"])] if facts["available"] else ["cpu"]
