"""LAFITE's text-to-image objective and training details (drboog/Lafite training/loss.py,
training/training_loop.py; the C^3 copy's dataset.py / loss.py) against torch
transcriptions of the official functions, written here, on random inputs."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from c3_jax import c3
from c3_jax.models import stylegan2 as sg
from c3_jax.train import generation

RTOL = 1e-5


def _rng(seed=0):
    return np.random.default_rng(seed)


def _j(x):
    return jnp.asarray(x, jnp.float32)


# ---------------------------------------------------------------------------
# Transcriptions of the official functions (torch)


def official_contra_loss(temp, mat1, mat2, lam):
    """``StyleGAN2Loss.contra_loss`` (training/loss.py)."""
    sim = torch.cosine_similarity(mat1.unsqueeze(1), mat2.unsqueeze(0), dim=-1)
    if temp > 0.:
        sim = torch.exp(sim / temp)
        sim1 = torch.diagonal(F.softmax(sim, dim=1)) * temp
        sim2 = torch.diagonal(F.softmax(sim, dim=0)) * temp
        if 0. < lam < 1.:
            return lam * torch.log(sim1) + (1. - lam) * torch.log(sim2)
        elif lam == 0:
            return torch.log(sim2)
        else:
            return torch.log(sim1)
    return torch.diagonal(sim)


def official_g_main(gen_logits, gen_d_fts, img_fts_gen_full, txt_fts, temp, lam, itc, itd):
    """The Gmain loss as accumulate_gradients forms it (before ``.mean()``), then its mean."""
    loss = F.softplus(-gen_logits)
    img_fts_gen_full = img_fts_gen_full / img_fts_gen_full.norm(dim=-1, keepdim=True)
    if itc > 0.:
        loss = loss - itc * official_contra_loss(temp, img_fts_gen_full, txt_fts, lam).mean()
    if itd > 0.:
        loss = loss - itd * official_contra_loss(temp, gen_d_fts, txt_fts, lam).mean()
    return loss.mean()


def official_d_main(gen_logits, real_logits, real_d_fts, txt_fts, temp, lam, itd):
    """Dgen + Dreal, each ``.mean()``-ed as their backward passes are."""
    loss_dgen = F.softplus(gen_logits)
    loss_dreal = F.softplus(-real_logits)
    if itd > 0.:
        loss_dreal = loss_dreal - itd * official_contra_loss(temp, real_d_fts, txt_fts,
                                                             lam).mean()
    return loss_dgen.mean() + loss_dreal.mean()


# ---------------------------------------------------------------------------
# The contrastive terms and the losses


@pytest.mark.parametrize("temp,lam", [(0.5, 0.0), (0.5, 0.3), (0.5, 1.0), (0.2, 2.0),
                                      (0.0, 0.0)])
def test_contra_loss_matches_the_official_function(temp, lam):
    rng = _rng(1)
    a, b = rng.normal(size=(7, 5)), rng.normal(size=(7, 5)) * 3.0
    want = official_contra_loss(temp, torch.tensor(a), torch.tensor(b), lam).numpy()
    got = np.asarray(generation.contra_loss(temp, _j(a), _j(b), lam))
    np.testing.assert_allclose(got, want, rtol=RTOL, atol=1e-6)


@pytest.mark.parametrize("lam", [0.0, 0.5])
def test_generator_and_discriminator_losses_match_the_official_ones(lam):
    rng = _rng(2)
    b, d = 6, 5
    logits, real_logits = rng.normal(size=b), rng.normal(size=b)
    d_fts, clip_fts, real_fts = (rng.normal(size=(b, d)) for _ in range(3))
    cond = rng.normal(size=(b, d))
    cond /= np.linalg.norm(cond, axis=1, keepdims=True)
    cfg = generation.StepConfig(batch_size=b, itd_weight=10.0, itc_weight=7.0,
                                temperature=0.5, contra_lam=lam)
    t = lambda x: torch.tensor(x)
    unit = clip_fts / np.linalg.norm(clip_fts, axis=1, keepdims=True)
    g_loss, _ = generation.g_main_objective(cfg, _j(logits), _j(d_fts), _j(unit), _j(cond))
    want = official_g_main(t(logits), t(d_fts), t(clip_fts), t(cond), 0.5, lam, 7.0, 10.0)
    np.testing.assert_allclose(float(g_loss), float(want), rtol=RTOL)
    d_loss, _ = generation.d_main_objective(cfg, _j(logits), _j(real_logits), _j(real_fts),
                                            _j(cond))
    want = official_d_main(t(logits), t(real_logits), t(real_fts), t(cond), 0.5, lam, 10.0)
    np.testing.assert_allclose(float(d_loss), float(want), rtol=RTOL)


@pytest.mark.slow
def test_discriminator_logit_adds_the_batch_summed_condition_term():
    """DiscriminatorEpilogue: x = out(fc) + (d_fts * fts).sum(), the sum over the whole
    batch (the same scalar for every example); 'sample' keeps each example's own."""
    cfg = sg.GANConfig(resolution=8, cond_dim=6, z_dim=8, w_dim=8, mapping_layers=2,
                       cond_hidden=8, channel_base=64, channel_max=8)
    rng = _rng(3)
    img = _j(rng.uniform(-1, 1, size=(4, 8, 8, 3)))
    c1, c2 = _j(rng.normal(size=(4, 6))), _j(rng.normal(size=(4, 6)))
    disc = sg.Discriminator(cfg)
    params = disc.init(jax.random.key(0), img, c1)
    l1, f1 = disc.apply(params, img, c1)
    l2, f2 = disc.apply(params, img, c2)
    np.testing.assert_allclose(np.asarray(f1), np.asarray(f2))  # features ignore c
    want = np.sum(np.asarray(f1) * (np.asarray(c1) - np.asarray(c2)))  # one scalar
    np.testing.assert_allclose(np.asarray(l1 - l2), np.full(4, want), rtol=1e-4, atol=1e-5)
    per = sg.Discriminator(sg.GANConfig(**{**cfg.__dict__, "d_cond_sum": "sample"}))
    p1, _ = per.apply(params, img, c1)
    p2, _ = per.apply(params, img, c2)
    want = np.sum(np.asarray(f1) * (np.asarray(c1) - np.asarray(c2)), -1)
    np.testing.assert_allclose(np.asarray(p1 - p2), want, rtol=1e-4, atol=1e-5)


