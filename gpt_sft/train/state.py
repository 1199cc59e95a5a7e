"""What a training run is in the middle of: the data order, the progress counters, resumable
checkpoints, and interruptions that never lose or change the run."""

from __future__ import annotations

import contextlib
import dataclasses
import os
import random
import re
import shutil
import signal
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Sampler
from tqdm.auto import tqdm

from ..common.atomic_io import atomic_directory, reporting_disk_full, write_json_atomic
from ..common.run_manifest import recording_new_entries

STATE_FILE = "trainer_state.json"


def say(accelerator, *args, **kwargs) -> None:
    """Print on the main process only, without breaking the progress bar."""
    if accelerator.is_main_process:
        tqdm.write(" ".join(str(a) for a in args), **kwargs)


class EpochSampler(Sampler[int]):
    """Example order that depends only on ``(seed, epoch)``: a resumed run sees the same order."""

    def __init__(self, num_examples: int, shuffle: bool, seed: int):
        self.num_examples, self.shuffle, self.seed, self.epoch = num_examples, shuffle, seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self):
        if not self.shuffle:
            return iter(range(self.num_examples))
        generator = torch.Generator().manual_seed(self.seed + self.epoch)
        return iter(torch.randperm(self.num_examples, generator=generator).tolist())

    def __len__(self) -> int:
        return self.num_examples


class TrainingDiverged(RuntimeError):
    """The loss became NaN or infinite."""


