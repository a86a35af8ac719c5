"""FID, Inception Score and the FID Inception-v3 against scipy, closed forms and PyTorch."""
import jax
import numpy as np
import pytest
import scipy.linalg

from c3_jax.eval import image_metrics as im
from c3_jax.models import inception as inc
from conftest import random_state_dict

torch = pytest.importorskip("torch")
F = torch.nn.functional


# --- Fréchet distance ------------------------------------------------------------------------

def _gaussian_stats(rng, d, n=400):
    x = rng.normal(size=(n, d)) @ rng.normal(size=(d, d)) + rng.normal(size=d)
    return x.mean(0), np.cov(x, rowvar=False)


def _pytorch_fid_formula(mu1, s1, mu2, s2):
    covmean = scipy.linalg.sqrtm(s1 @ s2).real
    diff = mu1 - mu2
    return diff @ diff + np.trace(s1) + np.trace(s2) - 2 * np.trace(covmean)


@pytest.mark.parametrize("d", [8, 64])
def test_frechet_distance_matches_scipy_sqrtm(d):
    rng = np.random.default_rng(d)
    a, b = _gaussian_stats(rng, d), _gaussian_stats(rng, d)
    np.testing.assert_allclose(im.frechet_distance(*a, *b), _pytorch_fid_formula(*a, *b),
                               rtol=1e-6)


def test_frechet_distance_zero_for_identical_stats():
    rng = np.random.default_rng(0)
    mu, sigma = _gaussian_stats(rng, 64)
    assert abs(im.frechet_distance(mu, sigma, mu, sigma)) < 1e-9 * np.trace(sigma)
    # Rank-deficient covariance (fewer samples than dimensions), as with small FID sets.
    x = rng.normal(size=(10, 32))
    mu, sigma = x.mean(0), np.cov(x, rowvar=False)
    assert abs(im.frechet_distance(mu, sigma, mu, sigma)) < 1e-9 * np.trace(sigma)


def test_frechet_distance_closed_form_diagonal():
    rng = np.random.default_rng(1)
    mu1, mu2 = rng.normal(size=16), rng.normal(size=16)
    s1, s2 = rng.uniform(0.1, 3, 16), rng.uniform(0.1, 3, 16)
    want = np.sum((mu1 - mu2) ** 2) + np.sum(s1 + s2 - 2 * np.sqrt(s1 * s2))
    np.testing.assert_allclose(im.frechet_distance(mu1, np.diag(s1), mu2, np.diag(s2)), want,
                               rtol=1e-12)
    assert im.frechet_distance(1.0, 4.0, 3.0, 1.0) == pytest.approx(4 + (2 - 1) ** 2)


def test_frechet_distance_rejects_bad_input():
    with pytest.raises(ValueError, match="widths differ"):
        im.frechet_distance(np.zeros(3), np.eye(3), np.zeros(4), np.eye(4))
    with pytest.raises(ValueError, match="covariance"):
        im.frechet_distance(np.zeros(3), np.eye(4), np.zeros(3), np.eye(3))
    with pytest.raises(ValueError, match="NaN"):
        im.frechet_distance(np.full(3, np.nan), np.eye(3), np.zeros(3), np.eye(3))


# --- streaming feature statistics ------------------------------------------------------------

