"""Geometry toolkit against closed forms, plain numpy and the paper's numbers."""
import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from c3_jax import geometry


def _with_covariance(rng, n, eigenvalues):
    """Rows whose sample covariance is exactly R diag(eigenvalues) R^T."""
    d = len(eigenvalues)
    q, _ = np.linalg.qr(np.column_stack([np.ones(n), rng.normal(size=(n, d))]))
    q = q[:, 1:]  # orthonormal columns, orthogonal to the all-ones vector: centered
    r, _ = np.linalg.qr(rng.normal(size=(d, d)))
    return np.sqrt(n - 1) * q @ np.diag(np.sqrt(eigenvalues)) @ r.T + 3.0


@pytest.mark.parametrize("decay,gamma", [(0.8, 0.99), (0.95, 0.9), (0.5, 0.999)])
def test_effective_dimension_known_spectrum(decay, gamma):
    rng = np.random.default_rng(0)
    lam = decay ** np.arange(64)
    x = _with_covariance(rng, 2000, lam)
    expected = int(np.argmax(np.cumsum(lam) / lam.sum() >= gamma) + 1)
    np.testing.assert_allclose(geometry.covariance_spectrum(x), lam, rtol=2e-3, atol=1e-6)
    np.testing.assert_allclose(
        geometry.covariance_spectrum(x.astype(np.float32), overwrite_input=True), lam,
        rtol=2e-3, atol=1e-6)
    # The jitted path (device arrays) and the host BLAS path agree.
    np.testing.assert_allclose(geometry.covariance_spectrum(jnp.asarray(x, jnp.float32)), lam,
                               rtol=2e-3, atol=1e-6)
    assert geometry.effective_dimension(x, gamma) == expected


def test_effective_dimension_of_low_rank_and_flat_spectra():
    assert geometry.effective_dimension_of_spectrum(np.r_[np.ones(10), np.zeros(90)], 0.99) == 10
    assert geometry.effective_dimension_of_spectrum(np.ones(100), 0.99) == 99
    assert geometry.effective_dimension_of_spectrum(np.ones(100), 1.0) == 100


def _numpy_gap_statistics(x, y, groups):
    """Table 1 by the paper's definitions, with plain loops over groups and pairs."""
    x = x / np.linalg.norm(x, axis=1, keepdims=True)
    y = y / np.linalg.norm(y, axis=1, keepdims=True)
    cos = lambda a, b: a @ b / (np.linalg.norm(a) * np.linalg.norm(b))
    gaps, orth, noise_dir, eps_all = [], [], [], []
    for g in groups:
        d = (x[g] - y[g]).mean(0)
        gaps.append(d)
        eps = (x[g] - y[g]) - d
        eps_all.append(eps)
        for j, k in itertools.permutations(range(len(g)), 2):
            if not np.array_equal(x[g[j]], x[g[k]]):  # the same image with another caption
                orth.append(cos(d, x[g[j]] - x[g[k]]))
        for j, k in itertools.combinations(range(len(g)), 2):
            noise_dir.append(cos(eps[j], eps[k]))
    gaps = np.array(gaps)
    gap_dir = [cos(gaps[i], gaps[j]) for i, j in itertools.combinations(range(len(gaps)), 2)]
    noise_mean = np.concatenate(eps_all).mean(0)
    return {"gap_length": np.linalg.norm(gaps, axis=1), "gap_direction": np.array(gap_dir),
            "gap_orthogonality_within_group": np.array(orth), "noise_mean": noise_mean,
            "noise_direction": np.array(noise_dir)}


