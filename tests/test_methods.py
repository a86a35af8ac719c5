"""The gap-closing methods (c3.member_settings / member_train / member_eval) against closed
forms and transcriptions (numpy / torch, written here) of their official code."""
import jax
import numpy as np
import pytest
import torch

from c3_jax import c3, geometry
from c3_jax.data import captions as cd


def _unit(a):
    a = np.asarray(a, np.float64)
    return a / np.linalg.norm(a, axis=-1, keepdims=True)


def _moments(e) -> c3.Moments:
    n = _unit(e)
    return c3.Moments(n.mean(0).astype(np.float32), n.std(0).astype(np.float32))


def _modalities(seed=0, n=400, d=8):
    """Text and image embeddings with different means and per-dimension scales."""
    rng = np.random.default_rng(seed)
    t = rng.normal(size=(n, d)) * np.linspace(0.2, 2.0, d) + 1.5 * np.eye(d)[0]
    i = rng.normal(size=(n, d)) * np.linspace(1.5, 0.3, d) - 1.0 * np.eye(d)[1]
    return t.astype(np.float32), i.astype(np.float32)


def test_member_transform_equals_the_paper_variants_composed_of_the_steps():
    rng = np.random.default_rng(0)
    e, mean, gap = (rng.normal(size=s).astype(np.float32) for s in ((5, 8), (8,), (8,)))
    key = jax.random.key(3)
    ones = np.ones(8, np.float32)
    train, evaluation = c3.Moments(mean, ones), c3.Moments(mean + gap, ones)
    n = c3.normalize(e)
    noisy = {"c1": n, "c2_collapse": c3.collapse(n, mean), "c2_corrupt": c3.corrupt(key, n, 0.3),
             "c3": c3.corrupt(key, c3.collapse(n, mean), 0.3),
             "span_only": c3.corrupt_span_only(key, n, 0.3, gap),
             "lafite": c3.lafite_mix(key, n, 0.3)}
    for name, want in noisy.items():
        s = c3.member_settings(name, 0.3, train, evaluation)
        np.testing.assert_allclose(c3.member_train(s, e, key), c3.normalize(want), rtol=1e-6,
                                   atol=1e-6, err_msg=name)
        collapses = name in c3.COLLAPSING
        np.testing.assert_allclose(c3.member_train(s, e),
                                   c3.normalize(n - mean) if collapses else n, atol=1e-6)
        np.testing.assert_allclose(c3.member_eval(s, e),
                                   c3.normalize(n - mean - gap) if collapses else n, atol=1e-6)


def test_unknown_methods_are_refused():
    with pytest.raises(ValueError, match="unknown method"):
        c3.check_method("c4")
    with pytest.raises(ValueError, match="'c3_std' is now 'c3_standardize'"):
        c3.check_method("c3_std")
    m = c3.Moments(np.zeros(4), np.ones(4))
    with pytest.raises(ValueError, match="noise model"):
        c3.member_settings("c3_aniso", 0.1, m, m)
    with pytest.raises(ValueError, match="centroid"):
        c3.member_settings("realign", 0.1, m, m)


def _official_lafite_condition(img_fts, random_noise, level):
    """Transcription (torch) of C^3's image_generation/training/loss.py condition for the
    LAFITE baseline script (--add_lafite_noise --noise_level 0.75, no --remove_mean)."""
    img_fts_ = img_fts / img_fts.norm(dim=-1, keepdim=True)
    img_fts_ = img_fts_ / img_fts_.norm(dim=-1, keepdim=True)
    random_noise = random_noise / random_noise.norm(dim=-1, keepdim=True)
    img_fts_ = img_fts_ * (1 - level) + random_noise * level
    return img_fts_ / img_fts_.norm(dim=-1, keepdim=True)


def test_lafite_is_the_official_baseline_condition():
    t, i = _modalities(d=16)
    s = c3.member_settings("lafite", 0.75, _moments(i), _moments(t))
    key = jax.random.key(4)
    u = np.asarray(jax.random.normal(key, i.shape))  # the noise member_noise draws
    want = _official_lafite_condition(torch.tensor(i, dtype=torch.float64),
                                      torch.tensor(u, dtype=torch.float64), 0.75).numpy()
    np.testing.assert_allclose(c3.member_train(s, i, key), want, atol=2e-6)
    assert not s["mean"].any() and not s["eval_mean"].any()  # no Collapse on either side
    np.testing.assert_allclose(c3.member_eval(s, t), _unit(t), atol=1e-6)