def test_feature_stats_match_numpy_and_round_trip(tmp_path):
    rng = np.random.default_rng(2)
    batches = [1e3 + rng.normal(size=(n, 12)).astype(np.float32) for n in (7, 1, 30, 0, 12)]
    x = np.concatenate(batches).astype(np.float64)
    stats = im.FeatureStats()
    for b in batches:
        stats.update(b)
    assert stats.count == len(x) and stats.dim == 12
    np.testing.assert_allclose(stats.mean(), x.mean(0), rtol=1e-12)
    np.testing.assert_allclose(stats.cov(), np.cov(x, rowvar=False), rtol=1e-9, atol=1e-12)
    np.savez(tmp_path / "stats.npz", **stats.state())
    restored = im.FeatureStats.from_state(np.load(tmp_path / "stats.npz"))
    assert restored.count == stats.count
    np.testing.assert_array_equal(restored.cov(), stats.cov())
    half = im.FeatureStats().update(x[:20]).merge(im.FeatureStats().update(x[20:]))
    np.testing.assert_allclose(half.cov(), np.cov(x, rowvar=False), rtol=1e-9, atol=1e-12)
    empty = im.FeatureStats.from_state(im.FeatureStats(12).state())
    assert empty.count == 0 and empty.dim == 12


def test_feature_stats_errors():
    stats = im.FeatureStats(4)
    with pytest.raises(ValueError, match="empty"):
        stats.mean()
    with pytest.raises(ValueError, match=r"\[batch, 4\]"):
        stats.update(np.zeros((2, 5)))
    with pytest.raises(ValueError, match="NaN"):
        stats.update(np.array([[0, 1, np.inf, 0]]))
    with pytest.raises(ValueError, match="at least 2"):
        stats.update(np.zeros((1, 4))).cov()


def test_feature_statistics_and_frechet_of_stats():
    rng = np.random.default_rng(3)
    w = rng.normal(size=(6, 5)).astype(np.float32)
    fn = jax.jit(lambda x: x @ w)
    a, b = rng.normal(size=(40, 6)), 0.5 + rng.normal(size=(30, 6))
    sa = im.feature_statistics(fn, np.split(a.astype(np.float32), 4), desc="a")
    sb = im.feature_statistics(lambda x: (fn(x), None), np.split(b.astype(np.float32), 3))
    fa, fb = a @ w, b @ w
    want = _pytorch_fid_formula(fa.mean(0), np.cov(fa, rowvar=False),
                                fb.mean(0), np.cov(fb, rowvar=False))
    np.testing.assert_allclose(im.frechet_distance_of_stats(sa, sb), want, rtol=1e-5)


# --- Inception Score -------------------------------------------------------------------------

