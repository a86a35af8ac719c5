import math

import numpy as np
import pytest

from c3_jax.world import probe as sp
from c3_jax.world import scenes


@pytest.fixture(scope="module")
def trained():
    train = scenes.generate("train", 0, 3000, seed=0, image_size=32)
    return sp.train_probe(train["image"], train, steps=800, batch_size=64, seed=0,
                          progress=False)


@pytest.mark.slow
def test_probe_on_held_out_test_images_is_far_above_chance(trained):
    test = scenes.generate("test", 0, 500, seed=0, image_size=32)
    acc = sp.probe_accuracy(trained, test["image"], test)
    chance = scenes.chance_accuracy(test)
    assert set(acc) == set(chance)
    for k in ("shape", "color"):
        assert acc[k] >= 0.9, (k, acc)
    for k in ("shape2", "color2"):  # two small objects: harder, and ~150 scenes only
        assert acc[k] >= 0.85, (k, acc)
    for k in ("size", "position", "relation", "num_objects"):
        assert acc[k] >= 0.97, (k, acc)
    assert acc["mean"] >= 0.95, acc
    assert acc["exact_match"] >= 0.85, acc
    for k in acc:  # at most a fifth of the errors of always guessing the commonest value
        assert 1 - acc[k] <= 0.2 * (1 - chance[k]), (k, acc[k], chance[k])
    # predict: one entry per image whatever the batching, num_objects in {1, 2}.
    a = sp.predict(trained, test["image"][:7], batch_size=3)
    b = sp.predict(trained, test["image"][:7], batch_size=500)
    for k in sp.HEADS:
        assert a[k].shape == (7,)
        np.testing.assert_array_equal(a[k], b[k])
    assert set(np.unique(b["num_objects"])) <= {1, 2}


@pytest.mark.slow
def test_probe_accuracy_is_one_when_predictions_are_the_truth(trained, monkeypatch):
    test = scenes.generate("test", 0, 60, seed=3, image_size=32)

    def oracle(probe, images, batch_size=500):
        assert images is test["image"]
        # The true value where it applies; any class where it does not.
        return {k: np.where(test[k] < 0, 0, test[k]) for k in sp.HEADS}

    monkeypatch.setattr(sp, "predict", oracle)
    acc = sp.probe_accuracy(trained, test["image"], test)
    assert set(acc) == {*scenes.ATTRIBUTES, "num_objects", "exact_match", "mean"}
    assert all(v == 1.0 for v in acc.values()), acc


# Hand-made case.  Ids: shape circle=0 square=1 triangle=2; color red=0 green=1 blue=2;
# size small=0 large=1; position left=0 right=1 center=4; relation left_of=0 above=1.
TRUTH = {
    "num_objects": np.array([1, 1, 2, 2]),
    "shape":       np.array([0, 1, 2, 0]),
    "color":       np.array([0, 1, 2, 0]),
    "size":        np.array([0, 1, -1, -1]),
    "position":    np.array([0, 4, -1, -1]),
    "shape2":      np.array([-1, -1, 1, 1]),
    "color2":      np.array([-1, -1, 0, 2]),
    "relation":    np.array([-1, -1, 0, 1]),
}
PRED = {
    "num_objects": np.array([1, 2, 2, 2]),  # scene 1: wrong count
    "shape":       np.array([0, 1, 2, 2]),  # scene 3 wrong
    "color":       np.array([1, 1, 2, 0]),  # scene 0 wrong
    "size":        np.array([0, 1, 1, 0]),  # scenes 2, 3: n/a, ignored
    "position":    np.array([0, 1, 3, 3]),  # scene 1 wrong; 2, 3 ignored
    "shape2":      np.array([4, 0, 1, 1]),  # scenes 0, 1 ignored
    "color2":      np.array([5, 5, 0, 2]),
    "relation":    np.array([1, 1, 0, 1]),
}


def test_prediction_accuracy_matches_a_hand_computation():
    acc = sp.prediction_accuracy(PRED, TRUTH)
    expected = {"shape": 3 / 4, "color": 3 / 4, "size": 2 / 2, "position": 1 / 2,
                "shape2": 2 / 2, "color2": 2 / 2, "relation": 2 / 2, "num_objects": 3 / 4,
                # scene 0: color wrong; 1: count and position wrong; 2: all right;
                # 3: shape wrong.
                "exact_match": 1 / 4}
    expected["mean"] = (3 / 4 + 3 / 4 + 1 + 1 / 2 + 1 + 1 + 1) / 7
    assert acc.keys() == expected.keys()
    for k, v in expected.items():
        assert acc[k] == pytest.approx(v), k
    # Names and None are accepted as well as ids; -1 predictions are wrong where applicable.
    names = {k: [scenes.decode_attributes(TRUTH, i)[k] for i in range(4)] for k in TRUTH}
    assert sp.prediction_accuracy(PRED, names) == acc
    blank = {k: np.where(np.arange(4) == 0, -1, v) if k == "color" else v
             for k, v in TRUTH.items()}
    assert sp.prediction_accuracy(blank, TRUTH)["color"] == pytest.approx(3 / 4)
    # An attribute that applies nowhere is NaN and left out of the mean.
    one = {k: v[:2] for k, v in TRUTH.items()}
    acc1 = sp.prediction_accuracy({k: v[:2] for k, v in PRED.items()}, one)
    assert all(math.isnan(acc1[k]) for k in ("shape2", "color2", "relation"))
    assert acc1["mean"] == pytest.approx((1 + 1 / 2 + 1 + 1 / 2) / 4)


