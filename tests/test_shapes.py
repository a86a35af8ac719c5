"""Shapes world: determinism, split disjointness, captions <-> parser, accuracy, pixels, TFDS."""
import re

import numpy as np
import pytest

from c3_jax.data import builders
from c3_jax.world import scenes as sh


def _one(shape, color, size, position):
    return {"num_objects": 1, "shape": shape, "color": color, "size": size,
            "position": position, "shape2": None, "color2": None, "relation": None}


def _two(shape, color, relation, shape2, color2):
    return {"num_objects": 2, "shape": shape, "color": color, "size": None, "position": None,
            "shape2": shape2, "color2": color2, "relation": relation}


def _columns(rows):
    """Attribute dicts (names) -> integer arrays like generate()'s."""
    out = {"num_objects": np.array([r["num_objects"] for r in rows])}
    for k in sh.ATTRIBUTES:
        out[k] = np.array([sh.VOCAB[k].index(r[k]) if r[k] is not None else -1 for r in rows])
    return out


def test_scenes_are_deterministic_and_generate_matches_scene():
    img, caps, attrs = sh.scene("test", 7)
    img2, caps2, attrs2 = sh.scene("test", 7)
    assert img.dtype == np.uint8 and img.shape == (32, 32, 3)
    np.testing.assert_array_equal(img, img2)
    assert caps == caps2 and attrs == attrs2
    assert len(caps) == 5 and len(set(caps)) == 5
    for c in caps:
        assert c == c.lower() and c.endswith(".") and not c.endswith(" .") and "  " not in c
    d = sh.generate("test", 5, 4)
    assert d["image"].shape == (4, 32, 32, 3) and d["image"].dtype == np.uint8
    np.testing.assert_array_equal(d["image"][2], img)
    assert d["captions"][2] == caps and sh.decode_attributes(d, 2) == attrs
    assert not np.array_equal(d["image"][1], img)  # index 6
    assert not np.array_equal(sh.scene("test", 7, seed=1)[0], img)
    # 64 px: the same scene (layout, attributes, captions), drawn at twice the resolution.
    img64, caps64, attrs64 = sh.scene("test", 7, image_size=64)
    assert img64.dtype == np.uint8 and img64.shape == (64, 64, 3)
    assert caps64 == caps and attrs64 == attrs
    d32 = sh.generate("val", 0, 50, noise=False)
    d64 = sh.generate("val", 0, 50, image_size=64, noise=False)
    np.testing.assert_array_equal(d32["layout"], d64["layout"])
    down = d64["image"].astype(float).reshape(50, 32, 2, 32, 2, 3).mean((2, 4))
    assert np.mean(np.abs(down - d32["image"]).max(-1) > 40) < 0.05  # only edge pixels differ
    with pytest.raises(ValueError, match="unknown split"):
        sh.scene("training", 0)


def test_two_object_fraction():
    assert (sh.generate("train", 0, 50, two_object_fraction=0.0)["num_objects"] == 1).all()
    assert (sh.generate("train", 0, 50, two_object_fraction=1.0)["num_objects"] == 2).all()
    frac = np.mean(sh.generate("connect", 0, 1000)["num_objects"] == 2)
    assert 0.25 < frac < 0.35


def test_splits_are_disjoint_but_share_attribute_combinations():
    n = 400
    data = {s: sh.generate(s, 0, n, noise=False) for s in sh.SPLITS}
    layouts = {s: set(d["layout"].tolist()) for s, d in data.items()}
    images = {s: {im.tobytes() for im in d["image"]} for s, d in data.items()}
    for i, a in enumerate(sh.SPLITS):
        assert (sh._split_of(data[a]["layout"].astype(np.uint64)) == i).all()
        for b in sh.SPLITS[i + 1:]:
            assert not layouts[a] & layouts[b], (a, b)
            assert not images[a] & images[b], (a, b)  # not even the noise-free images
    # Another seed samples other scenes from the same per-split layout sets.
    other = sh.generate("train", 0, n, seed=3, noise=False)
    assert not set(other["layout"].tolist()) & (layouts["connect"] | layouts["test"])
    for d in data.values():
        for k in ("shape", "color", "position"):
            assert set(d[k][d[k] >= 0].tolist()) == set(range(len(sh.VOCAB[k])))


