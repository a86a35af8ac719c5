"""Shapes world: a deterministic synthetic image-caption dataset for running C^3 on CPU.

Every scene is a small image (32x32 by default, any size >= 16; drawing scales, the
layout is defined on a 32x32 canvas) with five different captions, like an MS-COCO image.

Scenes
  * one object (70 % by default): ``shape`` x ``color`` x ``size`` x ``position``
    (left / right / top / bottom / center of the image, +-2 px of jitter (+-1 for large)).
  * two objects (``two_object_fraction``, 30 % by default): two small objects that differ
    in shape or colour (or both), side by side or one above the other.  Size and position
    are not attributes of two-object scenes (both objects are drawn small; -1 / None).
  * background: one of 6 dark tints, never close to an object colour, plus uniform pixel
    noise of +-8 on every pixel (objects included).

Two-object canonical order.  Object 1 is the LEFT object (``relation == "left_of"``) or the
TOP object (``relation == "above"``); object 2 is the other one.  Captions say it either way
round ("a red circle to the left of a blue square" / "a blue square to the right of a red
circle"), and :func:`parse_caption` maps both to the canonical order, so a caption that swaps
the objects gets shape/colour/shape2/colour2 wrong while a correct rephrasing gets all right.

Captions are lower case, end with "." (no space before it) and may contain commas.  Every
caption of a one-object scene states shape, colour, size and position; every caption of a
two-object scene states both objects' shape and colour and their relation.  Each synonym
maps to exactly one attribute value (see ``*_SYNONYMS``).

Splits (``SPLITS``) are disjoint: a scene's *layout* is every discrete parameter of its
noise-free image (attributes, object offsets, background tint); layouts are partitioned
between the splits by a fixed hash, so no noise-free image (and hence, no image) of one
split appears in another, for any seed or image size.  Attribute *combinations* are shared
by all splits, as test images of COCO show the same kinds of things as training images: a
one-object combination has 150 (small) or 54 (large) layouts, at least 5 in every split;
a two-object one has 7350.  Within a split, scenes may repeat a layout (differing only in
pixel noise): ~7,600 one-object layouts per split.

A scene depends only on (seed, split, index) (and ``two_object_fraction``):
``generate(split, start, n)[i]`` equals ``scene(split, start + i)``.
"""
from __future__ import annotations

import re
from typing import Mapping, Sequence

import numpy as np

SPLITS = ("connect", "train", "val", "test")
SHAPES = ("circle", "square", "triangle", "cross", "diamond")
COLORS = ("red", "green", "blue", "yellow", "purple", "white")
SIZES = ("small", "large")
POSITIONS = ("left", "right", "top", "bottom", "center")
RELATIONS = ("left_of", "above")  # object 1 is left of / above object 2
ATTRIBUTES = ("shape", "color", "size", "position", "shape2", "color2", "relation")
VOCAB = {"shape": SHAPES, "color": COLORS, "size": SIZES, "position": POSITIONS,
         "shape2": SHAPES, "color2": COLORS, "relation": RELATIONS}
ONE_OBJECT_ATTRIBUTES = ("shape", "color", "size", "position")
TWO_OBJECT_ATTRIBUTES = ("shape", "color", "shape2", "color2", "relation")

PALETTE = np.array([(225, 35, 35), (40, 185, 60), (45, 95, 240), (240, 215, 35),
                    (155, 55, 205), (240, 240, 240)], np.int16)  # indexed like COLORS
BACKGROUNDS = np.array([(18, 18, 18), (40, 40, 40), (62, 62, 62), (20, 24, 50),
                        (22, 42, 28), (46, 28, 28)], np.int16)
NOISE = 8
CANVAS = 32.0
ANCHORS = np.array([(9, 16), (23, 16), (16, 9), (16, 23), (16, 16)], np.float32)  # POSITIONS
RADII = np.array([4.5, 7.5], np.float32)  # SIZES
PAIR_ANCHORS = (8.0, 24.0)  # along the relation axis, objects 1 and 2
CROSS_JITTER = 3  # two-object scenes: +-3 px across the relation axis, +-2 along it