def test_gap_statistics_match_plain_numpy():
    rng = np.random.default_rng(1)
    x = np.repeat(rng.normal(size=(124, 24)) + 1.0, 5, axis=0)  # 5 captions per image
    y = rng.normal(size=(620, 24)) - 0.5
    key = jax.random.PRNGKey(3)
    got = geometry.gap_statistics(x, y, key, group_size=20, group_batch=7)
    ref = _numpy_gap_statistics(x, y, geometry.group_indices(key, 620, 20))
    assert got["num_groups"] == 31
    for name, values in ref.items():
        assert got[name]["count"] == values.size, name
        np.testing.assert_allclose(got[name]["mean"], values.mean(), atol=2e-6, err_msg=name)
        np.testing.assert_allclose(got[name]["std"], values.std(), rtol=1e-4, atol=2e-7,
                                   err_msg=name)
    for name in ("gap_direction", "gap_orthogonality_within_group", "noise_direction"):
        hist, _ = np.histogram(ref[name], bins=np.asarray(got[name]["edges"]))
        assert sum(got[name]["hist"]) == ref[name].size, name
        assert np.abs(np.asarray(got[name]["hist"]) - hist).sum() <= 0.01 * hist.sum() + 2, name


@pytest.mark.slow
def test_gap_statistics_recover_planted_gap_and_noise():
    """e_x - e_y = c + eps with c orthogonal to the span and eps ~ N(0, sigma^2 I)."""
    rng = np.random.default_rng(2)
    n, d, k, sigma, m = 20_000, 256, 64, 0.02, 100
    y = np.zeros((n, d))
    y[:, :k] = rng.normal(size=(n, k)) / np.sqrt(k)
    c = np.zeros(d)
    c[k:] = rng.normal(size=d - k)
    c *= 0.8 / np.linalg.norm(c)
    x = y + c + sigma * rng.normal(size=(n, d))
    s = geometry.gap_statistics(x, y, jax.random.PRNGKey(0), group_size=m,
                                normalize_inputs=False)
    # |d_i|^2 = |c|^2 + |mean eps|^2, E|mean eps|^2 = d sigma^2 / m.
    assert s["gap_length"]["mean"] == pytest.approx(np.sqrt(0.64 + d * sigma ** 2 / m), rel=2e-3)
    assert s["gap_direction"]["mean"] > 0.99
    for name in ("gap_orthogonality", "gap_orthogonality_within_group"):
        assert abs(s[name]["mean"]) < 1e-3 and s[name]["std"] < 0.05, name
    # A random direction: E[cos^2] = 1/d; the planted gap is far more orthogonal than that.
    assert s["gap_orthogonality"]["random"]["std"] == pytest.approx(1 / np.sqrt(d), rel=0.1)
    assert s["gap_orthogonality"]["std_ratio"] < 0.5
    assert s["gap_orthogonality"]["chance_share"] == 0
    assert abs(s["noise_mean"]["mean"]) < 1e-6 and s["noise_mean"]["std"] < 1e-6
    # Residuals of m Gaussians about their mean: cos has mean -1/(m-1), std ~ 1/sqrt(d).
    assert s["noise_direction"]["mean"] == pytest.approx(-1 / (m - 1), abs=1e-3)
    assert s["noise_direction"]["std"] == pytest.approx(1 / np.sqrt(d), rel=0.05)
    np.testing.assert_allclose(s["mean_gap_vector"], c, atol=5 * sigma / np.sqrt(n))


