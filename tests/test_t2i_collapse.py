"""Where Collapse enters text-to-image, against numpy/torch transcriptions of the official
C^3 code (yuhui-zh15/C3 image_generation: training/dataset.py ``__getitem__``,
training/loss.py ``StyleGAN2Loss.accumulate_gradients``): the training condition, the
condition at generation time, and the itc term's image side (uncollapsed by default)."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from c3_jax import c3
from c3_jax.train import generation
from c3_jax.world import t2i
from test_lafite import official_contra_loss  # StyleGAN2Loss.contra_loss, transcribed

D = 8


def _unit(x):
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def _settings(method: str, mu_img, mu_txt, sigma: float = 0.2) -> dict:
    train = c3.Moments(mu_img.astype(np.float32), np.ones(D, np.float32))
    test = c3.Moments(mu_txt.astype(np.float32), np.ones(D, np.float32))
    return {**c3.member_settings(method, sigma, train, test),
            "twice": generation.collapse_twice(method, True)}


def _means(seed: int = 0):
    rng = np.random.default_rng(seed)
    return rng.normal(size=D) * 0.2, rng.normal(size=D) * 0.2


def official_train_condition(img, mu_img, noise):
    """dataset.py (ratio 1: the paired branch, --remove_mean) then loss.py (--remove_mean,
    --add_noise, mixing_prob 1: the condition is the image feature): the image mean
    subtracted in both, renormalized in the first, noise added in the second."""
    img = _unit(img)
    img = _unit(img - mu_img)  # dataset.py
    img = _unit(img) - mu_img  # loss.py, norm_after_remove_mean False
    return _unit(img + noise)


def official_eval_condition(txt, mu_txt):
    """dataset.py's test split (--remove_mean): norm(norm(t) - text mean), then the
    metric's normalization (metrics/metric_utils.py)."""
    return _unit(_unit(_unit(txt) - mu_txt))


def official_itc(img_fts_gen_full, txt_fts_, temp, itc):
    """The itc part of Gmain: the generated image's CLIP embedding normalized, nothing
    subtracted, against the (collapsed) condition ``txt_fts_``."""
    g = img_fts_gen_full / img_fts_gen_full.norm(dim=-1, keepdim=True)
    return -itc * official_contra_loss(temp, g, txt_fts_, 0.0).mean()


def test_training_condition_is_the_c3_codes_for_c3_and_c2_collapse():
    mu_img, mu_txt = _means(1)
    e = np.random.default_rng(2).normal(size=(6, D))
    key = jax.random.key(3)
    for method, sigma in (("c3", 0.2), ("c2_collapse", 0.0)):
        s = _settings(method, mu_img, mu_txt, sigma)
        noise = np.asarray(c3.member_noise(s, key, e.shape))
        got = np.asarray(generation.train_condition(s, jnp.asarray(e, jnp.float32), key))
        np.testing.assert_allclose(got, official_train_condition(e, mu_img, noise),
                                   rtol=1e-5, atol=1e-6)


def test_generation_condition_subtracts_the_text_mean_once():
    mu_img, mu_txt = _means(4)
    t = np.random.default_rng(5).normal(size=(6, D))
    got = np.asarray(c3.member_eval(_settings("c3", mu_img, mu_txt), jnp.asarray(t, jnp.float32)))
    np.testing.assert_allclose(got, official_eval_condition(t, mu_txt), rtol=1e-5, atol=1e-6)


def test_itc_term_uses_the_uncollapsed_clip_embedding_by_default():
    mu_img, mu_txt = _means(6)
    rng = np.random.default_rng(7)
    s = _settings("c3", mu_img, mu_txt)
    e, gen = rng.normal(size=(6, D)), rng.normal(size=(6, D)) * 3.0
    key = jax.random.key(8)
    cond = generation.train_condition(s, jnp.asarray(e, jnp.float32), key)
    noise = np.asarray(c3.member_noise(s, key, e.shape))
    want = official_itc(torch.tensor(gen), torch.tensor(official_train_condition(e, mu_img, noise)),
                        0.5, 30.0)
    cfg = generation.StepConfig(batch_size=6, itc_weight=30.0, itd_weight=0.0)
    clip = generation.itc_features("clip", s)(jnp.asarray(gen, jnp.float32))
    zeros = jnp.zeros((6,))
    _, metrics = generation.g_main_objective(cfg, zeros, jnp.ones((6, D)), clip, cond)
    np.testing.assert_allclose(30.0 * float(metrics["g_itc"]), float(want), rtol=1e-5)


def test_itc_condition_space_maps_a_real_embedding_onto_its_own_condition():
    mu_img, mu_txt = _means(9)
    e = np.random.default_rng(10).normal(size=(5, D))
    s = _settings("c3", mu_img, mu_txt)
    got = np.asarray(generation.itc_features("condition", s)(jnp.asarray(e, jnp.float32)))
    np.testing.assert_allclose(got, official_train_condition(e, mu_img, 0.0), rtol=1e-5,
                               atol=1e-6)
    c1 = _settings("c1", mu_img, mu_txt)
    x = jnp.asarray(e, jnp.float32)
    np.testing.assert_allclose(np.asarray(generation.itc_features("condition", c1)(x)),
                               np.asarray(generation.itc_features("clip", c1)(x)), rtol=1e-6)


def test_unknown_itc_space_is_one_clear_error():
    with pytest.raises(ValueError, match="itc_space='collapsed' must be one of"):
        generation.itc_features("collapsed", {})
    config = t2i.default_config(quick=True)
    config.generator.itc_space = "collapsed"
    with pytest.raises(ValueError, match="generator.itc_space"):
        t2i.check(config)
