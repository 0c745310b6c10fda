"""The one training engine: the loop shared by ``calibrate``, ``train`` and ``spade train-teacher``.

In the spirit of detectron2's ``SimpleTrainer`` and nanoGPT's single loop: a :class:`Trainer` runs optimizer
steps ``[start, total_steps)``; the caller supplies ``run_step(step) -> {name: float}``, which reads this rank's
part of the global batch, runs forward and backward (each micro-batch loss already scaled to its share of the
global batch) and returns its share of each logged loss. Per step the engine

1. sets the learning rate of every parameter group to ``lr_at(step)`` (when given),
2. zeroes the gradients and calls ``run_step``,
3. sums gradients and logged losses over ranks (:func:`pipeline.dist.allreduce_grads`,
   :func:`pipeline.dist.reduce_sum`: device-aware, so NCCL gets CUDA tensors and gloo CPU ones),
4. clips the gradient norm (when ``grad_clip``) and steps the optimizer,
5. appends ``{"step": step + 1, **row_extra(step), **losses}`` to the history, updates the progress bar,
6. every ``checkpoint_every`` steps (and after the last) saves a :class:`Checkpointer` checkpoint (rank 0),
7. and returns early, marked ``interrupted``, after step ``stop_after`` (the resume tests' hook).

Resume (:meth:`Trainer.resume`): the latest checkpoint whose settings digest matches (checkpoints of other
settings are removed) restores the trainable tensors, the optimizer, the global torch RNG and the history, so a
resumed run ends with the weights of an uninterrupted one — provided ``run_step``'s data order is a pure
function of the step (every caller's is). Hooks (:class:`Hook`) see the trainer before the first step, after
every step and after the last one.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import shutil
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from tqdm import tqdm

from pipeline.dist import DistContext, allreduce_grads, barrier, reduce_sum
from pipeline.io import atomic_write_text, temp_path

log = logging.getLogger("pipeline.engine")

StepFn = Callable[[int], dict[str, float]]


# ------------------------------------------------------------------------------------------- checkpoints
class Checkpointer:
    """Checkpoints ``<root>/step-XXXXXXX/`` of one run's settings (``settings``: a digest of everything that
    determines the weights after a given step).

    A checkpoint holds ``weights.safetensors`` (the tensors the caller chose), ``optimizer.pt``, ``rng.pt``
    (the global torch CPU RNG state) and ``state.json`` (settings, step, history, tensor names, extra); it is
    written in a temporary folder and renamed, so it exists complete or not at all. The newest ``keep_last``
    are kept.
    """

    def __init__(self, root: str | Path, settings: str, keep_last: int = 1):
        if keep_last < 1:
            raise ValueError(f"keep_last must be >= 1, got {keep_last}")
        self.root, self.settings, self.keep_last = Path(root), settings, keep_last

    def _dirs(self) -> list[Path]:
        if not self.root.is_dir():
            return []
        return sorted(d for d in self.root.glob("step-*") if d.is_dir() and (d / "state.json").is_file())

    @staticmethod
    def _state(d: Path) -> dict:
        try:
            return json.loads((d / "state.json").read_text())
        except (OSError, ValueError):
            return {}

    def find(self, max_step: int, clean: bool = False) -> Path | None:
        """The newest checkpoint of these settings with step <= ``max_step``; ``clean`` also removes the
        checkpoints of other settings (with a warning) and unfinished temporary folders."""
        if clean and self.root.is_dir():
            for d in self.root.glob(".step-*"):
                shutil.rmtree(d, ignore_errors=True)
        found = None
        for d in self._dirs():
            state = self._state(d)
            if state.get("settings") != self.settings:
                if clean:
                    log.warning("removing checkpoint %s made with other settings (%s != %s)",
                                d, state.get("settings"), self.settings)
                    shutil.rmtree(d, ignore_errors=True)
                continue
            if int(state.get("step", max_step + 1)) <= max_step:
                found = d
        return found

    def save(self, step: int, tensors: dict[str, torch.Tensor], optimizer: torch.optim.Optimizer,
             history: list[dict], extra: dict | None = None) -> Path:
        self.root.mkdir(parents=True, exist_ok=True)
        final = self.root / f"step-{step:07d}"
        tmp = temp_path(final)
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
        save_file({k: v.detach().cpu().contiguous() for k, v in tensors.items()}, str(tmp / "weights.safetensors"))
        torch.save(optimizer.state_dict(), tmp / "optimizer.pt")
        torch.save(torch.get_rng_state(), tmp / "rng.pt")
        state = {"settings": self.settings, "step": step, "names": list(tensors), "history": history,
                 "extra": extra or {}}
        (tmp / "state.json").write_text(json.dumps(state) + "\n")
        shutil.rmtree(final, ignore_errors=True)
        tmp.rename(final)
        mine = [d for d in self._dirs() if self._state(d).get("settings") == self.settings]
        for d in mine[: -self.keep_last]:
            shutil.rmtree(d, ignore_errors=True)
        return final

    @staticmethod
    def load(d: Path, names: Sequence[str], optimizer: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict]:
        """-> (tensors by name, state). Restores the optimizer and the global RNG."""
        state = json.loads((d / "state.json").read_text())
        if state["names"] != list(names):
            raise ValueError(f"{d}: trainable tensors differ from the checkpoint's; delete it to start afresh")
        tensors = load_file(str(d / "weights.safetensors"))
        optimizer.load_state_dict(torch.load(d / "optimizer.pt", map_location="cpu", weights_only=True))
        torch.set_rng_state(torch.load(d / "rng.pt", weights_only=True))
        return tensors, state


# ------------------------------------------------------------------------------------------------- hooks
class Hook:
    """Called by :class:`Trainer` around the loop (override what you need)."""

    def before_train(self, trainer: Trainer) -> None: ...

    def after_step(self, trainer: Trainer) -> None: ...

    def after_train(self, trainer: Trainer) -> None: ...


class ProgressBar(Hook):
    """A tqdm bar on rank 0 with the last step's loss and the steps per second of this run."""

    def __init__(self, desc: str, keys: Sequence[str] = ("loss",)):
        self.desc, self.keys, self.bar = desc, tuple(keys), None

    def before_train(self, trainer: Trainer) -> None:
        self.bar = tqdm(total=trainer.total_steps, initial=trainer.step, desc=self.desc, unit="step",
                        disable=not trainer.ctx.is_main)

    def after_step(self, trainer: Trainer) -> None:
        row = trainer.history[-1]
        self.bar.update(1)
        shown = {k: f"{row[k]:.4f}" for k in self.keys if k in row}
        self.bar.set_postfix(shown | {"steps_s": f"{trainer.steps_per_second:.2f}"})

    def after_train(self, trainer: Trainer) -> None:
        if self.bar is not None:
            self.bar.close()