def test_every_one_object_combination_has_layouts_in_every_split():
    """Exhaustive over the 300 combinations: the split partition never empties one."""
    ja, jc, tint = np.meshgrid(np.arange(5), np.arange(5), np.arange(len(sh.BACKGROUNDS)),
                               indexing="ij")
    k = ja.size
    words = np.zeros((300, k, 5), np.uint32)
    words[..., 0], words[..., 1], words[..., 4] = ja.ravel(), jc.ravel(), tint.ravel()
    combos = np.array(np.meshgrid(range(5), range(6), range(2), range(5),
                                  indexing="ij")).reshape(4, -1)
    sem = dict(zip(("shape", "color", "size", "position"), combos))
    sem |= {"pair": np.zeros(300, int), "axis": np.zeros(300, int)}
    codes = sh._layout(words, np.zeros(300, bool), sem)["code"]
    for i in range(300):
        distinct = np.unique(codes[i])
        assert len(distinct) == (150 if sem["size"][i] == 0 else 54)
        assert np.bincount(sh._split_of(distinct), minlength=4).min() >= 5


def _consume(text, phrases, seen):
    for p in sorted(phrases, key=len, reverse=True):  # "to the left of" before "left of"
        if re.search(rf"\b{p}\b", text):
            seen.add(p)
            text = re.sub(rf"\b{p}\b", "|", text)
    return text


def test_every_caption_parses_back_to_the_ground_truth():
    d = sh.generate("train", 0, 1500)
    seen_templates = {1: set(), 2: set()}
    seen_tokens, seen_phrases = set(), set()
    for i in range(1500):
        truth = sh.decode_attributes(d, i)
        caps = d["captions"][i]
        assert len(set(caps)) == 5
        seen_templates[truth["num_objects"]].update(d["template"][i].tolist())
        for c in caps:
            assert sh.parse_caption(c) == truth, (c, truth)
            seen_tokens.update(re.findall(r"[a-z]+", c))
            if truth["num_objects"] == 1:
                _consume(c, [p for ps in sh.POSITION_PHRASES.values() for p in ps], seen_phrases)
            else:
                _consume(c, [p for ps in sh.RELATION_PHRASES.values() for p in ps], seen_phrases)
    assert seen_templates[1] == set(range(len(sh.ONE_OBJECT_TEMPLATES)))
    assert seen_templates[2] == set(range(len(sh.TWO_OBJECT_TEMPLATES)))
    for synonyms in (sh.SHAPE_SYNONYMS, sh.COLOR_SYNONYMS, sh.SIZE_SYNONYMS):
        for words in synonyms.values():
            assert {w.split()[0] for w in words} <= seen_tokens
    for phrases in list(sh.POSITION_PHRASES.values()) + list(sh.RELATION_PHRASES.values()):
        assert set(phrases) <= seen_phrases
    # The ground truth's own captions score 100 %.
    acc = sh.attribute_accuracy([c[3] for c in d["captions"]], d)
    assert acc["exact_match"] == 1.0 and acc["mean"] == 1.0 and acc["num_objects"] == 1.0


def test_synonyms_are_unambiguous():
    words = {}
    for name, synonyms in [("shape", sh.SHAPE_SYNONYMS), ("color", sh.COLOR_SYNONYMS),
                           ("size", sh.SIZE_SYNONYMS)]:
        assert set(synonyms) == set(sh.VOCAB[name])
        for value, ws in synonyms.items():
            for w in ws:
                assert words.setdefault(w.split()[0], value) == value
    assert not set(words) & {"left", "right", "top", "bottom", "center", "middle", "above",
                             "below", "over", "under", "of"}


