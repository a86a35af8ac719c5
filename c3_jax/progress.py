"""Progress bars, drawn by process 0 alone when several JAX processes run."""
from __future__ import annotations

import jax
from tqdm.auto import tqdm


def progress_bar(iterable=None, **kwargs) -> tqdm:
    """``tqdm(iterable, **kwargs)``, silent on every process but the first; a bar is
    cleared when it ends (``leave=True`` keeps it), so a run's console keeps one line per
    stage rather than one per loop."""
    kwargs["disable"] = kwargs.get("disable", False) or jax.process_index() != 0
    kwargs.setdefault("leave", False)
    return tqdm(iterable, **kwargs)
