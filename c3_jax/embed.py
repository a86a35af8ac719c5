"""Frozen-encoder embedding extraction, data-parallel over all devices, into TFDS datasets."""
from __future__ import annotations

import json
import os
from typing import Callable, Optional, Sequence

import jax
import numpy as np
from PIL import Image

from c3_jax.data import builders
from c3_jax.data.images import ImagePreprocessor
from c3_jax.data.text import load_tokenizer
from c3_jax.models import clip
from c3_jax.progress import progress_bar
from c3_jax import parallel


def image_encoder(module: clip.CLIP, params, preprocess: ImagePreprocessor,
                  devices: Optional[Sequence] = None) -> Callable:
    """``f(image paths) -> CLIP image features [n, projection_dim]`` (float32), sharded over
    ``devices`` as in ``parallel.sharded_function``."""
    fn = lambda prm, a: module.apply({"params": prm}, a[0], method="encode_image")
    apply = parallel.sharded_function(fn, params, devices)
    return lambda paths: apply(preprocess.batch([Image.open(p) for p in paths])
                               ).astype(np.float32)


def text_encoder(module: clip.CLIP, params, tokenizer,
                 devices: Optional[Sequence] = None) -> Callable:
    """``f(texts) -> CLIP text features [n, projection_dim]`` (float32); texts are
    padded/truncated to the model's context (``devices`` as in ``image_encoder``)."""
    fn = lambda prm, a: module.apply({"params": prm}, a[0], a[1], method="encode_text")
    apply = parallel.sharded_function(fn, params, devices)
    length = module.config.max_positions

    def encode(texts):
        tok = tokenizer(list(texts), padding="max_length", truncation=True,
                        max_length=length, return_tensors="np")
        return apply(tok["input_ids"].astype(np.int32),
                     tok["attention_mask"].astype(np.int32)).astype(np.float32)

    return encode


def square_images(paths: Sequence[str], size: int) -> np.ndarray:
    """uint8 [n, size, size, 3]: each image's shortest edge resized to ``size`` (bicubic),
    centre-cropped."""
    prep = ImagePreprocessor(size, size, (0.0, 0.0, 0.0), (1.0, 1.0, 1.0))
    out = np.zeros((len(paths), size, size, 3), np.uint8)
    for i, p in enumerate(paths):
        out[i] = np.clip(np.round(prep(Image.open(p)).transpose(1, 2, 0) * 255.0), 0, 255)
    return out


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
    text-to-image). ``batch_size`` images at a time are read, encoded and written, so
    memory does not grow with the dataset. With several JAX processes each reads and
    encodes its own part of every split on its own devices and writes it as its shard of
    the one dataset."""
    builders.check_new(data_dir, name, overwrite)  # before loading or encoding anything
    everything = karpathy_split(annotation_file)
    _check_coco(everything, image_root, captions_per_image)
    module, params = clip.from_pretrained(clip_dir)
    devices = jax.local_devices()
    images = image_encoder(module, params, ImagePreprocessor.from_pretrained(clip_dir), devices)
    texts = text_encoder(module, params, load_tokenizer(clip_dir), devices)
    k, d = captions_per_image, module.config.projection_dim
    fields = {"image_embedding": ((d,), np.float32), "text_embedding": ((k, d), np.float32),
              "image_id": ((), np.int64)}
    if image_size > 0:
        fields["image"] = ((image_size, image_size, 3), np.uint8)
    sizes = {split: len(items) for split, items in everything.items()}
    with builders.PairsWriter(name, data_dir, sizes, fields, (k,), overwrite) as writer:
        for split, items in everything.items():
            part = builders.process_rows(len(items))
            for lo in progress_bar(range(part.start, part.stop, batch_size),
                                   desc=f"extract {split}", unit="batch"):
                batch = items[lo:min(lo + batch_size, part.stop)]
                paths = [os.path.join(image_root, p) for p, _, _ in batch]
                caps = [c[:k] for _, c, _ in batch]
                rows = {"image_embedding": images(paths),
                        "text_embedding": texts([c for cs in caps for c in cs]
                                                ).reshape(len(batch), k, d),
                        "image_id": np.asarray([i for _, _, i in batch], np.int64)}
                if image_size > 0:
                    rows["image"] = square_images(paths, image_size)
                writer.write(split, lo, rows, caps)
    return writer.final


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