def _planted_pairs(n=20_000, d=16, seed=1):
    """Pairs whose residual has a known covariance: eigenvalues 2^-k along a random basis."""
    rng = np.random.default_rng(seed)
    basis = np.zeros((d, d - 1))  # the residual lies off the first axis, where y points
    basis[1:] = np.linalg.qr(rng.normal(size=(d - 1, d - 1)))[0]
    spectrum = 0.001 * 2.0 ** -np.arange(d - 1)
    cov = (basis * spectrum) @ basis.T
    y = np.zeros((n, d))
    y[:, 0] = 100.0  # normalizing divides every row by ~100 * sqrt(1.09): nearly constant
    x = y + 100.0 * rng.multivariate_normal(np.zeros(d), cov, n) + 100.0 * 0.3 * np.eye(d)[1]
    return x, y, cov, spectrum


def test_residual_noise_recovers_a_planted_covariance():
    x, y, cov, spectrum = _planted_pairs()
    model = geometry.residual_noise(x, y, shrinkage=0.0)
    # Independent estimate: numpy's covariance of the normalized pairs' differences.
    diff = _unit(x) - _unit(y)
    want = np.cov(diff, rowvar=False)
    unit = np.sqrt(np.trace(want) / len(want))
    np.testing.assert_allclose(model["factor"] @ model["factor"].T, want / unit ** 2,
                               atol=1e-4 * np.abs(want / unit ** 2).max())
    np.testing.assert_allclose(model["std"], 0.0)
    assert model["sigma"] == pytest.approx(c3.calibrate_sigma(x, y)["sigma"], rel=1e-5)
    # ... and the planted spectrum (to sampling error, after the ~1/100 normalization).
    got = np.linalg.eigvalsh(model["factor"] @ model["factor"].T)[::-1]
    np.testing.assert_allclose(got[:4] / got[0], spectrum[:4] / spectrum[0], rtol=0.05)


def test_low_rank_noise_keeps_the_top_directions_and_each_variance():
    x, y, _, _ = _planted_pairs()
    full, low = geometry.residual_noise(x, y), geometry.residual_noise(x, y, rank=3)
    cov = full["factor"] @ full["factor"].T
    approx = low["factor"] @ low["factor"].T + np.diag(low["std"] ** 2)
    np.testing.assert_allclose(np.diag(approx), np.diag(cov), rtol=1e-6, atol=1e-9)
    values, vectors = np.linalg.eigh(cov)
    top = (vectors[:, -3:] * values[-3:]) @ vectors[:, -3:].T
    np.testing.assert_allclose(low["factor"] @ low["factor"].T, top, atol=1e-6)
    assert low["factor"].shape == (16, 3)


def test_aniso_noise_has_the_calibrated_covariance_at_the_calibrated_sigma():
    x, y, _, _ = _planted_pairs(n=5000, d=8)
    model = geometry.residual_noise(x, y)
    m = c3.Moments(np.zeros(8), np.ones(8))
    s = c3.member_settings("c3_aniso", model["sigma"], m, m, model)
    noise = np.asarray(c3.member_noise(jax.tree.map(np.asarray, s), jax.random.key(0),
                                       (200_000, 8)), np.float64)
    want = np.cov(_unit(x) - _unit(y), rowvar=False)
    np.testing.assert_allclose(np.cov(noise, rowvar=False), want,
                               atol=0.02 * np.abs(want).max())
    np.testing.assert_allclose(noise.mean(0), 0.0, atol=5 * np.sqrt(want.max() / 200_000))


def _official_ledoit_wolf(centered):
    """Ledoit & Wolf (2004), Lemma 3.2 / Theorem 3.1, from its definitions: the shrinkage
    intensity b^2 / d^2 toward m I, m = <S, I>, with the normalized Frobenius norm."""
    n, p = centered.shape
    s = centered.T @ centered / n
    norm = lambda a: np.sum(a ** 2) / p
    m = np.trace(s) / p
    d2 = norm(s - m * np.eye(p))
    b2 = min(sum(norm(np.outer(x, x) - s) for x in centered) / n ** 2, d2)
    return b2 / d2


