"""Training state: the TrainState pytree, the optimizer, and the non-finite guard."""
from __future__ import annotations

from typing import Any, Optional

import flax
import jax
import jax.numpy as jnp
import numpy as np
import optax
from absl import logging

from c3_jax import parallel


@flax.struct.dataclass
class TrainState:
    """What a checkpoint holds besides the data iterator: step, params, optimizer state."""
    step: jax.Array
    params: Any
    opt_state: Any


def guard_finite(new_state, old_state, metrics: dict, skip: bool):
    """In a jitted step: adds a 'nonfinite' metric (1 when any metric, e.g. the loss or a
    gradient norm, is NaN or Inf); with ``skip`` such a step keeps ``old_state`` (only
    its step counter advances)."""
    ok = jnp.all(jnp.stack([jnp.all(jnp.isfinite(v)) for v in jax.tree.leaves(metrics)]))
    if skip:
        kept = jax.tree.map(lambda n, o: jnp.where(ok, n, o), new_state, old_state)
        new_state = kept.replace(step=new_state.step)
    return new_state, {**metrics, "nonfinite": (~ok).astype(jnp.int32)}


class NonFiniteWatch:
    """The first step whose metrics were not finite (per sweep member when the 'nonfinite'
    metric has a member axis), tracked on device (no host sync per step) and read when the
    trainer logs or is about to save."""

    def __init__(self, members: tuple = ()):
        self.members, self.first, self.skipped = members, None, None
        self._update = jax.jit(lambda f, bad, step: jnp.where((f < 0) & (bad > 0), step, f))
        self._count = jax.jit(lambda count, bad: count + bad)

    def update(self, metrics: dict, step: int) -> None:
        bad = metrics["nonfinite"]
        if self.first is None:
            self.first = jnp.full(jnp.shape(bad), -1, jnp.int32)
        if self.skipped is None:
            self.skipped = jnp.zeros(jnp.shape(bad), jnp.int32)
        self.first = self._update(self.first, bad, step)
        self.skipped = self._count(self.skipped, bad)

    def skipped_steps(self) -> np.ndarray:
        """Steps with non-finite metrics since this process started (per member: [M])."""
        return np.atleast_1d(0 if self.skipped is None else parallel.to_host(self.skipped))

    def check(self, ckpts, skip: bool) -> None:
        """Stops (after finishing pending saves) if a step was not finite, unless skipping."""
        first = np.atleast_1d(-1 if self.first is None else parallel.to_host(self.first))
        bad = first >= 0
        if not bad.any():
            return
        step = int(first[bad].min())
        who = ("" if not self.members else " of member(s) " + ", ".join(
            name for name, b in zip(self.members, bad) if b))
        if skip:
            logging.warning("non-finite loss or gradients%s from step %d on; those steps were "
                            "skipped (skip_nonfinite)", who, step)
            self.first = None
            return
        ckpts.wait()
        last = ckpts.latest_step()
        ckpts.close()
        raise FloatingPointError(
            f"non-finite loss or gradients{who} at step {step}; stopped without saving it. The "
            f"last checkpoint ({'none' if last is None else f'step {last}'}) in "
            f"{ckpts.directory} is intact; lower the learning rate, check the data for NaN/Inf, "
            "or set --config.captioner.skip_nonfinite=True (text-to-image: "
            "--config.generator.skip_nonfinite=True) to skip such steps")


def warmup_linear_decay(lr: float, warmup_steps: int, total_steps: int) -> optax.Schedule:
    """Linear warmup from 0 to ``lr`` then linear decay to 0 at ``total_steps`` (ClipCap's)."""
    warmup = max(min(warmup_steps, total_steps), 1)
    return optax.join_schedules([optax.linear_schedule(0.0, lr, warmup),
                                 optax.linear_schedule(lr, 0.0, max(total_steps - warmup, 1))],
                                [warmup])


def adamw(schedule: optax.Schedule, weight_decay: float, trainable: Optional[Any] = None,
          accumulate: int = 1) -> optax.GradientTransformation:
    """AdamW at the learning rate ``schedule``; params where the ``trainable`` pytree is False
    stay frozen; ``accumulate`` > 1 averages gradients over that many micro-steps per update."""
    tx = optax.adamw(schedule, weight_decay=weight_decay)
    if trainable is not None:
        labels = jax.tree.map(lambda t: "train" if t else "freeze", trainable)
        tx = optax.multi_transform({"train": tx, "freeze": optax.set_to_zero()}, labels)
    return optax.MultiSteps(tx, accumulate) if accumulate > 1 else tx


