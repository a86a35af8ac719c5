"""StyleGAN2 / LAFITE ops, models and the G+D train step against direct numpy/scipy
computations and closed forms."""
import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import signal

from c3_jax import c3
from c3_jax.models import stylegan2 as sg
from c3_jax.train import generation
from c3_jax import parallel
from c3_jax.experiments import t2i

TINY = sg.GANConfig(resolution=8, cond_dim=6, z_dim=8, w_dim=8, mapping_layers=2,
                    cond_hidden=8, channel_base=64, channel_max=8)
FIR = np.array([1.0, 3.0, 3.0, 1.0])
K2 = np.outer(FIR, FIR) / 64.0  # StyleGAN2's normalized 2-D [1,3,3,1] filter


def _rng(seed=0):
    return np.random.default_rng(seed)


# ---------------------------------------------------------------------------
# Ops


def _modulated_conv_reference(x, weight, style, demodulate):
    """Per example: its own modulated (and demodulated) weight, 'same' correlation."""
    b, h, w, cin = x.shape
    cout = weight.shape[-1]
    out = np.zeros((b, h, w, cout))
    for n in range(b):
        wb = weight * style[n][None, None, :, None]
        if demodulate:
            wb = wb / np.sqrt(np.sum(wb ** 2, axis=(0, 1, 2)) + 1e-8)
        for o in range(cout):
            for i in range(cin):
                out[n, :, :, o] += signal.correlate(x[n, :, :, i], wb[:, :, i, o], mode="same")
    return out


@pytest.mark.parametrize("kernel,demodulate", [(3, True), (3, False), (1, True), (1, False)])
def test_modulated_conv_matches_per_example_weights(kernel, demodulate):
    rng = _rng(1)
    x = rng.normal(size=(3, 6, 5, 4))
    weight = rng.normal(size=(kernel, kernel, 4, 5))
    style = rng.normal(size=(3, 4)) + 1.0
    got = sg.modulated_conv(jnp.asarray(x, jnp.float32), jnp.asarray(weight, jnp.float32),
                            jnp.asarray(style, jnp.float32), demodulate=demodulate)
    want = _modulated_conv_reference(x, weight, style, demodulate)
    np.testing.assert_allclose(np.asarray(got), want, rtol=1e-4, atol=1e-4)
    if demodulate:  # demodulation gives unit-norm weights: output scale independent of style
        scaled = sg.modulated_conv(jnp.asarray(x, jnp.float32), jnp.asarray(weight, jnp.float32),
                                   jnp.asarray(7.0 * style, jnp.float32))
        np.testing.assert_allclose(np.asarray(scaled), want, rtol=1e-4, atol=1e-4)


def _per_channel(fn, x):
    """Applies a 2-D numpy function to every (example, channel) plane of NHWC ``x``."""
    planes = [[fn(x[n, :, :, c]) for c in range(x.shape[-1])] for n in range(x.shape[0])]
    return np.stack([np.stack(p, -1) for p in planes])


def test_upsample2d_matches_upfirdn():
    x = _rng(2).normal(size=(2, 5, 6, 3))

    def ref(p):  # zero insertion, upfirdn padding (2 before, 1 after), filter with gain 4
        z = np.zeros((2 * p.shape[0], 2 * p.shape[1]))
        z[::2, ::2] = p
        return signal.convolve2d(np.pad(z, ((2, 1), (2, 1))), K2 * 4, mode="valid")

    got = np.asarray(sg.upsample2d(jnp.asarray(x, jnp.float32)))
    assert got.shape == (2, 10, 12, 3)
    np.testing.assert_allclose(got, _per_channel(ref, x), rtol=1e-5, atol=1e-5)
    # Gain 4 with zero insertion keeps a constant image constant in the interior.
    ones = np.asarray(sg.upsample2d(jnp.ones((1, 4, 4, 1))))
    np.testing.assert_allclose(ones[0, 2:-2, 2:-2, 0], 1.0, rtol=1e-6)


