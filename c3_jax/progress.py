"""Progress bars, drawn by process 0 alone when several JAX processes run; every step of
a bar also ends the run when a SIGINT/SIGTERM arrived whose KeyboardInterrupt was lost."""
from __future__ import annotations

import jax
from tqdm.auto import tqdm

# The names of the signals c3_jax.main's handler received. Its KeyboardInterrupt can land
# where Python ignores exceptions (a garbage-collection callback, a __del__): the next step
# of any bar raises it again, so a run never goes on after a signal.
RECEIVED: list = []


def raise_if_interrupted() -> None:
    """KeyboardInterrupt (named after the signal) when a signal was received."""
    if RECEIVED:
        raise KeyboardInterrupt(RECEIVED[-1])


class Bar(tqdm):
    """tqdm whose iteration and ``update`` first check for a received signal."""

    def __iter__(self):
        for item in super().__iter__():
            raise_if_interrupted()
            yield item

    def update(self, n=1):
        raise_if_interrupted()
        return super().update(n)


def progress_bar(iterable=None, **kwargs) -> tqdm:
    """``tqdm(iterable, **kwargs)``, silent on every process but the first; a bar is
    cleared when it ends (``leave=True`` keeps it), so a run's console keeps one line per
    stage rather than one per loop."""
    kwargs["disable"] = kwargs.get("disable", False) or jax.process_index() != 0
    kwargs.setdefault("leave", False)
    return Bar(iterable, **kwargs)
