"""Flax CLIP and GPT-2 against the PyTorch models of transformers, on tiny checkpoints."""
import json

import jax
import numpy as np
import pytest
import torch
import transformers

from c3_jax.models import clip, gpt2
from conftest import tiny_gpt2

EOS = 98


def _features(out):
    """transformers returns a tensor (4.x) or an output with pooler_output (5.x)."""
    return out if isinstance(out, torch.Tensor) else out.pooler_output


def _tiny_clip(path, act="quick_gelu", eos=EOS, safetensors=True):
    config = transformers.CLIPConfig(
        text_config=dict(vocab_size=99, hidden_size=32, intermediate_size=37, num_attention_heads=4,
                         num_hidden_layers=2, max_position_embeddings=16, hidden_act=act,
                         eos_token_id=eos),
        vision_config=dict(hidden_size=48, intermediate_size=40, num_attention_heads=4,
                           num_hidden_layers=2, image_size=30, patch_size=6, hidden_act=act),
        projection_dim=24)
    torch.manual_seed(0)
    model = transformers.CLIPModel(config).eval()
    model.save_pretrained(path, safe_serialization=safetensors)
    return model


def _text_batch(rng, eos=EOS, length=12):
    ids = rng.integers(0, 90, size=(3, length))
    mask = np.ones_like(ids)
    for row, end in enumerate((11, 6, 3)):
        ids[row, end] = eos
        mask[row, end + 1:] = 0
    return ids, mask


