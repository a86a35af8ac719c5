"""The COCO and ImageBind captioning configs against the official C^3 code's settings
(yuhui-zh15/C3 image_captioning: run.py, src/datasets/dataset_coco.py, the stage-1 and
stage-2 yaml files and scripts), transcribed here in numpy."""
import numpy as np
import pytest

from c3_jax import c3
from c3_jax.train import captioning


def official_linear_schedule_with_warmup(lr, warmup, total, step):
    """transformers.get_linear_schedule_with_warmup's multiplier times lr, as the official
    LightningModule steps it (once per optimizer step)."""
    if step < warmup:
        return lr * step / max(1, warmup)
    return lr * max(0.0, (total - step) / max(1, total - warmup))


def official_stage2_train_prefix(embed, mean, remove_mean=True):
    """dataset_coco.ClipCocoDataset.__getitem__ under the stage-2 flags
    (--normalize_prefix [--remove_mean]; no --add_gaussian_noise, no --re_normalize_prefix)."""
    p = embed / np.linalg.norm(embed, axis=-1, keepdims=True)
    return p - mean if remove_mean else p


def moments(x):
    n = x / np.linalg.norm(x, axis=1, keepdims=True)
    return c3.Moments(n.mean(0), n.std(0))


def test_finetune_is_the_official_stage_2():
    from configs import coco_caption
    for variant in ("finetune", "c1,finetune", "c3_calibrated,finetune"):
        c = coco_caption.get_config(variant)
        m, t = c.method, c.captioner
        assert m.noise_sigma == 0.0 and not m.renormalize and not m.sigma_from_calibration
        assert t.warmup_scales_with_fraction and c.data.train_fraction == 0.01
        assert (t.lr, t.batch_size, t.num_epochs, t.warmup_steps) == (2e-5, 40, 10, 5000)
        assert c.data.train_field == "image_embedding"  # the paper; the official code: text


@pytest.mark.parametrize("fraction", [0.01, 0.05, 0.25, 1.0])
def test_finetune_warmup_scales_with_the_fraction_as_run_py(fraction):
    from configs import coco_caption
    c = coco_caption.get_config("finetune")
    c.data.train_fraction = fraction
    total = 6000  # longer than every warmup here (ours caps warmup at the run's length)
    schedule = captioning.schedule_of(c, total)
    for step in (0, 1, 10, 49, 50, 51, 100, 500, 1249, 1250, 3000, 5999):
        want = official_linear_schedule_with_warmup(c.captioner.lr, int(5000 * fraction), total,
                                                    step)
        np.testing.assert_allclose(float(schedule(step)), want, rtol=1e-5, atol=1e-12)
    if fraction == 0.01:  # a 1 % run decays after 50 updates instead of staying in warmup
        assert float(schedule(500)) < float(schedule(50))


@pytest.mark.parametrize("variant,collapses", [("c1", False), ("c2_collapse", True),
                                               ("c3", True)])
def test_finetune_transform_is_the_official_stage_2_prefix(variant, collapses):
    import jax
    from configs import coco_caption
    c = coco_caption.get_config(f"{variant},finetune")
    rng = np.random.default_rng(0)
    train, test = rng.normal(size=(64, 16)) + 2.0, rng.normal(size=(8, 16)) - 1.0
    m_train, m_eval = moments(train), moments(rng.normal(size=(64, 16)) - 1.0)
    s = c3.member_settings(c.method.variant, c.method.noise_sigma, m_train, m_eval, None,
                           c.method.renormalize)
    got = np.asarray(c3.member_train(s, train[:8].astype(np.float32), jax.random.key(1)))
    want = official_stage2_train_prefix(train[:8], m_train.mean, collapses)
    np.testing.assert_allclose(got, want, atol=1e-6)
    got = np.asarray(c3.member_eval(s, test.astype(np.float32)))
    want = official_stage2_train_prefix(test, m_eval.mean, collapses)  # get_item_per_image
    np.testing.assert_allclose(got, want, atol=1e-6)


def test_imagebind_is_the_official_imagebind_config():
    from configs import imagebind_caption
    c = imagebind_caption.get_config("audio")
    t = c.captioner
    assert (t.mapper, t.prefix_length, t.clip_length) == ("mlp", 10, 10)
    assert (t.lr, t.lr_schedule, t.batch_size, t.num_epochs) == (1e-3, "constant", 64, 20)
    np.testing.assert_allclose(c.method.noise_sigma, np.sqrt(0.016))  # run.py's default level
    assert c.method.renormalize and c.method.variant == "c3" and t.dtype == "float32"
    schedule = captioning.schedule_of(c, 100)
    assert all(float(schedule(i)) == pytest.approx(1e-3) for i in (0, 1, 50, 99))


def test_stage_1_coco_config_is_the_official_one():
    from configs import coco_caption
    c = coco_caption.get_config("")
    t = c.captioner
    assert (t.mapper, t.prefix_length, t.clip_length, t.freeze_gpt) == ("mlp", 10, 10, False)
    assert (t.lr, t.lr_schedule, t.warmup_steps, t.batch_size, t.num_epochs) == (
        2e-5, "warmup_linear_decay", 5000, 40, 10)
    np.testing.assert_allclose(c.method.noise_sigma, np.sqrt(0.016))
    assert c.method.renormalize and not t.warmup_scales_with_fraction


def test_transformer_variant_is_clipcaps_transformer_recipe():
    from configs import coco_caption
    t = coco_caption.get_config("transformer").captioner
    assert (t.mapper, t.prefix_length, t.clip_length, t.mapper_depth, t.freeze_gpt) == (
        "transformer", 40, 40, 8, True)