def test_downsample2d_matches_filter_then_subsample():
    x = _rng(3).normal(size=(2, 8, 6, 3))
    ref = lambda p: signal.convolve2d(np.pad(p, 1), K2, mode="valid")[::2, ::2]
    got = np.asarray(sg.downsample2d(jnp.asarray(x, jnp.float32)))
    assert got.shape == (2, 4, 3, 3)
    np.testing.assert_allclose(got, _per_channel(ref, x), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("pad", [0, 1, 2])
def test_blur_matches_filter(pad):
    x = _rng(4).normal(size=(2, 7, 6, 2))
    ref = lambda p: signal.convolve2d(np.pad(p, pad), K2, mode="valid")
    got = np.asarray(sg.blur(jnp.asarray(x, jnp.float32), pad))
    np.testing.assert_allclose(got, _per_channel(ref, x), rtol=1e-5, atol=1e-5)


def _minibatch_std_reference(x, group):
    b = x.shape[0]
    g = min(group, b)
    m = b // g
    std = np.zeros(m)
    for j in range(m):  # group j: examples j, j + m, j + 2m, ... (reshape to [g, m, ...])
        members = x[j::m]
        std[j] = np.mean(np.sqrt(np.var(members, axis=0) + 1e-8))
    extra = np.broadcast_to(std[np.arange(b) % m][:, None, None, None], x.shape[:3] + (1,))
    return np.concatenate([x, extra], -1)


@pytest.mark.parametrize("batch,group", [(8, 4), (6, 2), (2, 4), (4, 4)])
def test_minibatch_std_matches_numpy(batch, group):
    x = _rng(5).normal(size=(batch, 4, 4, 3)) * np.arange(1, batch + 1)[:, None, None, None]
    got = np.asarray(sg.minibatch_std(jnp.asarray(x, jnp.float32), group))
    np.testing.assert_allclose(got, _minibatch_std_reference(x, group), rtol=1e-5, atol=1e-5)


def test_minibatch_std_rejects_batch_not_multiple_of_group():
    with pytest.raises(ValueError, match="minibatch-std group"):
        sg.minibatch_std(jnp.zeros((6, 4, 4, 2)), 4)


# ---------------------------------------------------------------------------
# Models


@pytest.fixture(scope="module")
def tiny_models():
    gen, disc = sg.Generator(TINY), sg.Discriminator(TINY)
    z, c = jnp.zeros((2, TINY.z_dim)), jnp.zeros((2, TINY.cond_dim))
    img = jnp.zeros((2, TINY.resolution, TINY.resolution, 3))
    g = jax.jit(gen.init)(jax.random.key(0), z, c)["params"]
    d = jax.jit(disc.init)(jax.random.key(1), img, c)["params"]
    return gen, disc, g, d


@pytest.mark.slow
def test_generator_and_discriminator_shapes_and_conditioning(tiny_models):
    gen, disc, g, d = tiny_models
    rng, b, r = _rng(6), 4, TINY.resolution
    z = jnp.asarray(rng.normal(size=(b, TINY.z_dim)), jnp.float32)
    c1 = jnp.asarray(rng.normal(size=(b, TINY.cond_dim)), jnp.float32)
    c2 = jnp.asarray(rng.normal(size=(b, TINY.cond_dim)), jnp.float32)
    g_apply, d_apply = jax.jit(gen.apply), jax.jit(disc.apply)
    img1 = g_apply({"params": g}, z, c1)
    img2 = g_apply({"params": g}, z, c2)
    assert img1.shape == (b, r, r, 3)
    assert np.all(np.isfinite(np.asarray(img1)))
    assert np.abs(np.asarray(img1) - np.asarray(img2)).max() > 1e-4
    x = jnp.asarray(rng.uniform(-1, 1, size=(b, r, r, 3)), jnp.float32)
    logits1, feat1 = d_apply({"params": d}, x, c1)
    logits2, feat2 = d_apply({"params": d}, x, c2)
    assert logits1.shape == (b,) and feat1.shape == (b, TINY.cond_dim)
    assert np.abs(np.asarray(logits1) - np.asarray(logits2)).max() > 1e-4
    # The condition enters only through LAFITE's term: features do not move, and the logit
    # change is <features, c1 - c2> summed over the batch (test_lafite checks both forms).
    np.testing.assert_allclose(np.asarray(feat1), np.asarray(feat2), rtol=1e-6)
    want = np.sum(np.asarray(feat1) * (np.asarray(c1) - np.asarray(c2)))
    np.testing.assert_allclose(np.asarray(logits1 - logits2), np.full(b, want), rtol=1e-4,
                               atol=1e-5)


def test_noise_enters_only_through_noise_strength(tiny_models):
    gen, _, g, _ = tiny_models
    rng = _rng(7)
    z = jnp.asarray(rng.normal(size=(4, TINY.z_dim)), jnp.float32)
    c = jnp.asarray(rng.normal(size=(4, TINY.cond_dim)), jnp.float32)
    apply = jax.jit(gen.apply)
    run = lambda p, key: np.asarray(apply({"params": p}, z, c, key))
    k1, k2 = jax.random.key(1), jax.random.key(2)
    strengths = [v for path, v in jax.tree_util.tree_leaves_with_path(g)
                 if "noise_strength" in jax.tree_util.keystr(path)]
    assert len(strengths) == 1 + 2 * len(TINY.resolutions)
    assert all(float(s) == 0.0 for s in strengths)  # initialised to 0
    np.testing.assert_array_equal(run(g, k1), run(g, k2))
    np.testing.assert_array_equal(run(g, k1), run(g, None))
    noisy = jax.tree_util.tree_map_with_path(
        lambda path, v: jnp.ones_like(v) if "noise_strength" in jax.tree_util.keystr(path)
        else v, g)
    assert np.abs(run(noisy, k1) - run(noisy, k2)).max() > 1e-3
    np.testing.assert_array_equal(run(noisy, k1), run(noisy, k1))  # deterministic per key


@pytest.mark.slow
def test_orig_architecture_is_skip_without_the_lower_resolutions_rgb(tiny_models):
    """'orig' takes RGB from the last resolution only: its params lack the lower ToRGB
    layers, and 'skip' with those layers zeroed (their upsampled sum is then 0) draws the
    same images from the shared params."""
    gen, _, params, _ = tiny_models
    g = params["synthesis"]
    orig = sg.Generator(dataclasses.replace(TINY, architecture="orig"))
    rng = _rng(9)
    z = jnp.asarray(rng.normal(size=(4, TINY.z_dim)), jnp.float32)
    c = jnp.asarray(rng.normal(size=(4, TINY.cond_dim)), jnp.float32)
    last = f"b{TINY.resolution}_torgb"
    lower = [k for k in g if k.endswith("_torgb") and k != last]
    assert lower  # b4_torgb at least
    o = orig.init(jax.random.key(0), z, c)["params"]["synthesis"]
    assert sorted(o) == sorted(k for k in g if k not in lower)
    zeroed = {k: jax.tree.map(jnp.zeros_like, v) if k in lower else v for k, v in g.items()}
    with_synthesis = lambda s: {"mapping": params["mapping"], "synthesis": s}
    skip_img = np.asarray(gen.apply({"params": with_synthesis(zeroed)}, z, c,
                                    jax.random.key(3)))
    orig_img = np.asarray(orig.apply({"params": with_synthesis({k: g[k] for k in o})}, z, c,
                                     jax.random.key(3)))
    np.testing.assert_allclose(orig_img, skip_img, rtol=1e-6, atol=1e-6)
    full = np.asarray(gen.apply({"params": params}, z, c, jax.random.key(3)))
    assert np.abs(full - orig_img).max() > 1e-3  # the lower resolutions' RGB did count
    with pytest.raises(ValueError, match="architecture"):
        sg.GANConfig(architecture="resnet")


def test_dense_equalized_learning_rate():
    rng = _rng(8)
    fan_in, n = 256, 4096
    x = jnp.asarray(rng.normal(size=(n, fan_in)), jnp.float32)
    for lr_mul in (1.0, 0.01):
        layer = sg.Dense(128, lr_mul=lr_mul, bias_init=0.5)
        p = layer.init(jax.random.key(0), x)["params"]
        k = np.asarray(p["kernel"])
        assert abs(k.std() * lr_mul - 1.0) < 0.03 and abs(k.mean() * lr_mul) < 0.03
        np.testing.assert_allclose(np.asarray(p["bias"]), 0.5 / lr_mul, rtol=1e-6)
        y = np.asarray(layer.apply({"params": p}, x))
        # Runtime scale lr_mul / sqrt(fan_in) and bias * lr_mul, from the stored params.
        want = np.asarray(x) @ (k * lr_mul / np.sqrt(fan_in)) + np.asarray(p["bias"]) * lr_mul
        np.testing.assert_allclose(y, want, rtol=1e-4, atol=1e-4)
        # Output variance ~ input variance (1) whatever the fan-in and lr_mul.
        assert abs((y - 0.5).var() - 1.0) < 0.15


def test_conv_equalized_learning_rate():
    rng = _rng(9)
    x = jnp.asarray(rng.normal(size=(16, 16, 16, 32)), jnp.float32)
    layer = sg.Conv(24, kernel=3, bias=True, act=False)
    p = layer.init(jax.random.key(0), x)["params"]
    k = np.asarray(p["kernel"])
    assert k.shape == (3, 3, 32, 24)
    assert abs(k.std() - 1.0) < 0.05 and abs(k.mean()) < 0.05
    y = np.asarray(layer.apply({"params": p}, x))
    # Direct reference: 'same' correlation with kernel / sqrt(3 * 3 * 32).
    xs = np.asarray(x)[:2]
    ref = np.zeros((2, 16, 16, 24))
    for n in range(2):
        for o in range(24):
            for i in range(32):
                ref[n, :, :, o] += signal.correlate(xs[n, :, :, i], k[:, :, i, o] / np.sqrt(288),
                                                    mode="same")
    np.testing.assert_allclose(y[:2], ref, rtol=1e-4, atol=1e-4)
    assert abs(y[:, 1:-1, 1:-1].var() - 1.0) < 0.2  # interior (no zero padding)
    # The lrelu gain sqrt(2) keeps the second moment: E[lrelu(y)^2] = (1 + 0.04) for unit y.
    act = np.asarray(sg.Conv(24, kernel=3).apply({"params": p}, x))
    assert abs(np.mean(act[:, 1:-1, 1:-1] ** 2) - 1.04) < 0.2


def test_mapping_params_are_scaled_by_inverse_lr_mul():
    mapping = sg.Mapping(TINY)
    z = jnp.asarray(_rng(10).normal(size=(512, TINY.z_dim)), jnp.float32)
    p = mapping.init(jax.random.key(0), z)["params"]
    assert sorted(p) == [f"fc{i}" for i in range(TINY.mapping_layers)]
    kernels = np.concatenate([np.asarray(p[k]["kernel"]).ravel() for k in p])
    assert abs(kernels.std() / 100.0 - 1.0) < 0.15  # unit-normal / 0.01
    # Effective weights are unit-normal / sqrt(fan_in): w keeps a second moment ~ that of
    # the normalized z (1) through the lrelu-with-gain layers.
    w = np.asarray(mapping.apply({"params": p}, z))
    assert w.shape == (512, TINY.w_dim)
    assert 0.3 < np.mean(w ** 2) < 3.0
    # Normalization: scaling z does not change w.
    np.testing.assert_allclose(np.asarray(mapping.apply({"params": p}, 5.0 * z)), w,
                               rtol=1e-4, atol=1e-5)


# ---------------------------------------------------------------------------
# Losses and schedules


def test_r1_penalty_closed_form():
    rng = _rng(11)
    x = jnp.asarray(rng.normal(size=(5, 4, 4, 3)), jnp.float32)
    c = jnp.zeros((5, 2))
    p = jnp.asarray(rng.normal(size=(4, 4, 3)), jnp.float32)
    linear = lambda p, x, c: (jnp.sum(p * x, axis=(1, 2, 3)), None)
    got = float(generation.r1_penalty(linear, p, x, c))
    np.testing.assert_allclose(got, np.sum(np.asarray(p) ** 2), rtol=1e-5)
    # A quadratic D: grad_x sum(p x^2) = 2 p x, per example.
    quad = lambda p, x, c: (jnp.sum(p * x ** 2, axis=(1, 2, 3)), None)
    want = np.mean(np.sum((2 * np.asarray(p) * np.asarray(x)) ** 2, axis=(1, 2, 3)))
    np.testing.assert_allclose(float(generation.r1_penalty(quad, p, x, c)), want, rtol=1e-5)


def test_ema_beta_half_life():
    cfg = generation.StepConfig(batch_size=32, ema_kimg=10.0, ema_rampup=0.0)
    for step in (0, 7, 10_000):
        beta = float(generation.ema_beta(cfg, jnp.asarray(step)))
        np.testing.assert_allclose(beta ** (10_000 / 32), 0.5, rtol=1e-4)
    ramp = generation.StepConfig(batch_size=32, ema_kimg=10.0, ema_rampup=0.05)
    for step in (1, 5, 1000, 6249, 6250, 100_000):
        seen = step * 32  # images seen before this step (StyleGAN2's cur_nimg)
        half_life = min(10_000.0, seen * 0.05)
        beta = float(generation.ema_beta(ramp, jnp.asarray(step)))
        np.testing.assert_allclose(beta ** (half_life / 32), 0.5, rtol=1e-4)


# ---------------------------------------------------------------------------
# The train step


@pytest.mark.slow
def test_train_step_updates_params_ema_and_lazy_r1(tiny_models):
    gen, disc, g, d = tiny_models
    b = 8
    dim = TINY.cond_dim
    enc_w = jnp.asarray(_rng(13).normal(size=(dim, dim)), jnp.float32)
    encoder = generation.Encoder(lambda p, x: x.reshape(x.shape[0], -1)[:, :dim] @ p, enc_w)
    cfg = generation.StepConfig(batch_size=b, r1_gamma=10.0, r1_every=16, ema_kimg=0.01,
                                ema_rampup=0.0, pl_every=1)
    tx_config = t2i.default_config()
    tx = generation.optimizer(tx_config)
    ema0 = jax.tree.map(lambda v: v + 0.1, g)  # an EMA that differs from g
    state0 = generation.GANState(jnp.zeros((), jnp.int32), g, d, tx.init(g), tx.init(d), ema0,
                                 jnp.zeros(()))
    mesh = parallel.make_mesh(1)  # the batch over conftest's 8 host devices
    shardings = parallel.state_shardings(mesh, jax.eval_shape(lambda: state0))
    step_fn = jax.jit(lambda state, batch, s, key, regs: generation.gan_update(
        gen, disc, encoder, cfg, tx, tx, state, batch, key, regs,
        lambda e, rng: generation.train_condition(s, e, rng)),
        static_argnums=4, out_shardings=(shardings, None))
    rng = _rng(14)
    moments = c3.Moments(rng.normal(size=dim).astype(np.float32) * 0.1, np.ones(dim))
    settings = c3.member_settings("c3", c3.CLIP_SIGMA, moments, moments)
    key = jax.random.key(0)

    def batch():
        r = TINY.resolution
        return {"image": rng.integers(0, 256, size=(b, r, r, 3), dtype=np.uint8),
                "embedding": rng.normal(size=(b, dim)).astype(np.float32)}

    state = jax.device_put(state0, shardings)
    before = jax.tree.map(np.array, state)  # copied: the step donates its state
    state, m0 = step_fn(state, jax.device_put(batch(), parallel.batch_sharding(mesh)), settings,
                        key, (False, True))
    after = jax.tree.map(np.array, state)
    m0 = {k: float(v) for k, v in m0.items()}
    assert set(m0) >= {"d_adv", "d_itd", "r1", "g_adv", "g_itd", "g_itc", "g_loss",
                       "g_grad_norm", "d_grad_norm"}
    assert all(np.isfinite(v) for v in m0.values()), m0
    assert int(after.step) == 1
    assert m0["r1"] > 0  # with the lazy R1 penalty
    moved = lambda t0, t1: max(np.abs(x - y).max() for x, y in
                               zip(jax.tree.leaves(t0), jax.tree.leaves(t1)))
    assert moved(before.g_params, after.g_params) > 0
    assert moved(before.d_params, after.d_params) > 0
    beta = 0.5 ** (b / 10.0)  # half-life ema_kimg * 1000 = 10 images
    for e0, e1, p1 in zip(jax.tree.leaves(before.ema), jax.tree.leaves(after.ema),
                          jax.tree.leaves(after.g_params)):
        np.testing.assert_allclose(e1, beta * e0 + (1 - beta) * p1, rtol=1e-5, atol=1e-6)
    # Adam with beta1 = 0: the first update of every param with a non-zero gradient is
    # lr * g / (sqrt((1 - b2) g^2 / (1 - b2)) + eps) = lr * sign(g), |update| <= lr; D's
    # second (R1) update is at most sqrt(1 + b2) lr.
    # (up to float32 rounding of params as large as the mapping's ~100-scaled kernels).
    for tree0, tree1, k in ((before.g_params, after.g_params, 1),
                            (before.d_params, after.d_params, 1 + np.sqrt(2))):
        for p0, p1 in zip(jax.tree.leaves(tree0), jax.tree.leaves(tree1)):
            bound = (k * tx_config.generator.lr * (1 + 1e-5)
                     + 2 * np.spacing(np.abs(p0).astype(np.float32)))
            assert np.all(np.abs(p1 - p0) <= bound)

    state, m1 = step_fn(state, jax.device_put(batch(), parallel.batch_sharding(mesh)), settings,
                        key, (False, False))
    m1 = {k: float(v) for k, v in m1.items()}
    assert all(np.isfinite(v) for v in m1.values()), m1
    assert m1["r1"] == 0.0  # without it
    assert int(state.step) == 2