SHAPE_SYNONYMS = {"circle": ("circle", "disc", "disk"), "square": ("square", "box", "block"),
                  "triangle": ("triangle", "pyramid"), "cross": ("cross", "plus sign"),
                  "diamond": ("diamond", "rhombus", "lozenge")}
COLOR_SYNONYMS = {"red": ("red", "crimson", "scarlet"), "green": ("green", "emerald", "lime"),
                  "blue": ("blue", "azure", "cobalt"), "yellow": ("yellow", "golden", "lemon"),
                  "purple": ("purple", "violet", "plum"), "white": ("white", "snowy", "ivory")}
SIZE_SYNONYMS = {"small": ("small", "tiny", "little"), "large": ("large", "big", "huge")}
POSITION_PHRASES = {
    "left": ("on the left", "on the left side", "in the left part of the image",
             "towards the left"),
    "right": ("on the right", "on the right side", "in the right part of the image",
              "towards the right"),
    "top": ("at the top", "near the top", "in the upper part of the image",
            "at the top of the picture"),
    "bottom": ("at the bottom", "near the bottom", "in the lower part of the image",
               "at the bottom of the picture"),
    "center": ("in the center", "in the middle", "in the centre of the image",
               "in the middle of the picture")}
# Caption phrasing of "subject REL object"; right_of / below are the canonical relations
# with the objects swapped.
RELATION_PHRASES = {"left_of": ("to the left of", "left of", "on the left of"),
                    "right_of": ("to the right of", "right of", "on the right of"),
                    "above": ("above", "over", "just above"),
                    "below": ("below", "under", "beneath", "underneath")}

# {sz} size, {c} colour, {s} shape, {p} position phrase; {c1} {s1} the subject, {r} the
# relation phrase, {c2} {s2} the object; {cn} {szn} the plain colour / size name (no synonym,
# for "in red", "of small size").  "a" becomes "an" before a vowel.
ONE_OBJECT_TEMPLATES = (
    "a {sz} {c} {s} {p}.",
    "there is a {sz} {c} {s} {p}.",
    "{p}, a {sz} {c} {s}.",
    "a picture of a {sz} {c} {s} {p}.",
    "the image shows a {sz} {c} {s} {p}.",
    "a {c} {s} of {szn} size {p}.",
    "{p} there is a {sz} {c} {s}.",
    "a {sz} {s} in {cn} {p}.",
    "one {sz} {c} {s} can be seen {p}.",
    "a single {sz} {c} {s} {p}.",
)
TWO_OBJECT_TEMPLATES = (
    "a {c1} {s1} {r} a {c2} {s2}.",
    "there is a {c1} {s1} {r} a {c2} {s2}.",
    "a {c1} {s1} is {r} a {c2} {s2}.",
    "the {c1} {s1} is {r} the {c2} {s2}.",
    "a picture of a {c1} {s1} {r} a {c2} {s2}.",
    "two shapes, a {c1} {s1} {r} a {c2} {s2}.",
    "a {s1} in {cn1} {r} a {s2} in {cn2}.",
    "the image shows a {c1} {s1} placed {r} a {c2} {s2}.",
    "a {c1} {s1} sits {r} a {c2} {s2}.",
    "a {c1} {s1} located {r} a {c2} {s2}.",
)
# Terse captions (``caption_omit`` > 0): a one-object caption that leaves out size and
# position, a two-object caption that leaves out both colours; the image shows more than
# the caption says, as a COCO caption does.
TERSE_ONE_OBJECT_TEMPLATES = ("a {c} {s}.", "there is a {c} {s}.", "a picture of a {c} {s}.",
                              "the image shows a {c} {s}.", "one {c} {s} can be seen.")
TERSE_TWO_OBJECT_TEMPLATES = ("a {s1} {r} a {s2}.", "there is a {s1} {r} a {s2}.",
                              "the {s1} is {r} the {s2}.", "a picture of a {s1} {r} a {s2}.",
                              "two shapes, a {s1} {r} a {s2}.")
CAPTIONS_PER_SCENE = 5
assert len(TERSE_ONE_OBJECT_TEMPLATES) == len(TERSE_TWO_OBJECT_TEMPLATES) == CAPTIONS_PER_SCENE