def _salimans_is(p, splits):
    """The original Inception Score loop (Salimans et al.'s TensorFlow code)."""
    scores = []
    for i in range(splits):
        part = p[i * len(p) // splits:(i + 1) * len(p) // splits]
        kl = part * (np.log(part) - np.log(np.mean(part, 0, keepdims=True)))
        scores.append(np.exp(np.mean(np.sum(kl, 1))))
    return np.mean(scores), np.std(scores)


def test_inception_score_closed_forms():
    assert im.inception_score(np.full((50, 1008), 1 / 1008)) == pytest.approx((1.0, 0.0))
    assert im.inception_score(np.zeros((50, 7)), splits=5) == pytest.approx((1.0, 0.0))  # logits
    k = 8
    one_hot = np.eye(k)[np.tile(np.arange(k), 10)]  # every split holds each class equally often
    assert im.inception_score(one_hot, splits=10) == pytest.approx((k, 0.0))
    assert im.inception_score(np.log(one_hot + 1e-30), splits=5, probs=False)[0] == \
        pytest.approx(k, rel=1e-6)


def test_inception_score_matches_original_formula():
    logits = np.random.default_rng(4).normal(scale=3, size=(103, 20))
    p = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    want = _salimans_is(p, 4)
    np.testing.assert_allclose(im.inception_score(logits, splits=4), want, rtol=1e-10)
    np.testing.assert_allclose(im.inception_score(p, splits=4), want, rtol=1e-10)
    with pytest.raises(ValueError, match="splits"):
        im.inception_score(logits[:3], splits=10)


# --- the FID Inception-v3 --------------------------------------------------------------------

def _t_conv(sd, name, x, stride=1, padding=0):
    x = F.conv2d(x, sd[f"{name}.conv.weight"], stride=stride, padding=padding)
    x = F.batch_norm(x, sd[f"{name}.bn.running_mean"], sd[f"{name}.bn.running_var"],
                     sd[f"{name}.bn.weight"], sd[f"{name}.bn.bias"], False, 0.0, 0.001)
    return F.relu(x)


def _torch_fid_inception(sd, images):
    """pytorch-fid's InceptionV3 forward (NCHW, [0, 1]) in functional torch: pool3, logits."""
    def conv(name, x, **kw):
        return _t_conv(sd, name, x, **kw)

    def avg(x):
        return F.avg_pool2d(x, 3, 1, 1, count_include_pad=False)

    def block_a(m, x):
        b5 = conv(f"{m}.branch5x5_2", conv(f"{m}.branch5x5_1", x), padding=2)
        bd = conv(f"{m}.branch3x3dbl_2", conv(f"{m}.branch3x3dbl_1", x), padding=1)
        return torch.cat([conv(f"{m}.branch1x1", x), b5, conv(f"{m}.branch3x3dbl_3", bd, padding=1),
                          conv(f"{m}.branch_pool", avg(x))], 1)

    def block_c(m, x):
        row, col = dict(padding=(0, 3)), dict(padding=(3, 0))
        b7 = conv(f"{m}.branch7x7_2", conv(f"{m}.branch7x7_1", x), **row)
        b7 = conv(f"{m}.branch7x7_3", b7, **col)
        bd = conv(f"{m}.branch7x7dbl_1", x)
        for j, pad in ((2, col), (3, row), (4, col), (5, row)):
            bd = conv(f"{m}.branch7x7dbl_{j}", bd, **pad)
        return torch.cat([conv(f"{m}.branch1x1", x), b7, bd, conv(f"{m}.branch_pool", avg(x))], 1)

    def block_e(m, x, pool):
        pair = lambda y, a, b: torch.cat([conv(f"{m}.{a}", y, padding=(0, 1)),
                                          conv(f"{m}.{b}", y, padding=(1, 0))], 1)
        b3 = pair(conv(f"{m}.branch3x3_1", x), "branch3x3_2a", "branch3x3_2b")
        bd = conv(f"{m}.branch3x3dbl_2", conv(f"{m}.branch3x3dbl_1", x), padding=1)
        bd = pair(bd, "branch3x3dbl_3a", "branch3x3dbl_3b")
        return torch.cat([conv(f"{m}.branch1x1", x), b3, bd, conv(f"{m}.branch_pool", pool(x))], 1)

    x = 2 * F.interpolate(images, size=(299, 299), mode="bilinear", align_corners=False) - 1
    x = conv("Conv2d_2a_3x3", conv("Conv2d_1a_3x3", x, stride=2))
    x = F.max_pool2d(conv("Conv2d_2b_3x3", x, padding=1), 3, 2)
    x = F.max_pool2d(conv("Conv2d_4a_3x3", conv("Conv2d_3b_1x1", x)), 3, 2)
    for m in ("Mixed_5b", "Mixed_5c", "Mixed_5d"):
        x = block_a(m, x)
    bd = conv("Mixed_6a.branch3x3dbl_2", conv("Mixed_6a.branch3x3dbl_1", x), padding=1)
    x = torch.cat([conv("Mixed_6a.branch3x3", x, stride=2),
                   conv("Mixed_6a.branch3x3dbl_3", bd, stride=2), F.max_pool2d(x, 3, 2)], 1)
    for m in ("Mixed_6b", "Mixed_6c", "Mixed_6d", "Mixed_6e"):
        x = block_c(m, x)
    b3 = conv("Mixed_7a.branch3x3_2", conv("Mixed_7a.branch3x3_1", x), stride=2)
    b7 = conv("Mixed_7a.branch7x7x3_2", conv("Mixed_7a.branch7x7x3_1", x), padding=(0, 3))
    b7 = conv("Mixed_7a.branch7x7x3_3", b7, padding=(3, 0))
    x = torch.cat([b3, conv("Mixed_7a.branch7x7x3_4", b7, stride=2), F.max_pool2d(x, 3, 2)], 1)
    x = block_e("Mixed_7b", x, avg)
    x = block_e("Mixed_7c", x, lambda y: F.max_pool2d(y, 3, 1, 1))
    pool3 = F.adaptive_avg_pool2d(x, 1).flatten(1)
    return pool3, pool3 @ sd["fc.weight"].T


@pytest.fixture(scope="module")
def fid_weights(tmp_path_factory):
    """A pytorch-fid weights file with random values, its state dict and the loaded model."""
    sd = random_state_dict()
    path = str(tmp_path_factory.mktemp("fid") / inc.WEIGHTS_FILE)
    torch.save(sd, path)
    module, variables = inc.load_fid_inception(path)
    return path, sd, module, variables, inc.make_feature_fn(module, variables, (0.0, 1.0))


@pytest.mark.slow
def test_inception_matches_torch_reference(fid_weights):
    _, sd, _, _, feature_fn = fid_weights
    images = np.random.default_rng(5).uniform(size=(2, 64, 64, 3)).astype(np.float32)
    features, logits = feature_fn(images)
    assert features.shape == (2, inc.FEATURE_DIM) and logits.shape == (2, inc.NUM_CLASSES)
    with torch.no_grad():
        ref_f, ref_l = _torch_fid_inception(sd, torch.from_numpy(images).permute(0, 3, 1, 2))
    for ours, ref in ((features, ref_f), (logits, ref_l)):
        ref = ref.numpy()
        np.testing.assert_allclose(np.asarray(ours), ref, rtol=1e-4, atol=1e-4 * np.abs(ref).max())
    # uint8 input maps through /255 like pytorch-fid's ToTensor.
    as_uint8 = (images * 255).round().astype(np.uint8)
    from_uint8, from_float = feature_fn(as_uint8)[0], feature_fn(as_uint8 / 255.0)[0]
    np.testing.assert_allclose(from_uint8, from_float, rtol=1e-4,
                               atol=1e-5 * np.abs(from_float).max())


@pytest.mark.parametrize("size", [32, 320])
def test_preprocess_resize_matches_torch_interpolate(size):
    images = np.random.default_rng(size).uniform(-1, 1, (1, size, size, 3)).astype(np.float32)
    ours = np.asarray(inc.preprocess(images))
    ref = F.interpolate(torch.from_numpy((images + 1) / 2).permute(0, 3, 1, 2), size=(299, 299),
                        mode="bilinear", align_corners=False) * 2 - 1
    np.testing.assert_allclose(ours, ref.permute(0, 2, 3, 1).numpy(), atol=1e-5)
    with pytest.raises(ValueError, match="NHWC"):
        inc.preprocess(images.transpose(0, 3, 1, 2))


@pytest.mark.slow
def test_loader_maps_torch_layout(fid_weights, tmp_path):
    _, sd, module, variables, _ = fid_weights
    p, stats = variables["params"], variables["batch_stats"]
    np.testing.assert_array_equal(p["Conv2d_1a_3x3"]["conv"]["kernel"],
                                  sd["Conv2d_1a_3x3.conv.weight"].permute(2, 3, 1, 0).numpy())
    kernel = sd["Mixed_6b.branch7x7_2.conv.weight"].numpy()
    np.testing.assert_array_equal(p["Mixed_6b"]["branch7x7_2"]["conv"]["kernel"],
                                  kernel.transpose(2, 3, 1, 0))
    np.testing.assert_array_equal(p["Mixed_5b"]["branch1x1"]["bn"]["scale"],
                                  sd["Mixed_5b.branch1x1.bn.weight"].numpy())
    np.testing.assert_array_equal(stats["Mixed_7c"]["branch_pool"]["bn"]["var"],
                                  sd["Mixed_7c.branch_pool.bn.running_var"].numpy())
    np.testing.assert_array_equal(p["fc"]["kernel"], sd["fc.weight"].numpy().T)
    np.testing.assert_array_equal(p["fc"]["bias"], sd["fc.bias"].numpy())
    from safetensors.numpy import save_file
    arrays = {k: v.numpy() for k, v in sd.items() if "num_batches" not in k}
    save_file(arrays, str(tmp_path / "fid.safetensors"))
    _, again = inc.load_fid_inception(str(tmp_path / "fid.safetensors"))
    np.testing.assert_array_equal(again["params"]["Mixed_7b"]["branch3x3_2a"]["conv"]["kernel"],
                                  p["Mixed_7b"]["branch3x3_2a"]["conv"]["kernel"])
    # The fc bias enters the logits only when asked for (the Inception Score omits it).
    biased = inc.FIDInceptionV3(logits_bias=True)
    difference = jax.jit(lambda v, x: biased.apply(v, x)[1] - module.apply(v, x)[1])
    np.testing.assert_allclose(difference(variables, np.zeros((1, 75, 75, 3), np.float32)),
                               sd["fc.bias"].numpy()[None], atol=1e-5)


@pytest.mark.slow
def test_loader_errors(fid_weights, tmp_path):
    _, sd, _, _, _ = fid_weights
    arrays = {k: v.numpy() for k, v in sd.items()}
    missing = dict(arrays)
    del missing["Mixed_6b.branch7x7_2.bn.running_var"]
    np.savez(tmp_path / "missing.npz", **missing)
    with pytest.raises(ValueError, match=r"missing\.npz.*Mixed_6b\.branch7x7_2\.bn\.running_var"):
        inc.load_fid_inception(str(tmp_path / "missing.npz"))
    with pytest.raises(ValueError, match=r"'fc\.weight' has shape \(1000, 2048\)"):
        inc.convert_state_dict({**arrays, "fc.weight": np.zeros((1000, 2048), np.float32)})
    with pytest.raises(ValueError, match="unexpected tensors.*AuxLogits"):
        inc.convert_state_dict({**arrays, "AuxLogits.fc.weight": np.zeros((1000, 768))})
    with pytest.raises(FileNotFoundError, match=r"pt_inception-2015-12-05-6726825d\.pth.*"
                                                r"github\.com/mseitzer/pytorch-fid"):
        inc.load_fid_inception(str(tmp_path / "absent.pth"))
    with pytest.raises(ValueError, match="H, W >= 75"):
        inc.FIDInceptionV3().apply(fid_weights[3], np.zeros((1, 64, 64, 3), np.float32))


@pytest.mark.slow
def test_inception_statistics_and_fid(fid_weights):
    _, _, _, _, feature_fn = fid_weights
    rng = np.random.default_rng(6)
    batches = [rng.uniform(size=(2, 64, 64, 3)).astype(np.float32) for _ in range(3)]
    stats, (is_mean, is_std) = im.inception_statistics(batches, feature_fn, splits=3)
    features, logits = zip(*(feature_fn(b) for b in batches))
    features, logits = np.concatenate(features), np.concatenate(logits)
    assert stats.count == 6
    np.testing.assert_allclose(stats.mean(), features.mean(0), rtol=1e-6, atol=1e-9)
    assert (is_mean, is_std) == pytest.approx(im.inception_score(logits, splits=3))
    # 64 of the 2048 features keep the Fréchet distance (two 2048-d eigh on 2 cores) cheap here.
    narrow = lambda images: (lambda f, l: (f[:, :64], l))(*feature_fn(images))
    out = im.fid_inception(batches, batches[::-1], narrow, splits=3)
    assert abs(out["fid"]) < 1e-9 * np.trace(stats.cov()[:64, :64])  # same images, other order
    assert out["count"] == out["reference_count"] == 6
    assert out["inception_score"] == pytest.approx(is_mean)
