"""The one training loop (Connect, captioning, text-to-image): steps from a checkpoint or
from scratch, a progress bar, the non-finite watch, metrics (metrics.jsonl and
TensorBoard, learning rate included), checkpoints with the data position and, optionally,
a validation value that picks the best checkpoint."""
from __future__ import annotations

import collections
import dataclasses
import sys
import time
from typing import Callable, Iterator, Optional, Tuple

import jax
import numpy as np
from absl import logging

from c3_jax import parallel
from c3_jax.data import pipeline
from c3_jax.progress import progress_bar
from c3_jax.train import checkpoints
from c3_jax.train import state as st
from c3_jax.workdir import Workdir


# A run that skipped more than this share of its steps as non-finite ends with an error.
MAX_SKIPPED_SHARE = 0.5


@dataclasses.dataclass(frozen=True)
class LoopConfig:
    steps: int
    log_every: int
    checkpoint_every: int
    skip_nonfinite: bool = False
    desc: str = "train"
    postfix: Tuple[str, ...] = ("loss",)  # metrics shown on the progress bar
    members: Tuple[str, ...] = ()  # a sweep's member names: metrics have a member axis
    val_name: str = "val_loss"  # the name metrics.jsonl gives validate's value
    # Steps dispatched ahead of the device: the host waits for step i - in_flight before
    # dispatching step i, so the loop runs at the device's rate rather than filling a long
    # queue and stalling at every log step (the device always has the next step queued).
    in_flight: int = 2


def summary_writer(logdir: str):
    """tensorboardX's SummaryWriter on ``logdir``, or None when tensorboardX is not installed.
    tensorboardX imports torch when it is installed, only to accept torch tensors (~1 s of a
    run's start); scalars don't need it, so torch is hidden from that import."""
    hide = "torch" not in sys.modules
    if hide:
        sys.modules["torch"] = None  # `import torch` raises ImportError while this is set
    try:
        from tensorboardX import SummaryWriter
    except ImportError:
        logging.warning("tensorboardX is not installed; metrics go to metrics.jsonl only")
        return None
    finally:
        if hide:
            del sys.modules["torch"]
    return SummaryWriter(logdir)


class MetricWriter:
    """Metrics of a run: rows of ``metrics.jsonl`` and TensorBoard scalars (process 0; the
    TensorBoard file is opened at the first write, so a finished run reloaded adds none)."""

    def __init__(self, wd: Workdir):
        self.wd, self._tb = wd, None

    def write(self, step: int, metrics: dict) -> None:
        if not self.wd.primary:
            return
        self.wd.log_metrics(step, metrics)
        if self._tb is None:
            self._tb = summary_writer(self.wd.file("tensorboard")) or False
        if self._tb:
            for k, v in metrics.items():
                self._tb.add_scalar(k, v, step)

    def close(self) -> None:
        if self._tb:
            self._tb.close()


Step = Callable[[object, dict, int], tuple]  # (state, global batch, step index) -> (state, metrics)


def host_metrics(metrics: dict, members: Tuple[str, ...]) -> dict:
    """Metrics as floats; a metric with a member axis gives one value per member
    ('loss/c3_seed0') and their mean ('loss'); padding members past ``members`` are left out."""
    out = {}
    for k, v in parallel.to_host(metrics).items():
        v = np.asarray(v)
        if v.ndim == 0:
            out[k] = float(v)
            continue
        v = v[:len(members)]
        out[k] = float(v.mean())
        out.update({f"{k}/{name}": float(x) for name, x in zip(members, v)})
    return out


