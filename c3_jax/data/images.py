"""CLIP image preprocessing, identical to a checkpoint's CLIPImageProcessor."""
from __future__ import annotations

import dataclasses
import json
import os
from typing import Sequence

import numpy as np
from PIL import Image

OPENAI_CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


@dataclasses.dataclass(frozen=True)
class ImagePreprocessor:
    """Resize the shortest side (bicubic), center crop, rescale to [0, 1], normalize."""
    shortest_edge: int = 224
    crop_size: int = 224
    mean: Sequence[float] = OPENAI_CLIP_MEAN
    std: Sequence[float] = OPENAI_CLIP_STD
    resample: int = 3  # PIL bicubic

    @classmethod
    def from_pretrained(cls, path: str) -> "ImagePreprocessor":
        """Reads ``preprocessor_config.json`` of a checkpoint directory (defaults: OpenAI CLIP)."""
        file = os.path.join(path, "preprocessor_config.json")
        if not os.path.exists(file):
            raise FileNotFoundError(f"{path} has no preprocessor_config.json")
        with open(file) as f:
            c = json.load(f)
        size, crop = c.get("size", 224), c.get("crop_size", 224)
        size = size.get("shortest_edge", size) if isinstance(size, dict) else size
        crop = crop.get("height", crop) if isinstance(crop, dict) else crop
        return cls(size, crop, tuple(c.get("image_mean", OPENAI_CLIP_MEAN)),
                   tuple(c.get("image_std", OPENAI_CLIP_STD)), c.get("resample", 3))

    def __call__(self, image: Image.Image) -> np.ndarray:
        """One PIL image -> float32 [3, crop, crop] (channels first, like transformers)."""
        image = image.convert("RGB")
        w, h = image.size
        short, long = (w, h) if w <= h else (h, w)
        new_long = int(self.shortest_edge * long / short)
        size = (self.shortest_edge, new_long) if w <= h else (new_long, self.shortest_edge)
        image = image.resize(size, resample=self.resample)
        w, h = image.size
        top, left = (h - self.crop_size) // 2, (w - self.crop_size) // 2
        if top < 0 or left < 0:
            raise ValueError(f"image of size {w}x{h} is smaller than crop {self.crop_size}")
        arr = np.asarray(image, np.float64)[top:top + self.crop_size, left:left + self.crop_size]
        arr = (arr * (1 / 255.0)).astype(np.float32)
        arr = (arr - np.asarray(self.mean, np.float32)) / np.asarray(self.std, np.float32)
        return arr.transpose(2, 0, 1).astype(np.float32)

    def batch(self, images: Sequence[Image.Image]) -> np.ndarray:
        return np.stack([self(im) for im in images])