def _notebook_orthogonality(features1, features2, shuffled_idx, group_size=100):
    """The orthogonality of analyze_gap.ipynb's compute_gap_statistics, transcribed in torch
    with its torch.randperm replaced by ``shuffled_idx``."""
    import torch
    import torch.nn.functional as F

    features1 = torch.tensor(features1, dtype=torch.float32)
    features2 = torch.tensor(features2, dtype=torch.float32)
    features1, features2 = F.normalize(features1), F.normalize(features2)
    gaps = features1 - features2
    gaps = gaps[torch.as_tensor(shuffled_idx)]
    gaps = gaps[: (gaps.shape[0] // group_size) * group_size]
    gaps = gaps.reshape(-1, group_size, gaps.shape[-1]).mean(dim=1)
    orthogonalities = F.cosine_similarity(features1[1:] - features1[:-1],
                                          gaps.mean(dim=0, keepdim=True))
    return orthogonalities.numpy().astype(np.float64), gaps.mean(dim=0).numpy()


def test_gap_orthogonality_matches_the_notebook():
    """Consecutive image differences in data order against the mean gap of the shuffled
    pairs kept in whole groups; repeated images (5 captions each) give 0, as in torch."""
    rng = np.random.default_rng(4)
    x = np.repeat(rng.normal(size=(131, 24)) + 0.7, 5, axis=0)  # 655 pairs: 6 whole groups
    y = rng.normal(size=(655, 24)) - 0.4
    order = rng.permutation(655)
    ref, ref_gap = _notebook_orthogonality(x, y, order)
    got = geometry.gap_statistics(x, y, jax.random.PRNGKey(5), group_size=100, order=order)
    np.testing.assert_allclose(got["mean_gap_vector"], ref_gap, atol=1e-6)
    o = got["gap_orthogonality"]
    assert o["count"] == ref.size == 654 and o["repeated_rows"] == 131 * 4
    np.testing.assert_allclose(o["mean"], ref.mean(), atol=1e-7)
    np.testing.assert_allclose(o["std"], ref.std(ddof=1), rtol=1e-5)  # torch's std: ddof 1
    hist, _ = np.histogram(ref, bins=np.asarray(o["edges"]))
    assert np.abs(np.asarray(o["hist"]) - hist).sum() <= 2
    # Value by value, and streamed in chunks that split the rows anywhere.
    unit = x / np.linalg.norm(x, axis=1, keepdims=True)
    values = geometry.consecutive_difference_cosines(unit, ref_gap[None])[:, 0]
    np.testing.assert_allclose(values, ref, atol=1e-6)
    chunked = geometry.gap_orthogonality(x, ref_gap, jax.random.PRNGKey(5), chunk=37)
    np.testing.assert_allclose([chunked["mean"], chunked["std"]], [ref.mean(), ref.std(ddof=1)],
                               rtol=1e-5, atol=1e-7)
    whole = geometry.gap_orthogonality(x, ref_gap, jax.random.PRNGKey(5))
    assert chunked["random"]["std"] == pytest.approx(whole["random"]["std"], rel=1e-5)
    assert np.abs(np.subtract(chunked["random"]["hist"], whole["random"]["hist"])).sum() <= 2
    with pytest.raises(ValueError, match="permutation"):
        geometry.gap_statistics(x, y, jax.random.PRNGKey(5), order=order[:-1])


def test_random_directions_give_one_over_sqrt_d_on_any_data():
    """E[cos^2(r, u)] = 1/d for u uniform on the sphere, whatever r; repeated rows (zero
    differences) scale the pooled std by sqrt(share of nonzero differences)."""
    rng = np.random.default_rng(6)
    d = 48
    x = rng.normal(size=(3000, d)) * 0.7 ** np.arange(d)  # strongly anisotropic
    out = geometry.gap_orthogonality(x, np.eye(d)[0], jax.random.PRNGKey(0), num_random=256)
    assert out["random"]["std"] == pytest.approx(1 / np.sqrt(d), rel=0.1)
    assert abs(out["random"]["mean"]) < 0.01
    # The first axis holds most of the variance: the "gap" e_0 lies in the span.
    assert out["std_ratio"] > 3 and out["chance_share"] == 1
    repeated = geometry.gap_orthogonality(np.repeat(x[:1000], 3, axis=0), np.eye(d)[0],
                                          jax.random.PRNGKey(0), num_random=256)
    nonzero = 1 - repeated["repeated_rows"] / repeated["count"]
    assert repeated["random"]["std"] == pytest.approx(np.sqrt(nonzero / d), rel=0.1)


def _probabilities(x, y, tau):
    s = x @ y.T / tau
    p_y_given_x = np.exp(s) / np.exp(s).sum(1, keepdims=True)  # [k, i] = p(y_i | x_k)
    p_x_given_y = np.exp(s) / np.exp(s).sum(0, keepdims=True)  # [k, i] = p(x_k | y_i)
    return p_y_given_x, p_x_given_y


def test_contrastive_gradient_closed_form():
    """Autodiff of the symmetric InfoNCE equals the chain rule of Appendix B.1."""
    rng = np.random.default_rng(3)
    n, d, tau = 12, 8, 0.3
    x, y = rng.normal(size=(n, d)), rng.normal(size=(n, d))
    grad_x = np.asarray(jax.grad(geometry.contrastive_loss)(jnp.asarray(x), jnp.asarray(y), tau))
    pyx, pxy = _probabilities(x, y, tau)
    expected = ((pyx + pxy) @ y - 2 * y) / (2 * n * tau)
    np.testing.assert_allclose(grad_x, expected, rtol=1e-4, atol=1e-6)


def test_lemma1_gradient_under_equal_presence():
    """Lemma 1's form holds when sum_i p(x_k|y_i) = 1 (points equally spaced on a circle)."""
    n, tau, phi = 16, 0.2, 0.3
    theta = 2 * np.pi * np.arange(n) / n
    x = np.stack([np.cos(theta), np.sin(theta), np.full(n, 0.5)], 1)
    y = np.stack([np.cos(theta + phi), np.sin(theta + phi), np.full(n, -0.5)], 1)
    grad_x = np.asarray(jax.grad(geometry.contrastive_loss)(jnp.asarray(x), jnp.asarray(y), tau))
    pyx, pxy = _probabilities(x, y, tau)
    np.testing.assert_allclose(pxy.sum(1), 1, atol=1e-12)
    alpha = pyx + pxy
    lemma = (alpha[:, :, None] * (y[None, :, :] - y[:, None, :])).sum(1) / (2 * n * tau)
    np.testing.assert_allclose(grad_x, lemma, atol=1e-6)
    # No gradient along the constant (ineffective) third dimension.
    np.testing.assert_allclose(grad_x[:, 2], 0, atol=1e-6)


def test_synthetic_embeddings_match_section_3_setup():
    x, y = geometry.synthetic_embeddings(jax.random.PRNGKey(0), 500, 512, 25, 230)
    np.testing.assert_allclose(jnp.linalg.norm(x, axis=1), 1, atol=1e-5)
    assert geometry.effective_dimension(x) == 25
    # Random constants differ per seed; the paper reports 1.21 / 0.99 for its draw.
    gaps = [geometry.gap_report(*geometry.synthetic_embeddings(jax.random.PRNGKey(s)),
                                slice(255, 512)) for s in range(8)]
    assert np.mean([g["gap"] for g in gaps]) == pytest.approx(1.21, abs=0.05)
    assert np.mean([g["gap_ineffective"] for g in gaps]) == pytest.approx(0.99, abs=0.05)


def test_notebook_step_matches_torch():
    """One 'notebook' SGD step on raw rows equals F.normalize + F.cross_entropy in torch."""
    import torch
    import torch.nn.functional as F

    x, y = geometry.synthetic_embeddings(jax.random.PRNGKey(2), 64, 96, 5, 30, normalized=False)
    xt, yt = (torch.tensor(np.asarray(e), requires_grad=True) for e in (x, y))
    logit_scale = torch.tensor(np.log(1 / 0.07), dtype=torch.float32)
    s = F.normalize(xt, dim=-1) @ F.normalize(yt, dim=-1).T * logit_scale.exp()
    labels = torch.arange(64)
    loss = (F.cross_entropy(s, labels) + F.cross_entropy(s.T, labels)) / 2
    loss.backward()
    (x1, y1), losses = geometry.contrastive_sgd_chunk((x + 0, y + 0), 1, 0.07, 0.1, True)
    assert float(losses[0]) == pytest.approx(loss.item(), rel=1e-5)
    for got, e in ((x1, xt), (y1, yt)):
        expected = (e - 0.1 * e.grad).detach().numpy()
        np.testing.assert_allclose(np.asarray(got), expected, rtol=1e-6, atol=1e-6)
        assert np.abs(np.asarray(got) - e.detach().numpy()).max() > 1e-5  # the step moved


def _synthetic_config(protocol):
    from configs import geometry_synthetic
    c = geometry_synthetic.get_config("notebook")
    c.protocol, c.num_pairs, c.dim, c.d_x, c.d_y = protocol, 50, 64, 5, 20
    return c


def test_notebook_rows_are_raw_and_gaps_use_unit_rows():
    from c3_jax.experiments import geometry_runs
    x, y = geometry_runs.synthetic_init(_synthetic_config("notebook"))
    norms = np.linalg.norm(np.asarray(x), axis=1)
    assert norms.min() > 3  # ~sqrt(64) for N(0, 1) entries
    xn, yn = geometry.synthetic_embeddings(jax.random.PRNGKey(0), 50, 64, 5, 20)
    np.testing.assert_allclose(geometry.normalize(x), xn, atol=1e-6)  # the same draws, raw
    x_once, _ = geometry_runs.synthetic_init(_synthetic_config("normalize_once"))
    np.testing.assert_allclose(np.linalg.norm(np.asarray(x_once), axis=1), 1, atol=1e-5)
    unit_gap = np.linalg.norm(np.asarray(xn).mean(0) - np.asarray(yn).mean(0))
    raw_gap = np.linalg.norm(np.asarray(x).mean(0) - np.asarray(y).mean(0))
    report = geometry.gap_report(x, y, slice(25, 64))
    assert report["gap"] == pytest.approx(unit_gap, rel=1e-5) and raw_gap > 3 * unit_gap
    with pytest.raises(ValueError, match="config field 'protocol' must be one of"):
        geometry_runs.synthetic_protocol("raw")


@pytest.mark.parametrize("normalize_in_loss", [False, True])
def test_contrastive_sgd_aligns_spans_and_keeps_the_gap(normalize_in_loss):
    x, y = geometry.synthetic_embeddings(jax.random.PRNGKey(1), 100, 64, 5, 20)
    loss0 = float(geometry.contrastive_loss(x, y, 0.07))
    gap0 = geometry.gap_report(x, y, slice(25, 64))
    (xt, yt), losses = geometry.contrastive_sgd_chunk((x + 0, y + 0), 300, 0.07, 0.1,
                                                        normalize_in_loss)
    assert float(losses[-1]) < 0.2 * loss0
    xt, yt = np.asarray(geometry.normalize(xt)), np.asarray(geometry.normalize(yt))
    # Ineffective dims keep ~zero variance; the gap there is not closed.
    effective_var = min(xt[:, :5].var(0).mean(), yt[:, 5:25].var(0).mean())
    assert max(xt[:, 25:].var(0).max(), yt[:, 25:].var(0).max()) < 0.1 * effective_var
    assert geometry.gap_report(xt, yt, slice(25, 64))["gap_ineffective"] > 0.6 * gap0["gap_ineffective"]


def test_mlp_collapse_deeper_is_more_collapsed():
    out = geometry.mlp_collapse(jax.random.PRNGKey(0), num_inputs=400, width=128, depth=35,
                                every=5)
    dims = out["effective_dim"]
    assert out["layers"] == [0, 5, 10, 15, 20, 25, 30]
    x0 = np.asarray(jax.random.normal(jax.random.split(jax.random.PRNGKey(0))[0], (400, 128)))
    assert dims[0] == geometry.effective_dimension_of_spectrum(
        np.linalg.eigvalsh(np.cov(x0.T)), 0.99)
    assert all(a >= b for a, b in zip(dims[1:], dims[2:]))
    assert dims[-1] < dims[0] / 4


def test_mlp_collapse_measures_pre_activations():
    """Layer k is the k-th Linear's output before its ReLU (Xavier-uniform, no bias)."""
    n, width, depth, every = 300, 32, 6, 3
    out = geometry.mlp_collapse(jax.random.PRNGKey(1), n, width, depth, every)
    k_in, k_w = jax.random.split(jax.random.PRNGKey(1))
    z = np.asarray(jax.random.normal(k_in, (n, width)), np.float64)
    limit = np.sqrt(6 / (2 * width))
    weights = np.asarray(jax.random.uniform(k_w, (depth, width, width), jnp.float32,
                                            -limit, limit), np.float64)
    z = z @ weights[0]
    for w in weights[1:3]:
        z = np.maximum(z, 0) @ w
    assert out["layers"] == [0, 3]
    expected = np.linalg.svd(np.cov(z.T), compute_uv=False)
    np.testing.assert_allclose(out["spectra"][1], expected, rtol=1e-4, atol=1e-6 * expected[0])


def test_stable_region_margin_is_exact_for_tied_negatives():
    tau, delta = 0.07, 0.01
    for o in (1, 10, 499):
        r = geometry.required_margin(tau, delta, o)
        logits = np.r_[1.0, np.full(o, 1.0 - r), np.full(50, -1e3)] / tau
        loss = -(logits[0] - np.log(np.exp(logits - logits.max()).sum()) - logits.max())
        assert loss == pytest.approx(delta, rel=1e-9)
        assert geometry.margin_loss_bound(r, tau, o) == pytest.approx(delta, rel=1e-9)
    taus = np.linspace(0.01, 1, 50)
    assert np.all(np.diff(geometry.required_margin(taus, delta, 10)) > 0)


def test_orthogonal_shift():
    rng = np.random.default_rng(4)
    e = np.zeros((300, 32))
    e[:, :10] = rng.normal(size=(300, 10))
    c = geometry.orthogonal_shift(e, 0.6, jax.random.PRNGKey(0), gamma=1.0)
    assert np.linalg.norm(c) == pytest.approx(0.6)
    np.testing.assert_allclose(e @ c, 0, atol=1e-9)
    shifted = np.asarray(geometry.shift(jnp.asarray(e), jnp.asarray(c)))
    np.testing.assert_allclose(shifted.mean(0) - e.mean(0), c, atol=1e-6)
    with pytest.raises(ValueError, match="no orthogonal direction"):
        geometry.orthogonal_shift(rng.normal(size=(100, 8)), 1.0, jax.random.PRNGKey(0), 1.0)


def test_residual_structure_of_a_planted_spectrum_and_gap():
    """Residual spectrum, top-eigenvalue ratio, participation ratio and the mean gap's
    share of the gap energy against their closed forms, on pairs whose residual has an
    exact sample covariance and mean."""
    rng = np.random.default_rng(5)
    n, lam = 4000, np.array([8.0, 4.0] + [0.5] * 14) * 1e-3
    m = np.zeros(16)
    m[0], m[3] = 0.3, 0.4  # |m|^2 = 0.25
    y = rng.normal(size=(n, 16))
    x = y + _with_covariance(rng, n, lam) - 3.0 + m
    out = geometry.residual_structure(x.astype(np.float32), y.astype(np.float32), chunk=1000)
    np.testing.assert_allclose(out["residual_spectrum"], lam, rtol=2e-4, atol=1e-8)
    assert out["top_eigenvalue_ratio"] == pytest.approx(8e-3 / lam.mean(), rel=2e-4)
    assert out["residual_effective_dim"] == pytest.approx(lam.sum() ** 2 / (lam ** 2).sum(),
                                                          rel=2e-4)
    assert out["residual_effective_dim_fraction"] == pytest.approx(
        out["residual_effective_dim"] / 16)
    assert out["mean_gap_energy_share"] == pytest.approx(
        0.25 / (0.25 + lam.sum() * (n - 1) / n), rel=2e-4)


def test_subspace_overlap_and_covariance_eigenvectors():
    eye = np.eye(6)
    shifted = eye[:, [2, 3, 4, 5, 0, 1]]
    assert geometry.subspace_overlap(eye, shifted, [2, 4, 6]) == {2: 0.0, 4: 0.5, 6: 1.0}
    rng = np.random.default_rng(6)
    x = _with_covariance(rng, 3000, 2.0 ** -np.arange(5))
    values, vectors = geometry.covariance_eigh(x, chunk=700)
    np.testing.assert_allclose(values, 2.0 ** -np.arange(5), rtol=1e-4)
    cov = np.cov(x, rowvar=False)
    np.testing.assert_allclose(cov @ vectors, vectors * values, atol=1e-5)
    assert geometry.subspace_overlap(vectors, vectors, [3]) == {3: pytest.approx(1.0)}


def _clustered_pairs(rng, gap_of_cluster, per_cluster=300, dim=16, spread=0.05):
    """Pairs in len(gap_of_cluster) well-separated content clusters; x = y + its gap."""
    ys, gs = [], []
    for c, gap in enumerate(gap_of_cluster):
        center = np.zeros(dim)
        center[c] = 1.0
        ys.append(center + spread * rng.normal(size=(per_cluster, dim)))
        gs.append(np.broadcast_to(gap, (per_cluster, dim)))
    y = np.concatenate(ys)
    return y + np.concatenate(gs) + 1e-3 * rng.normal(size=y.shape), y


def test_gap_transfer_of_a_global_and_of_cluster_specific_gaps():
    rng = np.random.default_rng(7)
    dim, k = 16, 8
    common = np.zeros(dim)
    common[12] = 0.5
    x, y = _clustered_pairs(rng, [common] * k)
    out = geometry.gap_transfer(x, y, jax.random.PRNGKey(0), clusters=k)
    assert out["cos_estimate_held_out"]["mean"] > 0.999
    assert out["transfer_ratio"]["mean"] == pytest.approx(1.0, abs=1e-3)
    assert out["explained_by_own_mean"]["mean"] > 0.99
    # Each cluster its own gap, orthogonal to the others' and summing to zero overall.
    own = np.zeros((k, dim))
    for c in range(k // 2):
        own[2 * c, 8 + c] = own[2 * c + 1, 8 + c] = 0.5
        own[2 * c + 1, 8 + c] *= -1
    x, y = _clustered_pairs(rng, own)
    plain = geometry.gap_transfer(x, y, jax.random.PRNGKey(1), clusters=k)
    assert plain["pairs"] == len(x) and plain["splits"] == 10
    assert plain["transfer_ratio"]["mean"] < 0.2
    assert plain["explained_by_estimate"]["mean"] <= 0.05


def test_linear_readout_reads_what_the_embeddings_carry():
    """Ridge one-vs-rest against numpy's lstsq on the ridge-augmented system (the same
    minimizer, solved another way); separable clusters read perfectly, labels unrelated to
    the embeddings read near chance, and rows labelled -1 are left out."""
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(4, 16)) * 3
    labels = rng.integers(0, 4, 600)
    x = centres[labels] + rng.normal(size=(600, 16))
    assert geometry.linear_readout(x[:400], labels[:400], x[400:], labels[400:]) == 1.0
    shuffled = rng.permutation(labels)
    assert abs(geometry.linear_readout(x[:400], shuffled[:400], x[400:], shuffled[400:])
               - 0.25) < 0.1
    # lstsq on [A; sqrt(ridge) I] against [Y; 0]: the same ridge solution
    noisy = centres[labels] + 4 * rng.normal(size=(600, 16))
    unit = noisy / np.linalg.norm(noisy, axis=1, keepdims=True)
    a = np.c_[unit[:400], np.ones(400)]
    y = (labels[:400, None] == np.arange(4)).astype(float)
    w = np.linalg.lstsq(np.r_[a, np.sqrt(0.5) * np.eye(17)], np.r_[y, np.zeros((17, 4))],
                        rcond=None)[0]
    want = np.mean((np.c_[unit[400:], np.ones(200)] @ w).argmax(1) == labels[400:])
    got = geometry.linear_readout(noisy[:400], labels[:400], noisy[400:], labels[400:], 0.5)
    assert 0.3 < got < 1.0 and got == pytest.approx(want)
    masked = labels.copy()
    masked[400:500] = -1
    assert geometry.linear_readout(noisy[:400], labels[:400], noisy[500:], labels[500:], 0.5) == \
        geometry.linear_readout(noisy[:400], labels[:400], noisy[400:], masked[400:], 0.5)
    assert np.isnan(geometry.linear_readout(x[:10], labels[:10], x[:3], -np.ones(3)))
