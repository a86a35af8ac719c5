"""The C^3 transforms against closed forms."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from c3_jax import c3


def _unit(rng, n, d, shift=0.0):
    e = rng.normal(size=(n, d)) + shift
    return e / np.linalg.norm(e, axis=1, keepdims=True)


def test_collapse_removes_difference_of_means_exactly():
    rng = np.random.default_rng(0)
    x, y = _unit(rng, 300, 64, 0.5), _unit(rng, 200, 64, -0.3)
    cx = c3.collapse(jnp.asarray(x), jnp.asarray(x.mean(0)))
    cy = c3.collapse(jnp.asarray(y), jnp.asarray(y.mean(0)))
    assert np.linalg.norm(x.mean(0) - y.mean(0)) > 0.5
    np.testing.assert_allclose(np.asarray(cx).mean(0) - np.asarray(cy).mean(0), 0, atol=1e-6)
    # Collapse changes each pair difference by the constant gap only (Section 4).
    np.testing.assert_allclose(np.asarray(cx)[:200] - np.asarray(cy),
                               (x[:200] - y) - (x.mean(0) - y.mean(0)), atol=1e-6)


def test_corrupt_empirical_mean_and_std():
    e = jnp.zeros((4000, 256))
    out = np.asarray(c3.corrupt(jax.random.PRNGKey(1), e, 0.3))
    assert abs(out.mean()) < 3 * 0.3 / np.sqrt(out.size) * 2
    assert abs(out.std() / 0.3 - 1) < 0.01


def test_span_only_noise_is_orthogonal_to_gap_direction():
    rng = np.random.default_rng(2)
    e = jnp.asarray(_unit(rng, 2000, 128))
    g = jnp.asarray(rng.normal(size=128))
    noise = np.asarray(c3.corrupt_span_only(jax.random.PRNGKey(3), e, 0.2, g) - e)
    gu = np.asarray(g) / np.linalg.norm(g)
    np.testing.assert_allclose(noise @ gu, 0, atol=1e-5)
    # The other 127 directions keep std sigma: E|n|^2 = 127 sigma^2.
    assert abs(np.mean(np.sum(noise ** 2, 1)) / (127 * 0.04) - 1) < 0.02


def test_lafite_mix_closed_form():
    rng = np.random.default_rng(4)
    e = jnp.asarray(_unit(rng, 500, 512))
    level = 0.75
    out = np.asarray(c3.lafite_mix(jax.random.PRNGKey(5), e, level))
    np.testing.assert_allclose(np.linalg.norm(out, axis=1), 1, atol=1e-5)
    # n/|n| is nearly orthogonal to e in 512 dims: cos = (1-l)/sqrt((1-l)^2 + l^2).
    expected = (1 - level) / np.sqrt((1 - level) ** 2 + level ** 2)
    cos = np.sum(out * np.asarray(e), 1)
    assert abs(cos.mean() - expected) < 0.01


def test_variant_table_matches_paper():
    # Table 2: C1 = connect only, C2 collapse, C2 corrupt (CapDec), C3 = both; Table 7 span-only.
    rng = np.random.default_rng(5)
    train, test = (c3.Moments(rng.normal(size=4), np.ones(4)) for _ in range(2))
    table = {}
    for name in ("c1", "c2_collapse", "c2_corrupt", "c3", "span_only"):
        s = c3.member_settings(name, 0.1, train, test)
        table[name] = (bool(s["mean"].any()), bool(s["sigma"].any()))
    assert table == {"c1": (False, False), "c2_collapse": (True, False),
                     "c2_corrupt": (False, True), "c3": (True, True), "span_only": (False, True)}
    np.testing.assert_allclose(c3.member_settings("span_only", 0.1, train, test)["gap"],
                               test.mean - train.mean, rtol=1e-6)
    assert c3.CLIP_SIGMA == pytest.approx(np.sqrt(0.016))
    with pytest.raises(ValueError, match="unknown method"):
        c3.member_settings("c4", 0.1, train, test)


def test_member_transform_composes_the_steps():
    rng = np.random.default_rng(6)
    raw = jnp.asarray(rng.normal(size=(64, 32)) * 3 + 1)
    mean = _unit(rng, 1, 32)[0] * 0.5
    key = jax.random.PRNGKey(7)
    moments = c3.Moments(mean, np.ones(32))
    s = c3.member_settings("c3", 0.1, moments, moments)
    got = c3.member_train(s, raw, key)
    n = raw / jnp.linalg.norm(raw, axis=1, keepdims=True)
    want = c3.normalize(n - mean + 0.1 * jax.random.normal(key, raw.shape))
    np.testing.assert_allclose(got, want, atol=1e-6)
    # Evaluation: collapse without noise.
    np.testing.assert_allclose(c3.member_eval(s, raw), c3.normalize(n - mean), atol=1e-6)
    # C1 is normalization only.
    c1 = c3.member_settings("c1", 0.1, moments, moments)
    np.testing.assert_allclose(c3.member_train(c1, raw, key), n, atol=1e-6)


def test_transform_inside_sharded_jit():
    devices = np.array(jax.devices())
    mesh = Mesh(devices, ("data",))
    rng = np.random.default_rng(8)
    batch = jnp.asarray(rng.normal(size=(8 * len(devices), 16)), jnp.float32)
    moments = c3.Moments(rng.normal(size=16) * 0.1, np.ones(16))
    s = c3.member_settings("c3", 0.05, moments, moments)

    @jax.jit
    def step(e, s, key):
        return c3.member_train(s, e, key)

    sharded = jax.device_put(batch, NamedSharding(mesh, P("data")))
    out = step(sharded, s, jax.random.PRNGKey(0))
    assert out.sharding.spec == P("data")
    np.testing.assert_allclose(out, step(batch, s, jax.random.PRNGKey(0)), atol=1e-6)


def test_running_moments_equal_numpy_mean_and_std_of_normalized():
    rng = np.random.default_rng(9)
    data = (rng.normal(size=(10_000, 48)) * 5 + 100).astype(np.float32)
    acc = c3.RunningMoments()
    for start in range(0, len(data), 777):  # uneven batches
        acc.update(data[start:start + 777])
    ref = (data.astype(np.float64) / np.linalg.norm(data.astype(np.float64), axis=1,
                                                      keepdims=True)).mean(0)
    np.testing.assert_allclose(acc.result(), ref, rtol=0, atol=1e-14)
    resumed = c3.RunningMoments.from_state(c3.RunningMoments().update(data[:5000]).state())
    np.testing.assert_allclose(resumed.update(data[5000:]).result(), ref, atol=1e-14)
    np.testing.assert_allclose(c3.modality_mean(np.array_split(data, 7)), ref, atol=1e-14)
    normalized = data.astype(np.float64) / np.linalg.norm(data.astype(np.float64), axis=1,
                                                          keepdims=True)
    np.testing.assert_allclose(resumed.moments().std, normalized.std(0), rtol=1e-6)


def test_running_mean_rejects_bad_input():
    acc = c3.RunningMoments().update(np.ones((2, 4)))
    with pytest.raises(ValueError, match="width 3"):
        acc.update(np.ones((2, 3)))
    with pytest.raises(ValueError, match="NaN"):
        acc.update(np.full((2, 4), np.nan))


@pytest.mark.parametrize("sigma", [0.01, 0.05])
def test_calibration_recovers_planted_sigma_from_100_pairs(sigma):
    rng = np.random.default_rng(10)
    d = 512
    # Text embeddings on the unit sphere of a 200-dim span; a gap c orthogonal to it.
    y = np.zeros((100, d))
    y[:, :200] = _unit(rng, 100, 200)
    c = np.zeros(d)
    c[300] = 0.8
    x = y + c + sigma * rng.normal(size=(100, d))
    est = c3.calibrate_sigma(x, y, normalize_inputs=False)
    assert abs(est["sigma"] / sigma - 1) < 0.03
    np.testing.assert_allclose(est["gap"], c, atol=4 * sigma / np.sqrt(100) + 1e-9)
