"""Frozen-encoder embedding extraction, data-parallel over all devices, into TFDS datasets."""
from __future__ import annotations

import json
import os
from typing import Optional, Sequence

import jax
import numpy as np
from PIL import Image

from c3_jax.data import builders
from c3_jax.data.images import ImagePreprocessor
from c3_jax.data.text import load_tokenizer
from c3_jax.models import clip
from c3_jax.progress import progress_bar
from c3_jax import parallel


def encode_images(module: clip.CLIP, params, preprocess: ImagePreprocessor,
                  paths: Sequence[str], batch_size: int = 256,
                  devices: Optional[Sequence] = None) -> np.ndarray:
    """CLIP image features [n, projection_dim] of image files (``devices`` as in
    ``data_parallel``)."""
    if not paths:
        return np.zeros((0, module.config.projection_dim), np.float32)
    batches = ((preprocess.batch([Image.open(p) for p in paths[i:i + batch_size]]),)
               for i in range(0, len(paths), batch_size))
    fn = lambda prm, a: module.apply({"params": prm}, a[0], method="encode_image")
    return parallel.data_parallel(fn, params, batches, "image embeddings", devices)


def square_images(paths: Sequence[str], size: int) -> np.ndarray:
    """uint8 [n, size, size, 3]: each image's shortest edge resized to ``size`` (bicubic),
    centre-cropped."""
    prep = ImagePreprocessor(size, size, (0.0, 0.0, 0.0), (1.0, 1.0, 1.0))
    out = np.zeros((len(paths), size, size, 3), np.uint8)
    for i, p in enumerate(progress_bar(paths, desc=f"images at {size}px", unit="image")):
        out[i] = np.clip(np.round(prep(Image.open(p)).transpose(1, 2, 0) * 255.0), 0, 255)
    return out


def encode_texts(module: clip.CLIP, params, tokenizer, texts: Sequence[str],
                 batch_size: int = 1024, devices: Optional[Sequence] = None) -> np.ndarray:
    """CLIP text features [n, projection_dim]; texts are padded/truncated to the model's
    context (``devices`` as in ``data_parallel``)."""
    length = module.config.max_positions
    if not texts:
        return np.zeros((0, module.config.projection_dim), np.float32)

    def batches():
        for i in range(0, len(texts), batch_size):
            tok = tokenizer(list(texts[i:i + batch_size]), padding="max_length", truncation=True,
                            max_length=length, return_tensors="np")
            yield tok["input_ids"].astype(np.int32), tok["attention_mask"].astype(np.int32)

    fn = lambda prm, a: module.apply({"params": prm}, a[0], a[1], method="encode_text")
    return parallel.data_parallel(fn, params, batches(), "text embeddings", devices)


def karpathy_split(annotation_file: str) -> dict:
    """{split: [(image path relative to the image root, [captions], cocoid)]} of the Karpathy
    ``dataset_coco.json``; restval is merged into train, as the reference does."""
    if not os.path.exists(annotation_file):
        raise FileNotFoundError(f"{annotation_file} does not exist (the Karpathy dataset_coco.json)")
    with open(annotation_file) as f:
        images = json.load(f)["images"]
    out: dict = {}
    for im in images:
        split = "train" if im["split"] == "restval" else im["split"]
        path = os.path.join(im.get("filepath", ""), im["filename"])
        out.setdefault(split, []).append((path, [s["raw"] for s in im["sentences"]],
                                          im.get("cocoid", len(out.get(split, ())))))
    return out


def extract_coco(clip_dir: str, annotation_file: str, image_root: str, data_dir: str,
                 name: str = "coco_karpathy_clip", captions_per_image: int = 5,
                 batch_size: int = 256, image_size: int = 0, overwrite: bool = False) -> str:
    """Writes one example per image: its embedding, its first ``captions_per_image``
    caption embeddings [k, d], those captions, the COCO id and, when ``image_size`` > 0,
    the image itself (uint8, shortest edge resized, centre-cropped square: for
    text-to-image). With several JAX processes each reads and encodes its own part of
    every split on its own devices and writes it as its shard of the one dataset."""
    builders.check_new(data_dir, name, overwrite)  # before loading or encoding anything
    module, params = clip.from_pretrained(clip_dir)
    preprocess, tokenizer = ImagePreprocessor.from_pretrained(clip_dir), load_tokenizer(clip_dir)
    k, devices = captions_per_image, jax.local_devices()
    everything = karpathy_split(annotation_file)
    _check_coco(everything, image_root, k)
    splits, captions = {}, {}
    for split, items in everything.items():
        items = items[builders.process_rows(len(items))]
        paths = [os.path.join(image_root, p) for p, _, _ in items]
        caps = [c[:k] for _, c, _ in items]
        text = encode_texts(module, params, tokenizer, [c for cs in caps for c in cs],
                            batch_size, devices)
        splits[split] = {
            "image_embedding": encode_images(module, params, preprocess, paths, batch_size,
                                             devices).astype(np.float32),
            "text_embedding": text.reshape(len(items), k, -1).astype(np.float32),
            "image_id": np.asarray([i for _, _, i in items], np.int64)}
        if image_size > 0:
            splits[split]["image"] = square_images(paths, image_size)
        captions[split] = caps
    return builders.build_pairs_dataset(name, data_dir, splits, captions, local_rows=True,
                                        overwrite=overwrite)


def _check_coco(splits: dict, image_root: str, k: int) -> None:
    """Every image exists and has at least ``k`` captions (checked by every process before
    any work, so that all stop together)."""
    for split, items in splits.items():
        short = [(p, len(c)) for p, c, _ in items if len(c) < k]
        if short:
            raise ValueError(f"{len(short)} {split} images have fewer than {k} captions, "
                             f"e.g. {short[0]}; lower captions_per_image")
        missing = [p for p, _, _ in items if not os.path.exists(os.path.join(image_root, p))]
        if missing:
            raise FileNotFoundError(f"{len(missing)} {split} images do not exist under "
                                    f"{image_root}, e.g. {missing[0]}")