def _caption(pred: dict, i: int) -> str:
    """A caption stating the predicted attributes of scene i (None words left out)."""
    a = scenes.decode_attributes(pred, i)
    word = lambda k: a[k] or ""
    if a["num_objects"] == 2:
        rel = {"left_of": "to the left of", "above": "above"}[a["relation"]]
        return f"a {word('color')} {a['shape']} {rel} a {word('color2')} {a['shape2']}."
    where = f" on the {a['position']}" if a["position"] else ""
    return f"a {word('size')} {word('color')} {a['shape']}{where}."


def test_prediction_accuracy_agrees_with_caption_attribute_accuracy():
    """Predictions written as captions score the same under scenes.attribute_accuracy."""
    truth = scenes.generate("val", 0, 300, seed=1, image_size=16)
    rng = np.random.default_rng(0)
    n = len(truth["num_objects"])
    count = np.where(rng.random(n) < 0.8, truth["num_objects"], 3 - truth["num_objects"])
    pred = {"num_objects": count}
    for k in scenes.ATTRIBUTES:
        applies = np.isin(k, scenes.ONE_OBJECT_ATTRIBUTES) & (count == 1) | \
            np.isin(k, scenes.TWO_OBJECT_ATTRIBUTES) & (count == 2)
        guess = rng.integers(0, len(scenes.VOCAB[k]), n)
        keep = (truth[k] >= 0) & (rng.random(n) < 0.7)
        value = np.where(keep, truth[k], guess)
        if k not in ("shape", "shape2", "relation"):  # a caption needs these words
            value = np.where(rng.random(n) < 0.1, -1, value)
        pred[k] = np.where(applies, value, -1)
    captions = [_caption(pred, i) for i in range(n)]
    ours = sp.prediction_accuracy(pred, truth)
    ref = scenes.attribute_accuracy(captions, truth)
    assert ours.keys() == ref.keys()
    for k in ref:
        assert ours[k] == pytest.approx(ref[k]), k
    assert 0.3 < ours["mean"] < 0.95 and ours["exact_match"] < 0.5  # a non-trivial case


def test_mirror_labels_by_hand():
    images = np.arange(4 * 2 * 3 * 3, dtype=np.uint8).reshape(4, 2, 3, 3)
    m_images, m = sp.mirror(images, TRUTH)
    np.testing.assert_array_equal(m_images[:, :, 0], images[:, :, 2])
    np.testing.assert_array_equal(m["position"], [1, 4, -1, -1])  # left -> right
    # Scene 2 (left_of) swaps its objects; scene 3 (above) does not.
    np.testing.assert_array_equal(m["shape"], [0, 1, 1, 0])
    np.testing.assert_array_equal(m["shape2"], [-1, -1, 2, 1])
    np.testing.assert_array_equal(m["color"], [0, 1, 0, 0])
    np.testing.assert_array_equal(m["color2"], [-1, -1, 2, 2])
    for k in ("num_objects", "size", "relation"):
        np.testing.assert_array_equal(m[k], TRUTH[k])


def test_mirror_of_a_scene_is_the_world_scene_with_mirrored_attributes():
    """Noise-free one-object scenes whose mirror image is also drawn by the world."""
    d = scenes.generate("train", 0, 6000, seed=0, image_size=32, two_object_fraction=0.0,
                        noise=False)
    index = {img.tobytes(): i for i, img in enumerate(d["image"])}
    m_images, m = sp.mirror(d["image"], {k: d[k] for k in sp.HEADS})
    matches = 0
    for i, img in enumerate(m_images):
        j = index.get(np.ascontiguousarray(img).tobytes())
        if j is not None:
            matches += 1
            assert {k: int(d[k][j]) for k in sp.HEADS} == {k: int(m[k][i]) for k in sp.HEADS}
    assert matches >= 200


def test_bad_inputs_are_named(trained):
    train = scenes.generate("train", 0, 8, seed=0, image_size=16)
    with pytest.raises(ValueError, match="uint8"):
        sp.train_probe(train["image"].astype(np.float32), train, steps=1, progress=False)
    with pytest.raises(ValueError, match="lack"):
        sp.train_probe(train["image"], {"shape": train["shape"]}, steps=1, progress=False)
    with pytest.raises(ValueError, match="entries"):
        sp.train_probe(train["image"][:4], train, steps=1, progress=False)
    with pytest.raises(ValueError, match="32x32"):
        sp.predict(trained, train["image"])
    with pytest.raises(ValueError, match="1 or 2"):
        sp.train_probe(train["image"], {**train, "num_objects": train["num_objects"] + 1},
                       steps=1, progress=False)