class InterruptedRun(KeyboardInterrupt):
    """Training was stopped by a signal (Ctrl-C or SIGTERM); the exit status is 128 + its number."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = int(signum)
        self.exit_status = 128 + self.signum


@dataclass
class TrainerState:
    """Progress that a resumed run continues from (saved as ``trainer_state.json``)."""

    epoch: int = 0
    micro_batches_in_epoch: int = 0
    global_step: int = 0
    tokens_seen: int = 0
    train_losses: list[float] = field(default_factory=list)
    val_losses: list[float] = field(default_factory=list)
    track_tokens_seen: list[int] = field(default_factory=list)
    eval_steps: list[int] = field(default_factory=list)
    initial_train_loss: float | None = None
    initial_val_loss: float | None = None
    train_seconds: float = 0.0


def checkpoint_dirs(output_dir: Path) -> list[Path]:
    root = output_dir / "checkpoints"
    if not root.is_dir():
        return []
    found = [p for p in root.iterdir() if re.fullmatch(r"step-\d+", p.name) and (p / STATE_FILE).is_file()]
    return sorted(found, key=lambda p: int(p.name.split("-")[1]))


def resolve_resume(resume_from_checkpoint: str | None, output_dir: str | Path) -> Path | None:
    """The checkpoint folder ``--resume-from-checkpoint`` names: a path, or ``latest`` in ``output_dir``."""
    if not resume_from_checkpoint:
        return None
    if resume_from_checkpoint == "latest":
        found = checkpoint_dirs(Path(output_dir))
        if not found:
            raise FileNotFoundError(f"--resume-from-checkpoint latest: no checkpoint in {output_dir}/checkpoints")
        return found[-1]
    path = Path(resume_from_checkpoint)
    if not (path / STATE_FILE).is_file():
        raise FileNotFoundError(f"{path}: not a training checkpoint (no {STATE_FILE})")
    return path


def save_training_checkpoint(accelerator, state: TrainerState, output_dir: str | Path, keep: int) -> Path:
    """Model, optimizer, scheduler, RNG states and :class:`TrainerState`, atomically, keeping the newest ``keep``."""
    final = Path(output_dir) / "checkpoints" / f"step-{state.global_step:06d}"
    try:
        # checkpoints/ goes into the run's manifest once it holds a checkpoint
        with reporting_disk_full("the training checkpoint", final), \
                recording_new_entries(output_dir, record=accelerator.is_main_process):
            _save_training_checkpoint(accelerator, state, final)
    except BaseException:
        if accelerator.is_main_process:
            with contextlib.suppress(OSError):
                final.parent.rmdir()  # a checkpoints/ folder made for this one alone: nothing half-written stays
        raise
    accelerator.wait_for_everyone()
    if accelerator.is_main_process and keep > 0:
        for old in checkpoint_dirs(Path(output_dir))[: -keep]:
            shutil.rmtree(old, ignore_errors=True)
    return final


def _save_training_checkpoint(accelerator, state: TrainerState, final: Path) -> None:
    if accelerator.is_main_process:
        final.parent.mkdir(parents=True, exist_ok=True)
    accelerator.wait_for_everyone()
    if accelerator.num_processes == 1:
        with atomic_directory(final) as tmp:
            accelerator.save_state(str(tmp), safe_serialization=True)
            write_json_atomic(tmp / STATE_FILE, dataclasses.asdict(state))
    else:  # every process writes its RNG state: share one staging folder, rename on the main process
        tmp = final.with_name(f".{final.name}.tmp")
        accelerator.save_state(str(tmp), safe_serialization=True)
        accelerator.wait_for_everyone()
        if accelerator.is_main_process:
            write_json_atomic(tmp / STATE_FILE, dataclasses.asdict(state))
            if final.exists():
                shutil.rmtree(final)
            os.replace(tmp, final)


class Interruptions:
    """Ctrl-C (SIGINT) and SIGTERM while training, so that no interruption loses or changes the run.

    The first signal lets the current optimizer step finish; the run then saves a resumable
    checkpoint at that step boundary and stops, and resuming from it is the same run. A second one
    stops at once: inside a step's forward and backward passes the step is abandoned (its gradients
    dropped, the random-number state put back to where the step began), and while the optimizer
    updates, evaluates or saves (a :meth:`critical` section) it waits for that to end. During
    :meth:`deferred` sections (the final save) every signal only waits. A SIGINT that was ignored
    when training started (a background job) stays ignored.
    """

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self, accelerator) -> None:
        self.accelerator = accelerator
        self.signum: int | None = None
        self.count = 0
        self._critical = 0
        self._deferred = 0
        self._pending = False
        self._previous: dict[int, object] = {}

    def __enter__(self) -> "Interruptions":
        for signum in self.SIGNALS:
            current = signal.getsignal(signum)
            if current is signal.SIG_IGN:
                continue
            self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous.clear()

    @property
    def requested(self) -> bool:
        return self.signum is not None

    def _handle(self, signum, frame) -> None:
        self.signum, self.count = signum, self.count + 1
        if self._deferred:
            say(self.accelerator, f"\n{signal.Signals(signum).name}: finishing the final save first")
            return
        if self.count == 1:
            say(self.accelerator, f"\n{signal.Signals(signum).name}: finishing the current step, then saving a "
                                     "resumable checkpoint (interrupt again to stop at once)")
            return
        if self._critical:
            self._pending = True
            return
        raise InterruptedRun(signum)

    @contextlib.contextmanager
    def critical(self):
        """A section that a second interruption lets finish before it stops the run."""
        self._critical += 1
        try:
            yield
        finally:
            self._critical -= 1
        if self._pending and not self._critical:
            self._pending = False
            raise InterruptedRun(self.signum)

    @contextlib.contextmanager
    def deferred(self):
        """A section that no interruption stops (the final save: it must be complete or not exist)."""
        self._deferred += 1
        try:
            yield
        finally:
            self._deferred -= 1

    def agreed(self, world: int) -> bool:
        """Whether any process was asked to stop (every process then stops at the same step)."""
        if world == 1:
            return self.requested
        flag = torch.tensor([1 if self.requested else 0], device=self.accelerator.device)
        return bool(self.accelerator.reduce(flag, "max").item())


def capture_rng_state() -> dict:
    """Every random-number state a training step draws from (dropout, sampling)."""
    state = {"torch": torch.get_rng_state(), "python": random.getstate(), "numpy": np.random.get_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    if "cuda" in state:
        torch.cuda.set_rng_state_all(state["cuda"])