# ---------------------------------------------------------------------------
# Regularization, optimizer, EMA, style mixing


def test_path_length_objective_matches_the_official_one():
    rng = _rng(4)
    grads, pl_mean, decay = rng.normal(size=(3, 6, 5)), 0.7, 0.01
    g = torch.tensor(grads, requires_grad=True)
    lengths = g.square().sum(2).mean(1).sqrt()  # StyleGAN2Loss Gpl
    mean = torch.tensor(pl_mean, dtype=torch.float64).lerp(lengths.mean(), decay)
    penalty = (lengths - mean).square()
    (penalty * 2.0).mean().backward()
    got, new_mean = generation.pl_objective(_j(grads), jnp.float32(pl_mean), decay)
    np.testing.assert_allclose(np.asarray(got), penalty.detach().numpy(), rtol=RTOL)
    np.testing.assert_allclose(float(new_mean), float(mean.detach()), rtol=RTOL)
    # The gradient flows through the running mean too, as in torch.
    grad = jax.grad(lambda x: (generation.pl_objective(x, jnp.float32(pl_mean), decay)[0]
                               * 2.0).mean())(_j(grads))
    np.testing.assert_allclose(np.asarray(grad), g.grad.numpy(), rtol=1e-4, atol=1e-6)


@pytest.mark.slow
def test_path_length_gradient_is_the_synthesis_vjp():
    cfg = sg.GANConfig(resolution=8, cond_dim=6, z_dim=8, w_dim=8, mapping_layers=2,
                       cond_hidden=8, channel_base=64, channel_max=8)
    params = sg.Generator(cfg).init(jax.random.key(0), jnp.zeros((2, 8)), jnp.zeros((2, 6)))
    params = params["params"]
    rng = _rng(5)
    ws, cond = _j(rng.normal(size=(2, cfg.num_ws, 8))), _j(rng.normal(size=(2, 6)))
    key = jax.random.key(3)
    penalty, mean = generation.path_length_penalty(cfg, params, ws, cond, key, jnp.float32(0),
                                                   0.5)
    k_noise, k_img = jax.random.split(key)
    img, vjp = jax.vjp(lambda w: sg.synthesis_apply(cfg, params, w, cond, k_img), ws)
    y = np.asarray(jax.random.normal(k_noise, img.shape)) / 8.0
    (g,) = vjp(_j(y))
    lengths = np.sqrt(np.mean(np.sum(np.asarray(g) ** 2, 2), 1))
    np.testing.assert_allclose(float(mean), 0.5 * lengths.mean(), rtol=1e-4)
    np.testing.assert_allclose(np.asarray(penalty), (lengths - 0.5 * lengths.mean()) ** 2,
                               rtol=1e-4)


