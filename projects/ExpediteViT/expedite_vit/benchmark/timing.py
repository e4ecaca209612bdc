"""Latency, per-submodule time and peak memory of forward passes, on CPU or CUDA.

CUDA kernels run asynchronously, so every clock reading is preceded by a synchronisation;
otherwise a timer measures only how fast Python queues kernels.
"""
from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import gc
import os
import time
from collections import defaultdict
from typing import Callable, Dict, Iterator, List, Mapping, Optional, Sequence

import numpy as np
import torch
from torch import nn

__all__ = [
    "PeakMemory",
    "PeakRSS",
    "SubmoduleTimer",
    "latency_summary",
    "synchronize",
    "time_interleaved",
]


def synchronize(device: torch.device) -> None:
    """Wait for the device's queued work, so that a clock reading covers it."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def latency_summary(seconds: Sequence[float]) -> Dict[str, float]:
    """Median, p90 and mean of per-call times, in milliseconds."""
    if not seconds:
        raise ValueError("no timed iterations (iters must be at least 1)")
    ms = np.asarray(seconds, dtype=np.float64) * 1000.0
    return {
        "median_ms": float(np.median(ms)),
        "p90_ms": float(np.percentile(ms, 90)),
        "mean_ms": float(ms.mean()),
        "iters": len(ms),
    }


def time_interleaved(
    calls: Mapping[str, Callable[[int], object]],
    num_inputs: int,
    warmup: int,
    iters: int,
    device: torch.device,
) -> Dict[str, List[float]]:
    """Seconds per call of each ``calls[name](input_index)``, inputs taken in turn.

    The calls alternate within each iteration, so a slowdown of the machine (other processes,
    clock changes) hits all of them alike instead of biasing whichever ran last.
    """
    for iteration in range(warmup):
        for call in calls.values():
            call(iteration % num_inputs)
    times = {name: [] for name in calls}
    for iteration in range(iters):
        for name, call in calls.items():
            synchronize(device)
            start = time.perf_counter()
            call(iteration % num_inputs)
            synchronize(device)
            times[name].append(time.perf_counter() - start)
    return times


class SubmoduleTimer:
    """Total seconds spent in named submodules, measured by forward hooks with synchronisation.

    The synchronisations slow a CUDA forward down a little, so use it in a pass of its own, not
    in the pass that measures the headline latency.
    """

    def __init__(self, modules: Mapping[str, nn.Module], device: torch.device):
        self.modules = dict(modules)
        self.device = device
        self.seconds: Dict[str, float] = defaultdict(float)
        self._started: Dict[str, float] = {}
        self._handles = []

    def _pre_hook(self, name: str):
        def hook(module, args):
            synchronize(self.device)
            self._started[name] = time.perf_counter()

        return hook

    def _post_hook(self, name: str):
        def hook(module, args, output):
            synchronize(self.device)
            self.seconds[name] += time.perf_counter() - self._started.pop(name)

        return hook

    def __enter__(self) -> "SubmoduleTimer":
        for name, module in self.modules.items():
            self._handles.append(module.register_forward_pre_hook(self._pre_hook(name)))
            self._handles.append(module.register_forward_hook(self._post_hook(name)))
        return self

    def __exit__(self, *exc) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()


def _cpu_tensor_peak_bytes(events) -> int:
    """Peak of CPU tensor memory allocated minus freed, over a profile's time-ordered
    allocation events (frees of tensors made before the profile count as negative)."""
    records = sorted(
        (event.start_ns(), event.nbytes())
        for event in events
        if event.name() == "[memory]" and event.device_type() == torch.autograd.DeviceType.CPU
    )
    held = peak = 0
    for _, nbytes in records:
        held += nbytes
        peak = max(peak, held)
    return peak


class PeakMemory:
    """Largest extra memory that a measured call needed, above what was held before it (weights
    and inputs are therefore excluded).

    CUDA: ``torch.cuda.max_memory_allocated`` (exact, tensors only). CPU: every tensor allocation
    and free during the call, recorded by torch.profiler (``profile_memory=True``) and summed in
    time order: exact to the byte, like the CUDA figure, and counting tensors only (not the
    oneDNN scratch space nor Python objects). Sampling the resident set size (RSS) is not used:
    the C allocator reuses freed pages, so the RSS hardly moves during a forward and its deltas
    were noise, of which ratios made no sense.
    """

    def __init__(self, device: torch.device):
        self.device = device
        self.peak_bytes: Optional[int] = 0
        if device.type == "cuda":
            self.method = "torch.cuda.max_memory_allocated above the allocation before the forward"
        else:
            self.method = "peak of CPU tensor memory allocated during the forward (torch.profiler, profile_memory)"
            # The profiler's C++ side (kineto) logs each start and stop at info level otherwise;
            # it reads this once, when first used.
            os.environ.setdefault("KINETO_LOG_LEVEL", "5")

    @contextlib.contextmanager
    def measure(self) -> Iterator[None]:
        if self.peak_bytes is None:
            yield
        elif self.device.type == "cuda":
            synchronize(self.device)
            before = torch.cuda.memory_allocated(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            yield
            synchronize(self.device)
            self._record(torch.cuda.max_memory_allocated(self.device) - before)
        else:
            yield from self._profile_cpu()

    def _profile_cpu(self) -> Iterator[None]:
        from torch.profiler import ProfilerActivity, profile

        with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as profiler:
            yield
        try:
            events = profiler.profiler.kineto_results.events()
        except AttributeError:  # a torch whose profiler keeps its results elsewhere
            self.method = "unavailable (this torch's profiler gives no allocation events)"
            self.peak_bytes = None
            return
        self._record(_cpu_tensor_peak_bytes(events))

    def _record(self, extra_bytes: int) -> None:
        self.peak_bytes = max(self.peak_bytes, extra_bytes)

    @property
    def peak_mib(self) -> Optional[float]:
        return None if self.peak_bytes is None else self.peak_bytes / 2**20


def _status_kib(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise OSError(f"/proc/self/status has no {field}")


class PeakRSS:
    """Largest growth of the process's resident set size (RSS) during a measured call, above the
    RSS before it: what the call costs the machine, allocator and library scratch space included
    (:class:`PeakMemory` counts tensors only). Linux only.

    Before each call, freed heap memory is handed back to the system (glibc ``malloc_trim``) and
    the kernel's high-water mark is reset (``/proc/self/clear_refs``), so one model's pages do not
    hide the next one's needs; after it, the high-water mark (``VmHWM``) is read. Without these
    (another OS or C library) ``peak_bytes`` is None.
    """

    method = "peak RSS growth during the forward (VmHWM reset by /proc/self/clear_refs, after malloc_trim)"

    def __init__(self):
        self.peak_bytes: Optional[int] = 0
        self._trim = None
        try:
            libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
            self._trim = libc.malloc_trim
            self._reset_high_water_mark()
            _status_kib("VmHWM")
        except (OSError, AttributeError):
            self.peak_bytes = None

    @staticmethod
    def _reset_high_water_mark() -> None:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")

    @contextlib.contextmanager
    def measure(self) -> Iterator[None]:
        if self.peak_bytes is None:
            yield
            return
        gc.collect()
        self._trim(0)
        self._reset_high_water_mark()
        before = _status_kib("VmRSS")
        yield
        self.peak_bytes = max(self.peak_bytes, (_status_kib("VmHWM") - before) * 1024)

    @property
    def peak_mib(self) -> Optional[float]:
        return None if self.peak_bytes is None else self.peak_bytes / 2**20