# ----------------------------------------------------------------------------------------------- trainer
@dataclass
class TrainResult:
    """What a :meth:`Trainer.train` call did: steps ``start -> step`` in ``seconds``; ``interrupted`` when it
    returned early after ``stop_after``."""

    start: int
    step: int
    seconds: float
    history: list[dict] = field(default_factory=list)
    interrupted: bool = False

    @property
    def steps_this_run(self) -> int:
        return self.step - self.start


class Trainer:
    """The training loop (see the module docstring).

    Args:
        named_tensors: ``() -> {name: tensor}``: what a checkpoint stores (trainable parameters, or a
            state dict); ``restore`` puts such a dict back into the model.
        parameters: the parameters the optimizer steps (gradients summed over ranks, norm clipped).
        row_extra: ``step -> dict`` of extra history columns (e.g. epoch and learning rate).
    """

    def __init__(self, *, run_step: StepFn, optimizer: torch.optim.Optimizer, parameters: Sequence[torch.nn.Parameter],
                 total_steps: int, ctx: DistContext, device: torch.device,
                 named_tensors: Callable[[], dict[str, torch.Tensor]] | None = None,
                 restore: Callable[[dict[str, torch.Tensor]], None] | None = None,
                 checkpointer: Checkpointer | None = None, checkpoint_every: int = 0,
                 lr_at: Callable[[int], float] | None = None, grad_clip: float | None = None,
                 row_extra: Callable[[int], dict] | None = None, stop_after: int | None = None,
                 hooks: Iterable[Hook] = ()):
        if checkpointer is not None and (named_tensors is None or restore is None):
            raise ValueError("a checkpointer needs named_tensors and restore")
        self.run_step, self.optimizer, self.parameters = run_step, optimizer, list(parameters)
        self.total_steps, self.ctx, self.device = total_steps, ctx, device
        self.named_tensors, self.restore = named_tensors, restore
        self.checkpointer, self.checkpoint_every = checkpointer, checkpoint_every
        self.lr_at, self.grad_clip, self.row_extra, self.stop_after = lr_at, grad_clip, row_extra, stop_after
        self.hooks = list(hooks)
        self.step, self.history, self.resumed_from = 0, [], None
        self._t0, self._start = time.perf_counter(), 0

    @property
    def steps_per_second(self) -> float:
        elapsed = time.perf_counter() - self._t0
        return (self.step - self._start) / elapsed if elapsed > 0 else 0.0

    def resume(self) -> int:
        """Load the newest matching checkpoint (rank 0 first removes stale ones). Returns the step reached."""
        if self.checkpointer is None:
            return self.step
        if self.ctx.is_main:
            self.checkpointer.find(self.total_steps, clean=True)
        barrier(self.ctx)
        found = self.checkpointer.find(self.total_steps)
        if found is not None:
            tensors, state = self.checkpointer.load(found, list(self.named_tensors()), self.optimizer)
            self.restore(tensors)
            self.step, self.history, self.resumed_from = int(state["step"]), list(state["history"]), found
        return self.step

    def train(self) -> TrainResult:
        self._t0, self._start = time.perf_counter(), self.step
        for hook in self.hooks:
            hook.before_train(self)
        interrupted = False
        try:
            while self.step < self.total_steps:
                self.history.append(self._one_step(self.step))
                self.step += 1
                for hook in self.hooks:
                    hook.after_step(self)
                if self.checkpointer is not None and (
                    (self.checkpoint_every and self.step % self.checkpoint_every == 0) or self.step == self.total_steps
                ):
                    self.save_checkpoint()
                if self.stop_after is not None and self.stop_after <= self.step < self.total_steps:
                    interrupted = True
                    break
        finally:
            for hook in self.hooks:
                hook.after_train(self)
        return TrainResult(self._start, self.step, time.perf_counter() - self._t0, self.history, interrupted)

    def _one_step(self, step: int) -> dict:
        extra = self.row_extra(step) if self.row_extra else {}
        if self.lr_at is not None:
            lr = self.lr_at(step)
            for group in self.optimizer.param_groups:
                group["lr"] = lr
        self.optimizer.zero_grad(set_to_none=True)
        losses = self.run_step(step)
        allreduce_grads(self.parameters, self.ctx)
        losses = reduce_sum(losses, self.ctx, self.device)
        if self.grad_clip is not None:
            torch.nn.utils.clip_grad_norm_(self.parameters, self.grad_clip)
        self.optimizer.step()
        return {"step": step + 1, **extra, **losses}

    def save_checkpoint(self) -> None:
        if self.ctx.is_main:
            self.checkpointer.save(self.step, self.named_tensors(), self.optimizer, self.history)
        barrier(self.ctx)


# ------------------------------------------------------------------------------------------------ outputs
def write_curve(path: str | Path, rows: Sequence[dict], fields: Sequence[str]) -> None:
    """Write ``rows`` (dicts; other keys ignored) as a CSV with columns ``fields``, atomically (DVC plots)."""
    buf = io.StringIO(newline="")
    writer = csv.DictWriter(buf, fieldnames=list(fields), extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    atomic_write_text(path, buf.getvalue())


def peak_memory_mb(device: torch.device) -> float:
    """Peak memory of this process so far: CUDA allocator peak on a GPU, max RSS on the CPU (Linux: KiB)."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**10
