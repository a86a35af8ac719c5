"""Embedding extraction from a folder of images + captions into a TFDS dataset."""
import json

import numpy as np
import pytest
import transformers
from PIL import Image

from c3_jax import embed
from c3_jax.data import builders
from c3_jax.data.images import ImagePreprocessor
from c3_jax.models import clip
from conftest import clip_dir

def _coco_folder(root):
    rng = np.random.default_rng(0)
    (root / "val2014").mkdir(parents=True)
    colors = ["red", "blue", "green"]
    images = []
    for i, split in enumerate(["train", "train", "restval", "test", "test"]):
        name = f"img{i}.png"
        Image.fromarray(rng.integers(0, 256, (40, 52, 3), dtype=np.uint8)).save(
            root / "val2014" / name)
        sentences = [{"raw": f"a {colors[i % 3]} circle"}, {"raw": "the star on the left"},
                     {"raw": "a square"}]
        images.append({"filepath": "val2014", "filename": name, "split": split,
                       "cocoid": 100 + i, "sentences": sentences})
    (root / "dataset_coco.json").write_text(json.dumps({"images": images}))


@pytest.mark.slow
def test_extract_coco_equals_the_encoder_applied_directly(tmp_path):
    clip_dir(tmp_path / "clip")
    _coco_folder(tmp_path / "coco")
    path = embed.extract_coco(str(tmp_path / "clip"), str(tmp_path / "coco" / "dataset_coco.json"),
                              str(tmp_path / "coco"), str(tmp_path / "data"),
                              captions_per_image=2, batch_size=2)
    module, params = clip.from_pretrained(str(tmp_path / "clip"))
    preprocess = ImagePreprocessor.from_pretrained(str(tmp_path / "clip"))
    tokenizer = transformers.AutoTokenizer.from_pretrained(str(tmp_path / "clip"))
    train = builders.data_source(path, "train")
    assert len(train) == 3  # restval merged into train
    assert len(builders.data_source(path, "test")) == 2
    for ex in train:
        i = int(ex["image_id"]) - 100
        pixels = preprocess.batch([Image.open(tmp_path / "coco" / "val2014" / f"img{i}.png")])
        want_img = module.apply({"params": params}, pixels, method="encode_image")[0]
        captions = [c.decode() for c in ex["caption"]]
        assert captions == [f"a {['red', 'blue', 'green'][i % 3]} circle", "the star on the left"]
        tok = tokenizer(captions, padding="max_length", max_length=12, return_tensors="np")
        want_txt = module.apply({"params": params}, tok["input_ids"], tok["attention_mask"],
                                method="encode_text")
        np.testing.assert_allclose(ex["image_embedding"], want_img, atol=1e-5)
        np.testing.assert_allclose(ex["text_embedding"], want_txt, atol=1e-5)


@pytest.mark.slow
def test_extract_coco_stores_square_images_for_text_to_image(tmp_path):
    clip_dir(tmp_path / "clip")
    _coco_folder(tmp_path / "coco")
    path = embed.extract_coco(str(tmp_path / "clip"), str(tmp_path / "coco" / "dataset_coco.json"),
                              str(tmp_path / "coco"), str(tmp_path / "data"),
                              captions_per_image=2, batch_size=2, image_size=16)
    for ex in builders.data_source(path, "test"):
        i = int(ex["image_id"]) - 100
        pil = Image.open(tmp_path / "coco" / "val2014" / f"img{i}.png").convert("RGB")
        want = np.asarray(pil.resize((20, 16), Image.BICUBIC))[:, 2:18]  # 52x40 -> 20x16 -> crop
        np.testing.assert_array_equal(ex["image"], want)