RED_CIRCLE_LEFT = _one("circle", "red", "small", "left")
PAIR = _two("circle", "red", "left_of", "square", "blue")


@pytest.mark.parametrize("text,expected", [
    ("a small red circle on the left", RED_CIRCLE_LEFT),
    ("A  Small RED circle , on the LEFT .", RED_CIRCLE_LEFT),
    ("a small small red red circle circle on the the left left left", RED_CIRCLE_LEFT),
    ("there is is a tiny crimson disc disc on the left side side.", RED_CIRCLE_LEFT),
    ("a small red circle on the left of the image", RED_CIRCLE_LEFT),  # not a relation
    ("a small blue circle on the left.", _one("circle", "blue", "small", "left")),
    ("a small red blue circle on the left.", _one("circle", None, "small", "left")),
    ("a small red circle.", _one("circle", "red", "small", None)),
    ("a red circle to the left of a blue square.", PAIR),
    ("a blue square to the right of a red circle", PAIR),
    ("a red circle left of a blue square left of a blue square", PAIR),
    ("the scarlet disk is on the left of the azure box box .", PAIR),
    ("a blue square to the left of a red circle.",
     _two("square", "blue", "left_of", "circle", "red")),
    ("a blue square above a red circle.", _two("square", "blue", "above", "circle", "red")),
    ("a red circle beneath a blue square", _two("square", "blue", "above", "circle", "red")),
    ("a circle in red under a square", _two("square", None, "above", "circle", "red")),
    ("asdf qwer zxcv", _one(None, None, None, None) | {"num_objects": None}),
    ("", _one(None, None, None, None) | {"num_objects": None}),
])
def test_parser_on_captioner_like_text(text, expected):
    assert sh.parse_caption(text) == expected


def test_attribute_accuracy_and_chance_on_a_known_case():
    rows = [RED_CIRCLE_LEFT, _one("square", "blue", "large", "top"), PAIR,
            _two("triangle", "green", "above", "cross", "white")]
    captions = ["a tiny red circle on the left.",
                "a large blue square at the bottom.",           # position wrong
                "a blue square to the right of a red circle.",  # all right, other order
                "zzz qqq"]                                      # nothing
    acc = sh.attribute_accuracy(captions, _columns(rows))
    want = {"shape": 0.75, "color": 0.75, "size": 1.0, "position": 0.5, "shape2": 0.5,
            "color2": 0.5, "relation": 0.5, "num_objects": 0.75, "exact_match": 0.5}
    for k, v in want.items():
        assert acc[k] == pytest.approx(v), k
    assert acc["mean"] == pytest.approx((0.75 + 0.75 + 1 + 0.5 * 4) / 7)
    # Names work as well as ids.
    names = {k: [r[k] for r in rows] for k in rows[0]}
    assert sh.attribute_accuracy(captions, names) == acc
    # Swapped objects: every object attribute wrong, the relation right.
    swapped = sh.attribute_accuracy(["a blue square to the left of a red circle."],
                                    _columns([PAIR]))
    assert swapped["relation"] == 1.0 and swapped["shape"] == swapped["color2"] == 0.0
    assert swapped["exact_match"] == 0.0 and np.isnan(swapped["size"])
    chance = sh.chance_accuracy(_columns(rows))
    for k in sh.ATTRIBUTES + ("num_objects",):
        assert chance[k] == 0.5, k
    assert chance["exact_match"] == 0.25 and chance["mean"] == 0.5
    big = sh.chance_accuracy(sh.generate("test", 0, 600))
    assert 0.2 <= big["shape"] < 0.35 and 0.5 <= big["size"] < 0.6
    assert 0.65 < big["num_objects"] < 0.75 and big["exact_match"] < 0.02