@pytest.mark.parametrize("n", [50, 400])
def test_residual_noise_shrinks_with_fewer_pairs_than_dimensions(n):
    rng = np.random.default_rng(n)
    d = 128
    scales = np.linspace(0.2, 2.0, d)
    y = rng.normal(size=(n, d))
    x = y + 0.05 * rng.normal(size=(n, d)) * scales + 0.3 * np.eye(d)[0]
    model = geometry.residual_noise(x, y)
    diff = _unit(x) - _unit(y)
    centered = diff - diff.mean(0)
    assert model["shrinkage"] == pytest.approx(_official_ledoit_wolf(centered), rel=1e-8)
    sample = np.cov(diff, rowvar=False)
    unit2 = np.trace(sample) / d
    rho = model["shrinkage"]
    want = (1 - rho) * sample + rho * unit2 * np.eye(d)
    got = model["factor"] @ model["factor"].T
    np.testing.assert_allclose(got, want / unit2, atol=1e-5)  # second_moments: float32 rows
    values = np.linalg.eigvalsh(got)
    if n < d:
        assert np.linalg.matrix_rank(sample) < d  # the sample covariance is singular
    assert values.min() > 0  # positive definite where the sample covariance is singular
    # cond(C) <= ((1 - rho) l_max(S) + rho m) / (rho m), equality when S is singular.
    bound = 1 + (1 - rho) * np.linalg.eigvalsh(sample).max() / (rho * unit2)
    assert values.max() / values.min() <= bound * (1 + 1e-5)
    assert values.max() / values.min() < 100
    assert model["sigma"] == pytest.approx(c3.calibrate_sigma(x, y)["sigma"], rel=1e-6)


def test_residual_noise_converges_to_the_sample_covariance_with_many_pairs():
    x, y, _, _ = _planted_pairs(n=20_000, d=8)
    sample = np.cov(_unit(x) - _unit(y), rowvar=False)
    rhos = []
    for n in (200, 2000, 20_000):
        model = geometry.residual_noise(x[:n], y[:n])
        rhos.append(model["shrinkage"])
    assert rhos[0] > rhos[1] > rhos[2] and rhos[2] < 5e-3
    unit2 = np.trace(sample) / 8
    np.testing.assert_allclose(model["factor"] @ model["factor"].T, sample / unit2,
                               atol=0.01 * np.abs(sample / unit2).max())
    with pytest.raises(ValueError, match="shrinkage"):
        geometry.residual_noise(x[:50], y[:50], shrinkage=1.5)


def test_c3_standardize_standardizes_each_modality_to_its_rms_std():
    t, i = _modalities()
    mt, mi = _moments(t), _moments(i)
    s = c3.member_settings("c3_standardize", 0.1, mt, mi)
    rms_t = np.sqrt(np.mean(_unit(t).std(0) ** 2))
    scaled = (_unit(t) - _unit(t).mean(0)) * s["scale"]
    np.testing.assert_allclose(scaled.std(0), rms_t, rtol=1e-5)  # every dimension
    want = _unit((_unit(i) - _unit(i).mean(0)) * np.sqrt(np.mean(_unit(i).std(0) ** 2))
                 / _unit(i).std(0))
    np.testing.assert_allclose(c3.member_eval(s, i), want, atol=2e-6)
    want = _unit((_unit(t) - _unit(t).mean(0)) * rms_t / _unit(t).std(0))
    np.testing.assert_allclose(c3.member_train(s, t), want, atol=2e-6)


def test_std_match_moves_each_text_dimension_onto_the_image_moments():
    t, i = _modalities()
    s = c3.member_settings("std_match", 0.1, _moments(t), _moments(i))
    nt, ni = _unit(t), _unit(i)
    moved = (nt - nt.mean(0)) / nt.std(0) * ni.std(0) + ni.mean(0)  # before renormalizing
    np.testing.assert_allclose(moved.std(0), ni.std(0), rtol=1e-9)
    np.testing.assert_allclose(c3.member_train(s, t), _unit(moved), atol=2e-6)
    np.testing.assert_allclose(c3.member_eval(s, i), ni, atol=1e-6)
    assert not s["sigma"].any()


def _l2(x):
    x = np.asarray(x, np.float64)
    norm = np.linalg.norm(x, axis=1, keepdims=True)
    return x / np.where(norm < 1e-10, 1.0, norm)


def _official_realign(text, image, chunk=100):
    """Transcription (numpy) of Yu-xm/ReVision embed_ReAlign.py's four passes over the text
    and image sets: the aligned text, float32 as it saves them."""
    mu_t = np.mean(_l2(text), 0).astype(np.float32).astype(np.float64)
    mu_i = np.mean(_l2(image), 0).astype(np.float32).astype(np.float64)
    trace_t = sum(np.sum((_l2(text[k:k + chunk]) - mu_t) ** 2)
                  for k in range(0, len(text), chunk)) / len(text)
    trace_i = sum(np.sum((_l2(image[k:k + chunk]) - mu_i) ** 2)
                  for k in range(0, len(image), chunk)) / len(image)
    scale = np.sqrt(trace_i / (trace_t + 1e-10))
    x_hat = _l2((_l2(text) - mu_t) * scale + mu_i)
    mu_hat = x_hat.mean(0)
    return _l2(x_hat - mu_hat + mu_i).astype(np.float32), scale, mu_hat


