"""grain input pipeline: seeded shuffling, sharding by JAX process, checkpointable iterators."""
from __future__ import annotations

from typing import Callable, Optional, Sequence

import grain.python as grain
import jax
import numpy as np


class _Map(grain.MapTransform):
    def __init__(self, fn: Callable):
        self._fn = fn

    def map(self, element):
        return self._fn(element)


def make_loader(source: Sequence, batch_size: int, seed: int, *, shuffle: bool = True,
                num_epochs: Optional[int] = None, shard_index: Optional[int] = None,
                shard_count: Optional[int] = None, transform: Optional[Callable] = None,
                drop_remainder: bool = True) -> grain.DataLoader:
    """A deterministic grain DataLoader over a random-access ``source``.

    Each process reads a disjoint shard (by default its JAX process index); the order
    depends only on ``seed``; ``transform`` maps one example (e.g. tokenize and pad a
    caption) before batching. ``iter(loader).get_state()`` / ``set_state`` checkpoint it.
    """
    if shard_index is None:
        shard = grain.ShardByJaxProcess(drop_remainder=True)
    else:
        shard = grain.ShardOptions(shard_index, shard_count, drop_remainder=True)
    sampler = grain.IndexSampler(len(source), shard_options=shard, shuffle=shuffle,
                                 num_epochs=num_epochs, seed=seed)
    ops = ([_Map(transform)] if transform else []) + [
        grain.Batch(batch_size, drop_remainder=drop_remainder)]
    return grain.DataLoader(data_source=source, sampler=sampler, operations=ops, worker_count=0)


def global_batch(local: dict, sharding: jax.sharding.Sharding) -> dict:
    """Assembles this process's batch into global arrays laid out by ``sharding``."""
    return {k: jax.make_array_from_process_local_data(sharding, np.asarray(v))
            for k, v in local.items()}
