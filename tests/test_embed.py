"""Embedding extraction from a folder of images + captions into a TFDS dataset."""
import json

import numpy as np
import torch
import transformers
from PIL import Image

from c3_jax import embed
from c3_jax.data import builders
from c3_jax.data.images import ImagePreprocessor
from c3_jax.models import clip

WORDS = ["<pad>", "<eos>", "<unk>", "a", "red", "blue", "green", "circle", "square", "star",
         "on", "the", "left", "right"]


def _clip_dir(path):
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(WORDS)}, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.post_processor = processors.TemplateProcessing(single="$A <eos>",
                                                       special_tokens=[("<eos>", 1)])
    transformers.PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<eos>",
                                         pad_token="<pad>", unk_token="<unk>").save_pretrained(path)
    config = transformers.CLIPConfig(
        text_config=dict(vocab_size=len(WORDS), hidden_size=32, intermediate_size=37,
                         num_attention_heads=4, num_hidden_layers=2, max_position_embeddings=12,
                         eos_token_id=1),
        vision_config=dict(hidden_size=32, intermediate_size=37, num_attention_heads=4,
                           num_hidden_layers=2, image_size=30, patch_size=6),
        projection_dim=16)
    torch.manual_seed(0)
    transformers.CLIPModel(config).eval().save_pretrained(path)
    transformers.CLIPImageProcessor(size={"shortest_edge": 30},
                                    crop_size={"height": 30, "width": 30}).save_pretrained(path)


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


def test_extract_coco_equals_the_encoder_applied_directly(tmp_path):
    _clip_dir(tmp_path / "clip")
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


def test_extract_coco_stores_square_images_for_text_to_image(tmp_path):
    _clip_dir(tmp_path / "clip")
    _coco_folder(tmp_path / "coco")
    path = embed.extract_coco(str(tmp_path / "clip"), str(tmp_path / "coco" / "dataset_coco.json"),
                              str(tmp_path / "coco"), str(tmp_path / "data"),
                              captions_per_image=2, batch_size=2, image_size=16)
    for ex in builders.data_source(path, "test"):
        i = int(ex["image_id"]) - 100
        pil = Image.open(tmp_path / "coco" / "val2014" / f"img{i}.png").convert("RGB")
        want = np.asarray(pil.resize((20, 16), Image.BICUBIC))[:, 2:18]  # 52x40 -> 20x16 -> crop
        np.testing.assert_array_equal(ex["image"], want)
