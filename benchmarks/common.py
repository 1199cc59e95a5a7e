"""What every benchmark shares: where the book's data is, a memory meter, the machine's load."""

from __future__ import annotations

import contextlib
import ctypes
import gc
import os
import threading
import time
from pathlib import Path

import psutil
import torch

from gpt_sft import GPTConfig
from gpt_sft.data.load import load_instruction_data
from gpt_sft.data.synthetic import make_synthetic_instructions

REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_DATA = REPO_ROOT.parent / "shared" / "data" / "instruction-data.json"


def gpt_config(size: str, tiny: dict) -> GPTConfig:
    """A GPT-2 preset's config, or ``tiny`` for ``size == "tiny"`` (smoke runs)."""
    return GPTConfig(**tiny) if size == "tiny" else GPTConfig.from_preset(size)


def load_entries(data: Path | None, seed: int = 123, n_synthetic: int = 1100) -> tuple[list[dict], str]:
    """The book's entries (``data``), or synthetic ones where the file is absent; and where they came from."""
    if data is not None and data.is_file():
        return load_instruction_data(str(data), progress=False).to_list(), str(data)
    return (make_synthetic_instructions(n_synthetic, seed=seed),
            f"synthetic (make_synthetic_instructions; {data} not found)")


def machine_load() -> str:
    """The 1/5/15-minute load average: a shared machine's timings are only as good as it is quiet."""
    try:
        return " ".join(f"{x:.2f}" for x in os.getloadavg())
    except OSError:  # pragma: no cover
        return "n/a"


def trim_heap() -> None:
    """Give freed memory back to the OS (glibc), so that the next RSS baseline is honest."""
    gc.collect()
    with contextlib.suppress(Exception):
        ctypes.CDLL("libc.so.6").malloc_trim(0)


class MemoryMeter:
    """Memory in bytes above the level at :meth:`start`: the current level, and the peak since :meth:`reset_peak`.

    CUDA: ``torch.cuda`` allocator statistics. CPU: process RSS sampled by a thread (psutil), since
    torch allocates outside Python (tracemalloc does not see it) and ``ru_maxrss`` is a lifetime maximum.
    """

    def __init__(self, device: torch.device, interval: float = 0.002):
        self.device, self.interval = device, interval
        self.baseline = self._peak = 0
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._thread = None
        self._process = psutil.Process() if device.type != "cuda" else None

    def _now(self) -> int:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            return torch.cuda.memory_allocated(self.device)
        return self._process.memory_info().rss

    def _sample(self) -> None:
        while not self._stop.is_set():
            rss = self._now()
            with self._lock:
                self._peak = max(self._peak, rss)
            time.sleep(self.interval)

    def start(self) -> None:
        """Set the baseline (call just before building the model) and start sampling."""
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
        self.baseline = self._peak = self._now()
        if self.device.type != "cuda":
            self._thread = threading.Thread(target=self._sample, daemon=True)
            self._thread.start()

    def current(self) -> int:
        return self._now() - self.baseline

    def reset_peak(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
        with self._lock:
            self._peak = self._now()

    def peak(self) -> int:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            return torch.cuda.max_memory_allocated(self.device) - self.baseline
        with self._lock:
            self._peak = max(self._peak, self._now())
            return self._peak - self.baseline

    def stop(self) -> int:
        """Stop sampling; the peak in bytes."""
        peak = self.peak()
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        return peak