def test_lazy_regularization_adam_matches_torch():
    """training_loop.py: lr * r and betas ** r with r = interval / (interval + 1), torch's
    Adam (eps 1e-8), over a few steps of random gradients."""
    class Cfg(dict):
        __getattr__ = dict.__getitem__
    config = Cfg(generator=Cfg(lr=2.5e-3, beta1=0.0, beta2=0.99))
    rng = _rng(6)
    p0 = rng.normal(size=5)
    grads = rng.normal(size=(4, 5))
    for interval in (4, 16):
        r = interval / (interval + 1)
        tp = torch.tensor(p0, requires_grad=True)
        opt = torch.optim.Adam([tp], lr=2.5e-3 * r, betas=[0.0 ** r, 0.99 ** r], eps=1e-8)
        tx = generation.optimizer(config, interval)
        p, state = _j(p0), None
        state = tx.init(p)
        for g in grads:
            opt.zero_grad()
            tp.grad = torch.tensor(g)
            opt.step()
            upd, state = tx.update(_j(g), state, p)
            p = p + upd
        np.testing.assert_allclose(np.asarray(p), tp.detach().numpy(), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("step,rampup", [(0, 0.05), (3, 0.05), (5000, 0.05), (7, 0.0)])
def test_ema_beta_matches_the_training_loop(step, rampup):
    batch, ema_kimg = 16, 16 * 10 / 32
    cur_nimg = step * batch  # images before this step (cur_nimg grows after the EMA)
    ema_nimg = ema_kimg * 1000
    if rampup:
        ema_nimg = min(ema_nimg, cur_nimg * rampup)
    want = 0.5 ** (batch / max(ema_nimg, 1e-8))
    cfg = generation.StepConfig(batch_size=batch, ema_kimg=ema_kimg, ema_rampup=rampup)
    np.testing.assert_allclose(float(generation.ema_beta(cfg, jnp.asarray(step))), want,
                               rtol=1e-5)


def test_init_from_turns_the_ema_rampup_off():
    from c3_jax.experiments import t2i
    config = t2i.default_config()
    assert generation.StepConfig.from_config(config).ema_rampup == 0.05
    config.generator.init_from = "lafite.pkl"
    assert generation.StepConfig.from_config(config).ema_rampup == 0.0


@pytest.mark.parametrize("cutoff", [1, 3, 4])
def test_style_mixing_matches_run_g(cutoff):
    rng = _rng(7)
    ws, new = rng.normal(size=(2, 4, 3)), rng.normal(size=(2, 4, 3))
    t = torch.tensor(ws).clone()
    t[:, cutoff:] = torch.tensor(new)[:, cutoff:]
    got = sg.mix_ws(_j(ws), _j(new), jnp.asarray(cutoff))
    np.testing.assert_allclose(np.asarray(got), t.numpy(), rtol=1e-6)


@pytest.mark.slow
def test_generator_ws_mix_with_probability_and_cutoff_range():
    cfg = sg.GANConfig(resolution=8, cond_dim=6, z_dim=8, w_dim=8, mapping_layers=2,
                       cond_hidden=8, channel_base=64, channel_max=8)
    params = sg.Generator(cfg).init(jax.random.key(0), jnp.zeros((2, 8)), jnp.zeros((2, 6)))
    z = _j(_rng(8).normal(size=(2, 8)))
    fn = jax.jit(lambda k: generation.generator_ws(cfg, params["params"], z, k, 0.9))
    plain = np.asarray(generation.generator_ws(cfg, params["params"], z, jax.random.key(0), 0))
    cutoffs = []
    for i in range(200):
        ws = np.asarray(fn(jax.random.key(i)))
        same = np.all(np.isclose(ws, plain), axis=(0, 2))
        cutoffs.append(int(np.argmin(same)) if not same.all() else cfg.num_ws)
        assert same[:cutoffs[-1]].all() and not same[cutoffs[-1]:].any()
    cutoffs = np.asarray(cutoffs)
    assert cutoffs.min() >= 1
    assert 0.8 < np.mean(cutoffs < cfg.num_ws) < 0.97  # mixed with probability 0.9


# ---------------------------------------------------------------------------
# The itc term's preprocessing and the condition


@pytest.mark.parametrize("top,left,cut", [(0, 0, 8), (3, 5, 9), (2, 0, 13), (6, 1, 10)])
def test_bicubic_crop_resize_matches_torch_interpolate(top, left, cut):
    x = _rng(9).uniform(-1, 1, size=(2, 3, 16, 16))
    want = F.interpolate(torch.tensor(x)[:, :, top:top + cut, left:left + cut], (12, 12),
                         mode="bicubic", align_corners=False).numpy()
    rows = generation.bicubic_matrix(12, jnp.asarray(top), jnp.asarray(cut), 16)
    cols = generation.bicubic_matrix(12, jnp.asarray(left), jnp.asarray(cut), 16)
    got = np.einsum("oh,bchw,pw->bcop", np.asarray(rows), x, np.asarray(cols))
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def test_full_preprocess_crops_or_pads_as_lafite():
    x = _j(_rng(10).uniform(-1, 1, size=(2, 16, 16, 3)))
    out = np.asarray(generation.full_preprocess(jax.random.key(0), x, 12))
    assert out.shape == (2, 12, 12, 3)
    small = np.asarray(generation.full_preprocess(jax.random.key(1), x, 24))
    assert small.shape == (2, 24, 24, 3)
    # Padded with 1 (white) at an offset in [0, 8): the image appears once, intact.
    inside = np.argwhere(np.any(small[0] != 1.0, axis=-1))
    top, left = inside.min(0)
    assert 0 <= top < 8 and 0 <= left < 8
    np.testing.assert_array_equal(small[:, top:top + 16, left:left + 16], np.asarray(x))


def test_c3_condition_subtracts_the_image_mean_twice_as_the_c3_code():
    """C^3 image_generation: dataset.py gives norm(norm(i) - mu); loss.py normalizes,
    subtracts mu again, adds noise_level * n (--add_noise), normalizes."""
    rng = _rng(11)
    d = 8
    e = rng.normal(size=(5, d))
    mu = rng.normal(size=d) * 0.1
    m = c3.Moments(mu.astype(np.float32), np.ones(d, np.float32))
    s = {**c3.member_settings("c3", 0.3, m, m), "twice": np.float32(1.0)}
    key = jax.random.key(4)
    noise = np.asarray(c3.member_noise(s, key, e.shape))
    unit = lambda x: x / np.linalg.norm(x, axis=-1, keepdims=True)
    a = unit(unit(e) - mu)  # dataset.py
    b = unit(a) - mu  # loss.py, norm_after_remove_mean False
    want = unit(b + noise)
    got = np.asarray(generation.train_condition(s, _j(e), key))
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    once = np.asarray(generation.train_condition({**s, "twice": np.float32(0.0)}, _j(e), key))
    np.testing.assert_allclose(once, unit(unit(e) - mu + noise), rtol=1e-5, atol=1e-6)
    assert generation.collapse_twice("c3", True) == 1 and generation.collapse_twice("c1", True) == 0
