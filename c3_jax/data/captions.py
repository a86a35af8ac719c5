"""Caption data for the captioner: (embedding, caption) pairs from a TFDS embeddings dataset.

A row of the dataset holds one or more captions and either one embedding per caption
([k, d], e.g. CLIP text embeddings) or one for the row ([d], e.g. the image embedding,
paired with each of its captions). Rows are flattened into pairs, one per caption.
"""
from __future__ import annotations

import hashlib
from typing import Optional, Sequence

import numpy as np
from c3_jax.progress import progress_bar

from c3_jax import c3, geometry
from c3_jax.data.text import encode_captions


def captions_of(example, field: str) -> list:
    value = example[field]
    items = [value] if isinstance(value, (bytes, str)) else list(value)
    return [c.decode() if isinstance(c, bytes) else str(c) for c in items]


class CaptionPairs:
    """Random-access (embedding, caption) pairs over ``rows`` of a data source; the
    embedding (or any other per-row input, e.g. an image) is returned as ``output_key``."""

    def __init__(self, source, embedding_field: str, caption_field: str = "caption",
                 rows: Optional[Sequence[int]] = None, output_key: str = "embedding"):
        if len(source) == 0:
            raise ValueError("the split is empty")
        first = source[0]
        for field in (embedding_field, caption_field):
            if field not in first:
                raise KeyError(f"dataset has no field {field!r}; it has {sorted(first)}")
        self.source, self.field, self.caption_field = source, embedding_field, caption_field
        self.output_key = output_key
        self.k = len(captions_of(first, caption_field))
        self.per_caption = np.ndim(first[embedding_field]) == 2  # [k, d]: one per caption
        if self.per_caption and first[embedding_field].shape[0] != self.k:
            raise ValueError(f"{embedding_field!r} has {first[embedding_field].shape[0]} rows "
                             f"for {self.k} captions")
        self.rows = np.arange(len(source)) if rows is None else np.asarray(rows)
        self.dim = first[embedding_field].shape[-1]
        self.ids = self.mask = None

    def tokenize(self, tokenizer, max_length: int, truncate: bool) -> "CaptionPairs":
        """Encodes every caption once (EOS appended, padded); items then carry 'ids' and
        'mask' instead of the caption text."""
        rows = progress_bar(self.rows, desc="read captions", unit="row", leave=False)
        captions = [c for r in rows
                    for c in captions_of(self.source[int(r)], self.caption_field)]
        self.ids, self.mask = encode_captions(tokenizer, captions, max_length, truncate)
        return self

    def with_field(self, field: str) -> "CaptionPairs":
        """The same pairs (and tokens) with another embedding field of the same rows."""
        other = CaptionPairs(self.source, field, self.caption_field, self.rows, self.output_key)
        other.ids, other.mask = self.ids, self.mask
        return other

    def columns(self, chunk: int = 1024) -> Optional[dict]:
        """Every tokenized pair as arrays {output_key, 'ids', 'mask': [len(self), ...]} in
        ``__getitem__``'s order, each row read once (``pipeline.read_columns`` asks for
        them); None before ``tokenize``."""
        if self.ids is None:
            return None
        values = []
        for start in range(0, len(self.rows), chunk):
            keys = [int(r) for r in self.rows[start:start + chunk]]
            rows = (self.source.__getitems__(keys) if hasattr(self.source, "__getitems__")
                    else [self.source[k] for k in keys])
            values += [np.asarray(ex[self.field]) for ex in rows]
        e = np.stack(values)
        e = (e.reshape((len(self),) + e.shape[2:]) if self.per_caption
             else np.repeat(e, self.k, axis=0))
        if np.issubdtype(e.dtype, np.floating):
            e = e.astype(np.float32)
        return {self.output_key: e, "ids": self.ids, "mask": self.mask}

    def __len__(self) -> int:
        return len(self.rows) * self.k

    def __repr__(self) -> str:  # grain checks it when restoring an iterator
        digest = hashlib.sha1(np.ascontiguousarray(self.rows, np.int64).tobytes()).hexdigest()[:12]
        return (f"CaptionPairs({self.source!r}, field={self.field!r}, "
                f"captions={self.caption_field!r}, rows={len(self.rows)}:{digest}, "
                f"tokens={None if self.ids is None else self.ids.shape})")

    def __getitem__(self, i: int) -> dict:
        row, j = divmod(int(i), self.k)
        ex = self.source[int(self.rows[row])]
        e = np.asarray(ex[self.field][j] if self.per_caption else ex[self.field])
        if np.issubdtype(e.dtype, np.floating):
            e = e.astype(np.float32)
        if self.ids is not None:
            return {self.output_key: e, "ids": self.ids[i], "mask": self.mask[i]}
        return {self.output_key: e, "caption": captions_of(ex, self.caption_field)[j]}