def test_realign_equals_the_official_three_steps():
    t, i = _modalities(n=500, d=16)
    i = i[:300]  # unpaired sets of different sizes
    want, scale, mu_hat = _official_realign(t, i)
    mt = c3.RunningMoments().update(t).moments()
    mi = c3.RunningMoments().update(i).moments()
    mt, mi = (c3.Moments(m.mean.astype(np.float32), m.std.astype(np.float32)) for m in (mt, mi))
    assert c3.realign_scale(mt, mi) == pytest.approx(scale, rel=1e-6)
    source = [{"text": row} for row in t]
    centroid = cd.realign_centroid(source, "text", mt, mi, batch=64)
    np.testing.assert_allclose(centroid, mu_hat, atol=1e-6)
    s = c3.member_settings("realign", 0.1, mt, mi, centroid=centroid)
    np.testing.assert_allclose(c3.member_train(s, t), want, atol=3e-6)
    # The Centroid step puts the transformed text's mean direction on the image mean's.
    got_mean = np.asarray(c3.member_train(s, t), np.float64).mean(0)
    assert np.dot(_unit(got_mean), _unit(mi.mean)) > np.dot(_unit(mu_hat), _unit(mi.mean))
    np.testing.assert_allclose(c3.member_eval(s, i), _unit(i), atol=1e-6)  # images unchanged
    assert not s["sigma"].any()  # no Corrupt
    # A realign member's settings stack with any other member's (one sweep).
    other = c3.member_settings("c3", 0.1, mt, mi)
    assert {k: np.shape(v) for k, v in s.items()} == {k: np.shape(v) for k, v in other.items()}


def test_capdec_offset_adds_the_modality_offset_then_noise():
    t, i = _modalities()
    s = c3.member_settings("capdec_offset", 0.2, _moments(t), _moments(i))
    offset = _unit(i).mean(0) - _unit(t).mean(0)
    np.testing.assert_allclose(c3.member_train(s, t), _unit(_unit(t) + offset), atol=2e-6)
    key = jax.random.key(5)
    noise = 0.2 * np.asarray(jax.random.normal(key, t.shape))
    np.testing.assert_allclose(c3.member_train(s, t, key), _unit(_unit(t) + offset + noise),
                               atol=2e-6)
    np.testing.assert_allclose(c3.member_eval(s, i), _unit(i), atol=1e-6)


def _softmax_projection(e, memory, temperature):
    e, memory = _unit(e), _unit(memory)
    logits = e @ memory.T / temperature
    p = np.exp(logits - logits.max(1, keepdims=True))
    return (p / p.sum(1, keepdims=True)) @ memory


@pytest.mark.parametrize("chunk", [7, 64, 1000])
def test_decap_projection_equals_the_softmax_weighted_memory(chunk):
    rng = np.random.default_rng(2)
    e, memory = rng.normal(size=(9, 8)), rng.normal(size=(101, 8))
    got = c3.project_to_memory(e.astype(np.float32), memory.astype(np.float32), 0.05, chunk)
    np.testing.assert_allclose(got, _softmax_projection(e, memory, 0.05), atol=2e-6)
    # At a tiny temperature the projection is the nearest memory row.
    cold = c3.project_to_memory(e.astype(np.float32), memory.astype(np.float32), 1e-5, chunk)
    nearest = _unit(memory)[np.argmax(_unit(e) @ _unit(memory).T, axis=1)]
    np.testing.assert_allclose(cold, nearest, atol=1e-5)


def test_decap_member_projects_only_at_inference():
    t, i = _modalities()
    s = c3.member_settings("decap", 0.1, _moments(t), _moments(i))
    projected = c3.project_to_memory(i, t)
    np.testing.assert_allclose(c3.member_eval(s, i, projected),
                               _unit(_softmax_projection(i, t, c3.DECAP_TEMPERATURE)),
                               atol=2e-5)
    np.testing.assert_allclose(c3.member_train(s, t, jax.random.key(0)), _unit(t), atol=1e-6)
    c1 = c3.member_settings("c1", 0.1, _moments(t), _moments(i))
    np.testing.assert_allclose(c3.member_eval(c1, i, projected), _unit(i), atol=1e-6)