def fit(state, start: int, step: Step, data: Iterator, batch_sharding, ckpts:
        checkpoints.Checkpoints, wd: Workdir, loop: LoopConfig,
        learning_rate: Optional[Callable[[int], float]] = None,
        validate: Optional[Callable[[object], Optional[float]]] = None,
        after_step: Optional[Callable[[int, object], None]] = None,
        at_checkpoint: Optional[Callable[[object], tuple]] = None) -> tuple:
    """Runs ``step`` from ``start`` to ``loop.steps`` on ``data`` (local batches, placed
    with ``batch_sharding``); returns (state, the last logged metrics, the last validation
    value). Metrics after ``start`` (logged by a run that was cut) are dropped first;
    ``validate(state)`` at each checkpoint gives the value ``best/`` keeps the best of
    (lower is better); ``after_step(done, state)`` runs after every step (e.g. a probe);
    ``at_checkpoint(state) -> (state, metrics)`` before each save (e.g. a sweep keeping
    each member's best params). ``batch_sharding`` None: ``data`` yields global arrays.
    A non-finite step stops the run before it is saved, unless ``skip_nonfinite``. Each
    logged row adds where the wall time went (``time/*``, see ``Laps``); the returned
    metrics leave those out and add ``seconds_per_step`` (see ``pace``)."""
    wd.truncate_metrics(start)
    writer, watch = MetricWriter(wd), st.NonFiniteWatch(loop.members)
    place = ((lambda b: b) if batch_sharding is None else
             (lambda b: pipeline.global_batch(b, batch_sharding)))
    bar = progress_bar(range(start, loop.steps), initial=start, total=loop.steps,
                       desc=loop.desc, unit="step")
    last, val, marks, laps = {}, None, [], Laps(start)
    ahead = collections.deque()  # the metrics of the steps still in flight
    try:
        for i in bar:
            if len(ahead) >= max(loop.in_flight, 1):
                jax.block_until_ready(ahead.popleft())
                laps.lap("wait")
            batch = next(data)
            laps.lap("data")
            batch = place(batch)
            laps.lap("place")
            state, metrics = step(state, batch, i)
            done = i + 1
            watch.update(metrics, done)
            ahead.append(metrics)
            laps.lap("dispatch")
            if done % loop.log_every == 0 or done == loop.steps:
                last = host_metrics(metrics, loop.members)
                marks.append((done, time.perf_counter()))
                laps.lap("sync")
                if learning_rate is not None:
                    last["learning_rate"] = float(learning_rate(done - 1))
                writer.write(done, {**last, **laps.row(done)})
                bar.set_postfix({k: f"{last[k]:.4f}" for k in loop.postfix if k in last})
                laps.lap("log")
            if after_step is not None:
                after_step(done, state)
                laps.lap("after_step")
            if done % loop.checkpoint_every == 0 or done == loop.steps:
                watch.check(ckpts, loop.skip_nonfinite)
                laps.lap("sync")
                if at_checkpoint is not None:
                    state, extra = at_checkpoint(state)
                    writer.write(done, extra)
                val = validate(state) if validate is not None else None
                if val is not None:
                    writer.write(done, {loop.val_name: val})
                laps.lap("validate")
                ckpts.save(done, state, data, best_value=val)
                laps.lap("checkpoint")
    finally:  # also on SIGINT/SIGTERM: a save in flight finishes, none is left half-written
        ckpts.wait()
        ckpts.close()
        writer.close()
    skipped = skipped_steps(watch, loop, start)
    return state, {**last, **pace(marks), **skipped}, val


class Laps:
    """Where a loop's wall time goes: consecutive laps (``lap(phase)`` adds the time since
    the previous lap to ``phase``), summed between log rows. Device work is asynchronous:
    'wait' is the host waiting for the device (the step ``in_flight`` steps back), 'sync'
    for a log step's metrics; 'data' and 'place' are the input pipeline's own time and
    'dispatch' the host's share of launching a step."""

    PHASES = ("data", "place", "dispatch", "wait", "sync", "log", "after_step", "validate",
              "checkpoint")

    def __init__(self, start: int):
        self.last, self.since, self.sums = time.perf_counter(), start, {}

    def lap(self, phase: str) -> None:
        now = time.perf_counter()
        self.sums[phase] = self.sums.get(phase, 0.0) + now - self.last
        self.last = now

    def row(self, done: int) -> dict:
        """{'time/<phase>': seconds per step, 'time/step': their sum} over the steps since
        the previous row (a log step's own log, validation and checkpoint fall in the next
        row; the first row holds the compilation), and starts new sums."""
        steps = max(done - self.since, 1)
        out = {f"time/{p}": self.sums.get(p, 0.0) / steps for p in self.PHASES}
        out["time/step"] = sum(self.sums.values()) / steps
        self.since, self.sums = done, {}
        return out


def skipped_steps(watch: st.NonFiniteWatch, loop: LoopConfig, start: int) -> dict:
    """{'skipped_nonfinite_steps'} (and per member) of the steps this process ran; raises
    when more than ``MAX_SKIPPED_SHARE`` of them were skipped: its results would describe
    an initial or stale state."""
    counts = watch.skipped_steps()[:max(len(loop.members), 1)]
    ran = loop.steps - start
    out = {"skipped_nonfinite_steps": int(counts.sum())}
    out.update({f"skipped_nonfinite_steps/{n}": int(c) for n, c in zip(loop.members, counts)})
    worst = int(counts.max()) if counts.size else 0
    if ran > 0 and worst > MAX_SKIPPED_SHARE * ran:
        who = ("" if not loop.members else " by member(s) " + ", ".join(
            n for n, c in zip(loop.members, counts) if c > MAX_SKIPPED_SHARE * ran))
        raise FloatingPointError(
            f"{worst} of the {ran} steps run{who} had non-finite loss or gradients and were "
            "skipped (captioner.skip_nonfinite / generator.skip_nonfinite); the checkpoints "
            "are kept but no results are written. Lower the learning rate or check the data "
            "for NaN/Inf")
    return out


def pace(marks: list, unit: str = "step") -> dict:
    """{'seconds_per_<unit>'}: the median wall time per step between consecutive
    ``marks`` ((step, time) when a step's outputs reached the host). The time before the
    first mark is left out, and the median leaves out a later compilation (e.g. of the
    lazy R1 step's twin); {} with fewer than two marks."""
    if len(marks) < 2:
        return {}
    rates = [(t1 - t0) / (s1 - s0) for (s0, t0), (s1, t1) in zip(marks, marks[1:])]
    return {f"seconds_per_{unit}": float(np.median(rates))}