def fraction_rows(num_rows: int, fraction: float, seed: int) -> np.ndarray:
    """The first ``fraction`` of a seeded permutation of rows (semi-supervised subsets)."""
    if not 0 < fraction <= 1:
        raise ValueError(f"train_fraction={fraction} must be in (0, 1]")
    count = max(1, int(round(fraction * num_rows)))
    return np.sort(np.random.default_rng(seed).permutation(num_rows)[:count])


def field_moments(source, field: str, batch: int = 1024, desc: str = "") -> "c3.Moments":
    """Per-dimension mean and std of the normalized ``field`` embeddings over a split (every
    caption's, if [k, d]), streamed ``batch`` rows at a time."""
    acc = c3.RunningMoments()
    for start in progress_bar(range(0, len(source), batch), desc=desc or f"moments of {field}",
                              unit="batch", leave=False):
        rows = [source[i][field] for i in range(start, min(start + batch, len(source)))]
        acc.update(np.concatenate([np.reshape(r, (-1, np.shape(r)[-1])) for r in rows]))
    m = acc.moments()
    return c3.Moments(m.mean.astype(np.float32), m.std.astype(np.float32))


def realign_centroid(source, field: str, train: "c3.Moments", evaluation: "c3.Moments",
                     batch: int = 1024) -> np.ndarray:
    """ReAlign's Centroid statistic (``c3.realign_centroid``) over a split's ``field``
    embeddings (every caption's, if [k, d]), streamed ``batch`` rows at a time."""
    def batches():
        for start in progress_bar(range(0, len(source), batch), desc=f"centroid of {field}",
                                  unit="batch", leave=False):
            rows = [source[i][field] for i in range(start, min(start + batch, len(source)))]
            yield np.concatenate([np.reshape(r, (-1, np.shape(r)[-1])) for r in rows])
    return c3.realign_centroid(batches(), train, evaluation)


def method_centroid(method: str, source, field: str, train: "c3.Moments",
                    evaluation: "c3.Moments"):
    """``member_settings``' ``centroid`` argument: ``realign_centroid`` for 'realign', else
    None (no pass over the data)."""
    return realign_centroid(source, field, train, evaluation) if method == "realign" else None


def field_rows(source, field: str, limit: int = 0, batch: int = 1024) -> np.ndarray:
    """Every ``field`` embedding of a split (every caption's, if [k, d]) as one float32 array
    [rows, d], the first ``limit`` rows when > 0, filled ``batch`` rows at a time."""
    first = np.reshape(np.asarray(source[0][field]), (-1, np.shape(source[0][field])[-1]))
    total = len(source) * first.shape[0]
    out = np.empty((total if limit <= 0 else min(limit, total), first.shape[1]), np.float32)
    filled = 0
    for start in range(0, len(source), batch):
        if filled == len(out):
            break
        rows = [source[i][field] for i in range(start, min(start + batch, len(source)))]
        rows = np.concatenate([np.reshape(r, (-1, first.shape[1])) for r in rows])
        take = min(len(rows), len(out) - filled)
        out[filled:filled + take] = rows[:take]
        filled += take
    if not np.isfinite(out).all():
        raise ValueError(f"{field!r} embeddings contain NaN or Inf")
    return out


def eval_rows(source, field: str, caption_field: str, limit: int = 0):
    """Embeddings [n, d] (the row's embedding, or its first caption's) and each row's
    reference captions, for the first ``limit`` rows (all when 0)."""
    n = len(source) if limit <= 0 else min(limit, len(source))
    embeddings, references = [], []
    for i in range(n):
        ex = source[i]
        e = np.asarray(ex[field], np.float32)
        embeddings.append(e[0] if e.ndim == 2 else e)
        references.append(captions_of(ex, caption_field))
    embeddings = np.stack(embeddings)
    if not np.isfinite(embeddings).all():
        raise ValueError(f"{field!r} embeddings contain NaN or Inf")
    return embeddings, references


def noise_model(source, split: str, eval_field: str, train_field: str, caption_field: str,
                pairs: int, rank: int) -> dict:
    """c3_aniso's noise model (``geometry.residual_noise``) of the first ``pairs``
    (eval_field, train_field's first caption) pairs of ``source`` (the ``split`` named in
    errors), rank ``rank``; its ``sigma`` is the calibrated sigma."""
    x, _ = eval_rows(source, eval_field, caption_field, pairs)
    y, _ = eval_rows(source, train_field, caption_field, pairs)
    if len(x) < 2:
        raise ValueError(f"the {split!r} split has {len(x)} rows; calibration needs at least "
                         "2 pairs")
    return geometry.residual_noise(x, y, rank)
