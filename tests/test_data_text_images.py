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
@pytest.mark.slow
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
    assert type(ours) is type(ref)  # the generic class, loaded without AutoTokenizer
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


def _byte_chars():
    """The 256 printable characters byte-level BPE vocabularies use for bytes."""
    printable = set(range(33, 127)) | set(range(161, 173)) | set(range(174, 256))
    out, extra = [], 0
    for b in range(256):
        out.append(chr(b) if b in printable else chr(256 + extra))
        extra += b not in printable
    return out


def _tiny_clip_tokenizer_files(path):
    """vocab.json + merges.txt in CLIP's format (words end in '</w>'), no tokenizer.json."""
    import json
    chars = _byte_chars()
    merges = ["r e", "re d</w>", "c i", "ci r", "cir c", "circ l", "circl e</w>", "a </w>"]
    vocab = chars + [c + "</w>" for c in chars] + [m.replace(" ", "") for m in merges]
    vocab += ["</w>", "<|startoftext|>", "<|endoftext|>"]
    path.mkdir(exist_ok=True)
    (path / "vocab.json").write_text(json.dumps({t: i for i, t in enumerate(vocab)}))
    (path / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n")
    (path / "tokenizer_config.json").write_text(json.dumps({
        "tokenizer_class": "CLIPTokenizer", "model_max_length": 77,
        "bos_token": "<|startoftext|>", "eos_token": "<|endoftext|>",
        "unk_token": "<|endoftext|>", "pad_token": "<|endoftext|>"}))


def test_clip_tokenizer_from_vocab_and_merges(tmp_path):
    _tiny_clip_tokenizer_files(tmp_path / "clip")
    ours = text.load_tokenizer(str(tmp_path / "clip"))
    ref = transformers.CLIPTokenizer.from_pretrained(str(tmp_path / "clip"))
    for caption in ["a red circle", "A RED  circle!", "circles are red"]:
        assert ours(caption)["input_ids"] == ref(caption)["input_ids"]
    got = ours(["a red circle", "red"], padding="max_length", max_length=8)
    want = ref(["a red circle", "red"], padding="max_length", max_length=8)
    assert got["input_ids"] == want["input_ids"]
    assert got["attention_mask"] == want["attention_mask"]
    assert ours("a red circle")["input_ids"][-1] == ref.eos_token_id


def test_word_tokenizer_round_trips_captions(tmp_path):
    from c3_jax.data.text import build_word_tokenizer, encode_captions, load_tokenizer
    captions = ["A red circle on the left.", "a blue square , above a star ."]
    build_word_tokenizer(captions, str(tmp_path / "tok"))
    tok = load_tokenizer(str(tmp_path / "tok"))
    assert tok.convert_ids_to_tokens([0, 1, 2]) == ["<pad>", "<eos>", "<unk>"]
    ids, mask = encode_captions(tok, captions, max_length=10)
    assert tok.decode(ids[0][mask[0] == 1], skip_special_tokens=True) == "a red circle on the left ."
    assert ids[0].tolist()[:8] == tok("a red circle on the left.")["input_ids"] + [1]
    assert tok("a green circle")["input_ids"][1] == tok.unk_token_id