@pytest.mark.parametrize("act,safetensors", [("quick_gelu", True), ("gelu", False)])
@pytest.mark.slow
def test_clip_matches_transformers(tmp_path, act, safetensors):
    ref = _tiny_clip(tmp_path, act, safetensors=safetensors)
    module, params = clip.from_pretrained(str(tmp_path))
    rng = np.random.default_rng(0)
    pixels = rng.normal(size=(2, 3, 30, 30)).astype(np.float32)
    ids, mask = _text_batch(rng)
    with torch.no_grad():
        want_img = _features(ref.get_image_features(pixel_values=torch.tensor(pixels))).numpy()
        want_txt = _features(ref.get_text_features(input_ids=torch.tensor(ids),
                                                   attention_mask=torch.tensor(mask))).numpy()
    got_img = module.apply({"params": params}, pixels, method="encode_image")
    got_txt = module.apply({"params": params}, ids, mask, method="encode_text")
    np.testing.assert_allclose(got_img, want_img, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(got_txt, want_txt, rtol=1e-4, atol=1e-5)


def test_clip_legacy_eos_pools_at_highest_id(tmp_path):
    ref = _tiny_clip(tmp_path, eos=2)
    module, params = clip.from_pretrained(str(tmp_path))
    ids, mask = _text_batch(np.random.default_rng(1), eos=98)  # 98 is the highest id per row
    with torch.no_grad():
        want = _features(ref.get_text_features(input_ids=torch.tensor(ids),
                                               attention_mask=torch.tensor(mask))).numpy()
    got = module.apply({"params": params}, ids, mask, method="encode_text")
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("name,safetensors", [("gelu_new", True), ("gelu_new", False),
                                              ("gelu_inner", True)])
def test_gpt2_matches_transformers(tmp_path, name, safetensors):
    ref = tiny_gpt2(tmp_path, safetensors, name)
    module, params = gpt2.from_pretrained(str(tmp_path))
    ids = np.random.default_rng(2).integers(0, 99, size=(2, 9))
    with torch.no_grad():
        want = ref(input_ids=torch.tensor(ids)).logits.numpy()
    np.testing.assert_allclose(module.apply({"params": params}, ids), want, rtol=1e-4, atol=1e-4)


def test_gpt2_prefix_embeddings_with_padding(tmp_path):
    ref = tiny_gpt2(tmp_path)
    module, params = gpt2.from_pretrained(str(tmp_path))
    embeds = np.random.default_rng(3).normal(size=(2, 7, 32)).astype(np.float32)
    mask = np.array([[1] * 7, [1] * 4 + [0] * 3])
    with torch.no_grad():
        want = ref(inputs_embeds=torch.tensor(embeds), attention_mask=torch.tensor(mask)).logits
    got = module.apply({"params": params}, inputs_embeds=embeds, attention_mask=mask)
    valid = mask.astype(bool)
    np.testing.assert_allclose(np.asarray(got)[valid], want.numpy()[valid], rtol=1e-4, atol=1e-4)


def test_gpt2_prefix_before_token_ids_matches_transformers(tmp_path):
    ref = tiny_gpt2(tmp_path)
    module, params = gpt2.from_pretrained(str(tmp_path))
    rng = np.random.default_rng(7)
    prefix = rng.normal(size=(2, 3, 32)).astype(np.float32)
    ids = rng.integers(0, 99, size=(2, 6))
    mask = np.array([[1] * 9, [1] * 7 + [0] * 2])
    with torch.no_grad():
        tokens = ref.transformer.wte(torch.tensor(ids))
        want = ref(inputs_embeds=torch.cat([torch.tensor(prefix), tokens], 1),
                   attention_mask=torch.tensor(mask)).logits.numpy()
    got = np.asarray(module.apply({"params": params}, ids, attention_mask=mask, prefix=prefix))
    valid = mask.astype(bool)
    np.testing.assert_allclose(got[valid], want[valid], rtol=1e-4, atol=1e-4)


def test_checkpoint_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        clip.from_pretrained(str(tmp_path / "nowhere"))
    _tiny_clip(tmp_path / "clip")
    config_file = tmp_path / "clip" / "config.json"
    config = json.loads(config_file.read_text())
    config["projection_dim"] = 20  # the weights say 24
    config_file.write_text(json.dumps(config))
    with pytest.raises(ValueError, match="wrong shapes.*visual_projection"):
        clip.from_pretrained(str(tmp_path / "clip"))
    tiny_gpt2(tmp_path / "gpt2")
    with pytest.raises(ValueError, match="not a CLIPModel checkpoint"):
        clip.from_pretrained(str(tmp_path / "gpt2"))
    (tmp_path / "gpt2" / "model.safetensors").unlink()
    with pytest.raises(FileNotFoundError, match="no model.safetensors or pytorch_model.bin"):
        gpt2.from_pretrained(str(tmp_path / "gpt2"))


def test_bfloat16_compute_keeps_float32_params(tmp_path):
    tiny_gpt2(tmp_path)
    module, params = gpt2.from_pretrained(str(tmp_path))
    module16, _ = gpt2.from_pretrained(str(tmp_path), dtype=jax.numpy.bfloat16)
    ids = np.random.default_rng(6).integers(0, 99, size=(2, 9))
    full = np.asarray(module.apply({"params": params}, ids))
    half = np.asarray(module16.apply({"params": params}, ids))
    assert all(p.dtype == np.float32 for p in jax.tree.leaves(params))
    assert np.abs(half - full).max() < 0.05 * np.abs(full).max()
    assert (half.argmax(-1) == full.argmax(-1)).mean() > 0.9


def test_frozen_features_of_equal_models_are_traced_once(monkeypatch):
    """connect.encode's program is a value of the model (``connect.Features``): a second
    model of the same config, e.g. a rerun's, reuses the first one's trace."""
    from c3_jax.train import connect
    from conftest import count_calls
    config = clip.CLIPConfig(text=clip.Tower(16, 1, 2, 32), vision=clip.Tower(16, 1, 2, 32),
                             projection_dim=8, vocab_size=20, max_positions=6, eos_token_id=1,
                             image_size=16, patch_size=8)
    images = np.random.default_rng(0).integers(0, 256, (5, 16, 16, 3), dtype=np.uint8)
    params = clip.CLIP(config).init(jax.random.PRNGKey(0), connect.pixels(images[:1]),
                                    method="encode_image")["params"]
    traces = count_calls(monkeypatch, connect, "pixels")
    first = connect.encode(clip.CLIP(config), params, images=images)
    again = connect.encode(clip.CLIP(config), params, images=images)
    assert len(traces) == 1 and first.shape == (5, 8)
    np.testing.assert_array_equal(again, first)