# Random words drawn per scene (uint32), by purpose.
_CANDIDATES = 64  # layout candidates for the split partition (P(no hit) = 0.75**64)
_W_NUM, _W_SEM = 0, slice(1, 7)
_W_CAND = slice(8, 8 + 5 * _CANDIDATES)
_W_TPL = slice(_W_CAND.stop, _W_CAND.stop + len(ONE_OBJECT_TEMPLATES))
_W_SYN = slice(_W_TPL.stop, _W_TPL.stop + 8 * CAPTIONS_PER_SCENE)
_N_WORDS = _W_SYN.stop
_CHUNK = 1024


def _split_id(split: str) -> int:
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; splits are {SPLITS}")
    return SPLITS.index(split)


def _splitmix64(x: np.ndarray) -> np.ndarray:
    z = x.astype(np.uint64) + np.uint64(0x9E3779B97F4A7C15)
    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return z ^ (z >> np.uint64(31))


def _split_of(code: np.ndarray) -> np.ndarray:
    """The split (index into SPLITS) that owns a layout code: a fixed hash, seed-free."""
    return (_splitmix64(code) % np.uint64(len(SPLITS))).astype(np.int64)


def _fold(parts):
    """Mixed-radix integer of (value, radix) pairs: injective for values in range."""
    code = np.zeros(np.broadcast(*[v for v, _ in parts]).shape, np.uint64)
    for value, radix in parts:
        code = code * np.uint64(radix) + value.astype(np.uint64)
    return code


def _layout(words: np.ndarray, two: np.ndarray, sem: dict) -> dict:
    """Nuisance parameters of ``words`` [n, K, 5] candidates, and their layout codes [n, K]."""
    w = words.astype(np.int64)
    n_jit = np.where(sem["size"] == 1, 3, 5)[:, None]
    one = {"j1a": w[..., 0] % n_jit, "j1c": w[..., 1] % n_jit}
    pair = {"j1a": w[..., 0] % 5, "j1c": w[..., 1] % (2 * CROSS_JITTER + 1),
            "j2a": w[..., 2] % 5, "j2c": w[..., 3] % (2 * CROSS_JITTER + 1)}
    tint = w[..., 4] % len(BACKGROUNDS)
    t = two[:, None]
    out = {k: np.where(t, pair[k], one.get(k, 0)) for k in pair}
    out["tint"] = tint
    b = lambda k: np.broadcast_to(sem[k][:, None], tint.shape)
    code_one = _fold([(b("shape"), 5), (b("color"), 6), (b("size"), 2), (b("position"), 5),
                      (one["j1a"], 5), (one["j1c"], 5), (tint, len(BACKGROUNDS))])
    code_two = _fold([(b("pair"), 30 * 29), (b("axis"), 2), (pair["j1a"], 5),
                      (pair["j1c"], 7), (pair["j2a"], 5), (pair["j2c"], 7),
                      (tint, len(BACKGROUNDS))])
    out["code"] = np.where(t, code_two * np.uint64(2) + np.uint64(1), code_one * np.uint64(2))
    return out


def _words_and_noise(split_id, seed, indices, image_size, with_noise):
    n, s = len(indices), image_size
    words = np.empty((n, _N_WORDS), np.uint32)
    noise = np.zeros((n, s, s, 3), np.int16)
    for i, index in enumerate(indices):
        g = np.random.default_rng([seed, split_id, int(index)])
        words[i] = g.integers(0, 2 ** 32, _N_WORDS, dtype=np.uint32)
        if with_noise:
            noise[i] = g.integers(-NOISE, NOISE + 1, (s, s, 3), dtype=np.int8)
    return words, noise