def _labels(images):
    """Nearest of the object colours (0..5) and the backgrounds (6..) per pixel."""
    ref = np.concatenate([sh.PALETTE, sh.BACKGROUNDS]).astype(float)
    dist = ((images[..., None, :].astype(float) - ref) ** 2).sum(-1)
    return dist.argmin(-1)


@pytest.mark.parametrize("size", [32, 64])
def test_pixels_show_the_stated_colour_position_size_and_relation(size):
    n = 300 if size == 32 else 120
    d = sh.generate("test", 0, n, image_size=size)
    labels = _labels(d["image"])
    yy, xx = np.mgrid[0:size, 0:size] * (32 / size) + 16 / size  # 32-canvas coordinates
    counts = {0: [], 1: []}
    for i in range(n):
        a = sh.decode_attributes(d, i)
        if a["num_objects"] == 1:
            mask = labels[i] == d["color"][i]
            assert mask.sum() == (labels[i] < len(sh.COLORS)).sum()  # nothing else drawn
            centre = np.array([xx[mask].mean(), yy[mask].mean()])
            nearest = np.argmin(((sh.ANCHORS - centre) ** 2).sum(-1))
            assert sh.POSITIONS[nearest] == a["position"], (i, centre, a)
            counts[d["size"][i]].append(mask.sum() * (32 / size) ** 2)
        elif d["color"][i] != d["color2"][i]:
            m1, m2 = labels[i] == d["color"][i], labels[i] == d["color2"][i]
            axis = xx if a["relation"] == "left_of" else yy
            assert axis[m1].max() < axis[m2].min(), (i, a)
    assert max(counts[0]) < min(counts[1])  # every small object is smaller than any large one


def test_build_dataset_round_trips(tmp_path):
    sizes = {"connect": 6, "train": 5, "val": 3, "test": 4}
    path = sh.build_dataset(str(tmp_path), sizes, seed=2)
    for split, n in sizes.items():
        want = sh.generate(split, 0, n, seed=2)
        src = builders.data_source(path, split)
        assert len(src) == n
        for i in range(n):
            ex = src[i]
            np.testing.assert_array_equal(ex["image"], want["image"][i])
            assert [c.decode() for c in ex["caption"]] == want["captions"][i]
            for k in sh.ATTRIBUTES + ("num_objects", "layout"):
                assert ex[k] == want[k][i], (split, i, k)


def test_terse_captions_state_less_and_never_contradict_the_scene():
    full = sh.generate("val", 0, 400)
    d = sh.generate("val", 0, 400, caption_omit=0.5)
    # The images, attributes and complete captions are those of the default world.
    np.testing.assert_array_equal(d["image"], full["image"])
    assert sh.generate("val", 0, 400, caption_omit=0.0)["captions"] == full["captions"]
    assert 0.4 < d["terse"].mean() < 0.6
    seen = {1: set(), 2: set()}
    for i in range(400):
        truth = sh.decode_attributes(d, i)
        assert len(set(d["captions"][i])) == 5
        for c, terse, t, f in zip(d["captions"][i], d["terse"][i], d["template"][i],
                                  full["captions"][i]):
            parsed = sh.parse_caption(c)
            if not terse:
                assert c == f and parsed == truth
                continue
            seen[truth["num_objects"]].add(int(t))
            omitted = (("size", "position") if truth["num_objects"] == 1
                       else ("color", "color2"))
            assert parsed == {**truth, **{k: None for k in omitted}}, (c, truth)
    assert seen[1] == set(range(len(sh.TERSE_ONE_OBJECT_TEMPLATES)))
    assert seen[2] == set(range(len(sh.TERSE_TWO_OBJECT_TEMPLATES)))
    assert sh.generate("val", 0, 50, caption_omit=1.0)["terse"].all()
    with pytest.raises(ValueError, match="caption_omit"):
        sh.generate("val", 0, 1, caption_omit=1.5)
