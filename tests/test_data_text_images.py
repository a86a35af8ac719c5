"""Image preprocessing and tokenizers against transformers on local files."""
import numpy as np
import pytest
import transformers
from PIL import Image

from c3_jax.data import images, text


def _photos():
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:300, 0:420]
    smooth = np.stack([xx % 256, yy % 256, (xx + yy) % 256], -1).astype(np.uint8)
    return [Image.fromarray(smooth),
            Image.fromarray(rng.integers(0, 256, (250, 400, 3), dtype=np.uint8)),
            Image.fromarray(rng.integers(0, 256, (413, 230, 3), dtype=np.uint8)),
            Image.fromarray(rng.integers(0, 256, (64, 64), dtype=np.uint8))]  # grayscale


@pytest.mark.parametrize("size", [64, 224])
def test_preprocessing_matches_clip_image_processor(tmp_path, size):
    proc = transformers.CLIPImageProcessor(size={"shortest_edge": size},
                                           crop_size={"height": size, "width": size})
    proc.save_pretrained(tmp_path)
    ours = images.ImagePreprocessor.from_pretrained(str(tmp_path))
    photos = _photos()
    want = proc(images=photos, return_tensors="np")["pixel_values"]
    got = ours.batch(photos)
    assert got.shape == want.shape == (4, 3, size, size)
    np.testing.assert_allclose(got, want, atol=1e-5)


def _tiny_gpt2_tokenizer(path):
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers, decoders
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    corpus = ["a red circle above a blue square.", "two green triangles on a white background.",
              "A small yellow star next to a big red circle."] * 20
    tok.train_from_iterator(corpus, trainers.BpeTrainer(
        vocab_size=300, special_tokens=["<|endoftext|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    fast = transformers.PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|endoftext|>")
    fast.save_pretrained(path)


def test_tokenizer_and_caption_encoding(tmp_path):
    _tiny_gpt2_tokenizer(tmp_path)
    ours = text.load_tokenizer(str(tmp_path))
    ref = transformers.AutoTokenizer.from_pretrained(str(tmp_path))
    captions = ["a red circle above a blue square.", "A big star."]
    for c in captions:
        assert ours(c)["input_ids"] == ref(c)["input_ids"]
    ids, mask = text.encode_captions(ours, captions, max_length=20)
    eos = ref.eos_token_id
    for row, c in enumerate(captions):
        want = ref(c, add_special_tokens=False)["input_ids"] + [eos]
        assert ids[row, :len(want)].tolist() == want
        assert mask[row].tolist() == [1] * len(want) + [0] * (20 - len(want))
    with pytest.raises(ValueError, match="caption 1 is empty"):
        text.encode_captions(ours, ["ok", "  "], 20)
    with pytest.raises(ValueError, match="over max_length=3"):
        text.encode_captions(ours, captions, 3)
    assert text.encode_captions(ours, captions, 3, truncate=True)[1].sum() == 6


def test_tokenizer_missing_files(tmp_path):
    with pytest.raises(FileNotFoundError, match="no tokenizer.json"):
        text.load_tokenizer(str(tmp_path))