def _sample(split_id, seed, indices, words, two_object_fraction):
    """Attributes and layout parameters from the random words (vectorised)."""
    n = len(indices)
    two = words[:, _W_NUM] / 2.0 ** 32 < two_object_fraction
    sw = words[:, _W_SEM].astype(np.int64)
    sem = {"shape": sw[:, 0] % 5, "color": sw[:, 1] % 6, "size": sw[:, 2] % 2,
           "position": sw[:, 3] % 5, "pair": sw[:, 4] % (30 * 29), "axis": sw[:, 5] % 2}
    cands = _layout(words[:, _W_CAND].reshape(n, _CANDIDATES, 5), two, sem)
    ok = _split_of(cands["code"]) == split_id
    pick = np.argmax(ok, axis=1)
    rows = np.arange(n)
    lay = {k: v[rows, pick] for k, v in cands.items()}
    for i in np.nonzero(~ok.any(axis=1))[0]:  # ~1e-8 per scene: redraw candidates
        for attempt in range(1, 100):
            g = np.random.default_rng([seed, split_id, int(indices[i]), attempt])
            extra = g.integers(0, 2 ** 32, (1, _CANDIDATES, 5), dtype=np.uint32)
            c = _layout(extra, two[i:i + 1], {k: v[i:i + 1] for k, v in sem.items()})
            hit = np.nonzero(_split_of(c["code"][0]) == split_id)[0]
            if hit.size:
                for k in lay:
                    lay[k][i] = c[k][0, hit[0]]
                break
        else:
            raise RuntimeError(f"no layout of split {split_id} found for scene {indices[i]}")
    first = sem["pair"] // 29
    second = sem["pair"] % 29
    second = second + (second >= first)
    attrs = {
        "num_objects": np.where(two, 2, 1).astype(np.int64),
        "shape": np.where(two, first // 6, sem["shape"]),
        "color": np.where(two, first % 6, sem["color"]),
        "size": np.where(two, -1, sem["size"]),
        "position": np.where(two, -1, sem["position"]),
        "shape2": np.where(two, second // 6, -1),
        "color2": np.where(two, second % 6, -1),
        "relation": np.where(two, sem["axis"], -1),
    }
    attrs = {k: v.astype(np.int64) for k, v in attrs.items()}
    # Object centres on the 32x32 canvas.
    cx = np.zeros((n, 2), np.float32)
    cy = np.zeros((n, 2), np.float32)
    j1a, j1c = lay["j1a"], lay["j1c"]
    n_jit = np.where(sem["size"] == 1, 3, 5)
    single = ANCHORS[sem["position"]]
    cx[:, 0] = np.where(two, 0, single[:, 0] + j1a - n_jit // 2)
    cy[:, 0] = np.where(two, 0, single[:, 1] + j1c - n_jit // 2)
    along1 = PAIR_ANCHORS[0] + j1a - 2
    along2 = PAIR_ANCHORS[1] + lay["j2a"] - 2
    across1 = 16 + j1c - CROSS_JITTER
    across2 = 16 + lay["j2c"] - CROSS_JITTER
    horizontal = sem["axis"] == 0
    cx[two, 0] = np.where(horizontal, along1, across1)[two]
    cy[two, 0] = np.where(horizontal, across1, along1)[two]
    cx[two, 1] = np.where(horizontal, along2, across2)[two]
    cy[two, 1] = np.where(horizontal, across2, along2)[two]
    objects = {"cx": cx, "cy": cy,
               "r": np.stack([np.where(two, RADII[0], RADII[attrs["size"].clip(0)]),
                              np.full(n, RADII[0])], 1).astype(np.float32),
               "shape": np.stack([attrs["shape"], attrs["shape2"]], 1),
               "color": np.stack([attrs["color"], attrs["color2"]], 1),
               "present": np.stack([np.ones(n, bool), two], 1),
               "tint": lay["tint"]}
    return attrs, objects, lay["code"].astype(np.int64)


def _circle(x, y, r):
    return x * x + y * y <= r * r


def _square(x, y, r):
    a = 0.82 * r
    return (np.abs(x) <= a) & (np.abs(y) <= a)


def _triangle(x, y, r):  # apex up, base at 0.8 r below the centre, base width 2 r
    return (y <= 0.8 * r) & (np.abs(x) <= (y + r) / 1.8)


def _cross(x, y, r):
    t = 0.34 * r
    ax, ay = np.abs(x), np.abs(y)
    return ((ax <= t) & (ay <= r)) | ((ay <= t) & (ax <= r))


def _diamond(x, y, r):
    return np.abs(x) + np.abs(y) <= 1.1 * r


_SHAPE_FNS = (_circle, _square, _triangle, _cross, _diamond)  # indexed like SHAPES


def _render(objects: dict, noise: np.ndarray, image_size: int) -> np.ndarray:
    n, s = len(objects["tint"]), image_size
    u = ((np.arange(s, dtype=np.float32) + 0.5) * np.float32(CANVAS / s))
    img = np.broadcast_to(BACKGROUNDS[objects["tint"]][:, None, None, :], (n, s, s, 3)).copy()
    for slot in range(2):
        for k, fn in enumerate(_SHAPE_FNS):
            idx = np.nonzero(objects["present"][:, slot] & (objects["shape"][:, slot] == k))[0]
            if not idx.size:
                continue
            x = u[None, None, :] - objects["cx"][idx, slot][:, None, None]
            y = u[None, :, None] - objects["cy"][idx, slot][:, None, None]
            mask = fn(x, y, objects["r"][idx, slot][:, None, None])
            color = PALETTE[objects["color"][idx, slot]][:, None, None, :]
            img[idx] = np.where(mask[..., None], color, img[idx])
    return np.clip(img + noise, 0, 255).astype(np.uint8)


def _article(text: str) -> str:
    return re.sub(r"\ba (?=[aeiou])", "an ", text)


def _terse_flags(seed: int, split_id: int, indices: np.ndarray, omit: float) -> np.ndarray:
    """[n, CAPTIONS_PER_SCENE] bools: which captions are terse (a hash of the scene and
    caption index, so the scenes' other random draws are untouched)."""
    if omit <= 0.0:
        return np.zeros((len(indices), CAPTIONS_PER_SCENE), bool)
    key = ((np.uint64(seed) * np.uint64(len(SPLITS)) + np.uint64(split_id)) * np.uint64(2 ** 40)
           + np.asarray(indices, np.uint64))
    k = np.arange(CAPTIONS_PER_SCENE, dtype=np.uint64)
    h = _splitmix64(_splitmix64(key)[:, None] ^ (k[None, :] + np.uint64(0x5EED)))
    return (h >> np.uint64(11)).astype(np.float64) / 2.0 ** 53 < omit


def _captions(attrs: Mapping[str, int], words: np.ndarray, terse=None):
    """Five captions of one scene (attribute ids) and their template ids (terse captions:
    their index into ``TERSE_*_TEMPLATES``)."""
    two = attrs["num_objects"] == 2
    templates = TWO_OBJECT_TEMPLATES if two else ONE_OBJECT_TEMPLATES
    short = TERSE_TWO_OBJECT_TEMPLATES if two else TERSE_ONE_OBJECT_TEMPLATES
    order = np.argsort(words[_W_TPL][:len(templates)], kind="stable")[:CAPTIONS_PER_SCENE]
    terse = np.zeros(CAPTIONS_PER_SCENE, bool) if terse is None else terse
    # Terse captions take distinct templates (as many as CAPTIONS_PER_SCENE), so the five
    # captions stay different.
    rank = np.cumsum(terse) - 1
    order = np.where(terse, (order[0] + rank) % len(short), order)
    syn = words[_W_SYN].reshape(CAPTIONS_PER_SCENE, 8).astype(np.int64)
    out = []
    for t, w, is_terse in zip(order.tolist(), syn.tolist(), terse.tolist()):
        pick = lambda options, j: options[w[j] % len(options)]
        template = (short if is_terse else templates)[t]
        if two:
            o1 = (COLOR_SYNONYMS[COLORS[attrs["color"]]], SHAPE_SYNONYMS[SHAPES[attrs["shape"]]])
            o2 = (COLOR_SYNONYMS[COLORS[attrs["color2"]]],
                  SHAPE_SYNONYMS[SHAPES[attrs["shape2"]]])
            relation = RELATIONS[attrs["relation"]]
            if w[7] % 2:  # say it the other way round
                o1, o2 = o2, o1
                relation = {"left_of": "right_of", "above": "below"}[relation]
            text = template.format(c1=pick(o1[0], 1), s1=pick(o1[1], 2),
                                       c2=pick(o2[0], 4), s2=pick(o2[1], 5),
                                       cn1=o1[0][0], cn2=o2[0][0],
                                       r=pick(RELATION_PHRASES[relation], 6))
        else:
            text = template.format(sz=pick(SIZE_SYNONYMS[SIZES[attrs["size"]]], 0),
                                       szn=SIZES[attrs["size"]], cn=COLORS[attrs["color"]],
                                       c=pick(COLOR_SYNONYMS[COLORS[attrs["color"]]], 1),
                                       s=pick(SHAPE_SYNONYMS[SHAPES[attrs["shape"]]], 2),
                                       p=pick(POSITION_PHRASES[POSITIONS[attrs["position"]]], 3))
        out.append(_article(text))
    return out, order


def generate(split: str, start: int, count: int, seed: int = 0, image_size: int = 32,
             two_object_fraction: float = 0.3, noise: bool = True,
             caption_omit: float = 0.0) -> dict:
    """Scenes ``start .. start+count-1`` of ``split``.

    Returns ``image`` uint8 [n, S, S, 3]; ``captions``: n lists of 5 different strings;
    int64 attribute arrays ``num_objects``, ``shape``, ``color``, ``size``, ``position``,
    ``shape2``, ``color2``, ``relation`` (indices into ``VOCAB``; -1 where not applicable);
    ``layout`` (int64 code of the noise-free scene; unique to a split) and ``template``
    [n, 5] (template id of each caption, into ``ONE/TWO_OBJECT_TEMPLATES``, or for a
    ``terse`` [n, 5] caption into ``TERSE_*_TEMPLATES``). ``noise=False`` renders the
    noise-free scene. ``caption_omit``: the fraction of captions that are terse (leave out
    size and position, or both colours); 0 keeps every caption complete.
    """
    split_id = _split_id(split)
    if int(seed) < 0 or int(start) < 0 or int(count) < 0:
        raise ValueError(f"seed, start and count must be >= 0 (got {seed}, {start}, {count})")
    if int(image_size) < 16:
        raise ValueError(f"image_size must be >= 16, got {image_size}")
    if not 0.0 <= two_object_fraction <= 1.0:
        raise ValueError(f"two_object_fraction must be in [0, 1], got {two_object_fraction}")
    if not 0.0 <= caption_omit <= 1.0:
        raise ValueError(f"caption_omit must be in [0, 1], got {caption_omit}")
    s = int(image_size)
    images = np.empty((count, s, s, 3), np.uint8)
    attrs = {k: np.empty(count, np.int64) for k in ("num_objects",) + ATTRIBUTES}
    layout = np.empty(count, np.int64)
    template = np.empty((count, CAPTIONS_PER_SCENE), np.int64)
    terse = np.empty((count, CAPTIONS_PER_SCENE), bool)
    captions = []
    for lo in range(0, count, _CHUNK):
        indices = np.arange(start + lo, start + min(lo + _CHUNK, count))
        sl = slice(lo, lo + len(indices))
        words, noise_arr = _words_and_noise(split_id, int(seed), indices, s, noise)
        a, objects, layout[sl] = _sample(split_id, int(seed), indices, words,
                                         two_object_fraction)
        images[sl] = _render(objects, noise_arr, s)
        terse[sl] = _terse_flags(int(seed), split_id, indices, caption_omit)
        for k in attrs:
            attrs[k][sl] = a[k]
        rows = [dict(zip(a, vals)) for vals in zip(*[v.tolist() for v in a.values()])]
        for j, row in enumerate(rows):
            caps, template[lo + j] = _captions(row, words[j], terse[lo + j])
            captions.append(caps)
    return {"image": images, "captions": captions, **attrs, "layout": layout,
            "template": template, "terse": terse}


def decode_attributes(arrays: Mapping[str, np.ndarray], i: int) -> dict:
    """Row ``i`` of integer attribute arrays as names (None where not applicable)."""
    out = {"num_objects": int(arrays["num_objects"][i])}
    for k in ATTRIBUTES:
        v = int(arrays[k][i])
        out[k] = VOCAB[k][v] if v >= 0 else None
    return out


def scene(split: str, index: int, seed: int = 0, image_size: int = 32,
          two_object_fraction: float = 0.3):
    """One scene: (image uint8 [S, S, 3], 5 captions, attributes by name).

    The attributes dict has the keys of :func:`parse_caption`: ``num_objects`` and
    ``ATTRIBUTES``, with None where an attribute does not apply."""
    d = generate(split, index, 1, seed, image_size, two_object_fraction)
    return d["image"][0], d["captions"][0], decode_attributes(d, 0)


def build_dataset(data_dir: str, sizes: Mapping[str, int], seed: int = 0,
                  image_size: int = 32, name: str = "shapes_world",
                  two_object_fraction: float = 0.3, caption_omit: float = 0.0) -> str:
    """Writes ``sizes[split]`` scenes per split (indices 0..n-1) as a TFDS dataset, as they
    are generated (each process its part, ``_CHUNK`` scenes at a time).

    Fields: ``image``, ``num_objects``, the ``ATTRIBUTES`` arrays, ``layout``, and
    ``caption`` (5 strings per row).  Returns the dataset directory."""
    from c3_jax.data import builders
    for split in sizes:  # every argument checked before anything is written
        generate(split, 0, 0, seed, image_size, two_object_fraction, caption_omit=caption_omit)
    s = int(image_size)
    fields = {"image": ((s, s, 3), np.uint8), "num_objects": ((), np.int64),
              **{k: ((), np.int64) for k in ATTRIBUTES}, "layout": ((), np.int64)}
    with builders.PairsWriter(name, data_dir, sizes, fields, (CAPTIONS_PER_SCENE,)) as writer:
        for split, n in sizes.items():
            part = builders.process_rows(int(n))
            for lo in range(part.start, part.stop, _CHUNK):
                d = generate(split, lo, min(_CHUNK, part.stop - lo), seed, image_size,
                             two_object_fraction, caption_omit=caption_omit)
                writer.write(split, lo, {k: d[k] for k in fields}, d["captions"])
    return writer.final


# ----------------------------------------------------------------------------- parsing

def _word_map(synonyms: Mapping[str, Sequence[str]]) -> dict:
    out = {}
    for value, words in synonyms.items():
        for phrase in words:
            w = phrase.split()[0]  # "plus sign" -> "plus"
            for form in (w, w + "s", w + "es"):
                out.setdefault(form, value)
    return out


_SHAPE_WORDS = _word_map(SHAPE_SYNONYMS)
_COLOR_WORDS = _word_map(COLOR_SYNONYMS)
_SIZE_WORDS = _word_map(SIZE_SYNONYMS)
_POSITION_WORDS = {"left": "left", "right": "right", "top": "top", "upper": "top",
                   "bottom": "bottom", "lower": "bottom", "center": "center",
                   "centre": "center", "middle": "center"}
_RELATION_WORDS = {"above": "above", "over": "above", "below": "below", "under": "below",
                   "beneath": "below", "underneath": "below"}
_EMPTY = {"num_objects": None, **{k: None for k in ATTRIBUTES}}


def _relations(tokens):
    """(start, end, relation) of every relation phrase ("left of", "above", ...)."""
    out = []
    for i, t in enumerate(tokens):
        if t in ("left", "right") and i + 1 < len(tokens) and tokens[i + 1] == "of":
            out.append((i, i + 2, t + "_of"))
        elif t in _RELATION_WORDS:
            out.append((i, i + 1, _RELATION_WORDS[t]))
    return out


def _unique(tokens, words):
    values = {words[t] for t in tokens if t in words}
    return values.pop() if len(values) == 1 else None


def parse_caption(text: str) -> dict:
    """Attributes stated by a caption: ``num_objects`` (1, 2 or None) and ``ATTRIBUTES``.

    Words are ``[a-z]+`` runs of the lower-cased text; only attribute words matter, so extra
    words, repeats and missing punctuation are harmless.  A value is None when the caption
    does not state it or states conflicting values.  A relation phrase ("left of", "right
    of", "above", "over", "below", "under", "beneath", ...) with a shape word on each side
    makes a two-object caption: the words before it describe its subject, the words after
    it (up to the next relation phrase) its object; the pair is returned in the canonical
    order (object 1 left of / above object 2).  Otherwise the caption describes one object:
    shape, colour, size and position come from anywhere in it.
    """
    tokens = re.findall(r"[a-z]+", text.lower())
    out = dict(_EMPTY)
    rels = _relations(tokens)
    for j, (lo, hi, relation) in enumerate(rels):
        end = rels[j + 1][0] if j + 1 < len(rels) else len(tokens)
        subject, obj = tokens[:lo], tokens[hi:end]
        if not (any(t in _SHAPE_WORDS for t in subject) and any(t in _SHAPE_WORDS for t in obj)):
            continue
        if relation in ("right_of", "below"):
            subject, obj = obj, subject
            relation = {"right_of": "left_of", "below": "above"}[relation]
        out.update(num_objects=2, relation=relation,
                   shape=_unique(subject, _SHAPE_WORDS), color=_unique(subject, _COLOR_WORDS),
                   shape2=_unique(obj, _SHAPE_WORDS), color2=_unique(obj, _COLOR_WORDS))
        return out
    out.update(shape=_unique(tokens, _SHAPE_WORDS), color=_unique(tokens, _COLOR_WORDS),
               size=_unique(tokens, _SIZE_WORDS), position=_unique(tokens, _POSITION_WORDS))
    if any(t in _SHAPE_WORDS for t in tokens):
        out["num_objects"] = 1
    return out


# -------------------------------------------------------------------------- accuracy

def attribute_names(attributes: Mapping[str, Sequence], key: str) -> list:
    """Ground-truth values of one attribute as names (None where not applicable)."""
    values = np.asarray(attributes[key])
    if key == "num_objects":
        return [int(v) for v in values]
    if np.issubdtype(values.dtype, np.integer):
        return [VOCAB[key][v] if v >= 0 else None for v in values.tolist()]
    return [None if v is None or v == "" else str(v) for v in values.tolist()]


def applicable(truth):
    return [i for i, v in enumerate(truth) if v is not None]


def attribute_accuracy(captions: Sequence[str], attributes: Mapping[str, Sequence]) -> dict:
    """Accuracy of the attributes parsed from ``captions`` (one per scene) against the truth.

    ``attributes``: arrays as returned by :func:`generate` (integer ids, -1 = n/a; names
    and None also accepted).  Returns, per attribute of ``ATTRIBUTES``, the fraction of the
    scenes where it applies whose caption states it correctly (NaN if it applies nowhere);
    ``num_objects`` (caption describes the right number of objects); ``exact_match``
    (right number of objects and every applicable attribute right); ``mean`` (mean of the
    per-attribute accuracies of ``ATTRIBUTES``, NaNs left out)."""
    truth = {k: attribute_names(attributes, k) for k in ("num_objects",) + ATTRIBUTES}
    n = len(truth["num_objects"])
    if len(captions) != n:
        raise ValueError(f"{len(captions)} captions for {n} scenes")
    parsed = [parse_caption(c) for c in captions]
    count_right = np.array([p["num_objects"] == t for p, t in zip(parsed, truth["num_objects"])],
                           bool)
    out = {}
    exact = count_right.copy()
    for k in ATTRIBUTES:
        rows = applicable(truth[k])
        right = [parsed[i][k] == truth[k][i] for i in rows]
        out[k] = float(np.mean(right)) if rows else float("nan")
        exact[rows] &= np.array(right, bool)
    out["num_objects"] = float(count_right.mean()) if n else float("nan")
    out["exact_match"] = float(exact.mean()) if n else float("nan")
    out["mean"] = nanmean([out[k] for k in ATTRIBUTES])
    return out


def nanmean(values):
    values = [v for v in values if not np.isnan(v)]
    return float(np.mean(values)) if values else float("nan")


def _mode_fraction(values) -> float:
    if not values:
        return float("nan")
    _, counts = np.unique(np.array([repr(v) for v in values]), return_counts=True)
    return float(counts.max() / len(values))


def chance_accuracy(attributes: Mapping[str, Sequence]) -> dict:
    """Accuracy of always guessing the most frequent value (the keys of
    :func:`attribute_accuracy`); ``exact_match``: the most frequent whole scene
    description."""
    truth = {k: attribute_names(attributes, k) for k in ("num_objects",) + ATTRIBUTES}
    out = {k: _mode_fraction([v for v in truth[k] if v is not None]) for k in ATTRIBUTES}
    out["num_objects"] = _mode_fraction(truth["num_objects"])
    out["exact_match"] = _mode_fraction(list(zip(*truth.values())))
    out["mean"] = nanmean([out[k] for k in ATTRIBUTES])
    return out
