"""The built-in world's shared stages: the world dataset, its word tokenizer, Connect (a
small CLIP trained on its image-caption pairs), the frozen CLIP's embeddings, and the
geometry probe of a CLIP space. Each stage is cached in the workdir and reused only while
the config fields that shaped it are unchanged."""
from __future__ import annotations

import os
from typing import Mapping, Optional

import jax
import ml_collections
import numpy as np

from c3_jax import geometry
from c3_jax.data import builders
from c3_jax.data import captions as cd
from c3_jax.data.text import build_word_tokenizer, encode_captions, load_tokenizer
from c3_jax.experiments import checks, schema, stages
from c3_jax.models import clip
from c3_jax.train import connect
from c3_jax.workdir import Workdir
from c3_jax.world import scenes

MAX_TOKENS = 20  # the longest world caption: 16 words, a comma, '.', EOS
# The order in which the experiments report attributes (tables, per-attribute results).
REPORTED_ATTRIBUTES = scenes.ATTRIBUTES + ("num_objects",)


def default_world(quick: bool = False) -> ml_collections.ConfigDict:
    """The world: disjoint splits of scenes (5 captions each), drawn from the run's seed."""
    w = ml_collections.ConfigDict()
    # Pixels per side (quick: the smallest world, fewer generator blocks in shapes_t2i).
    w.image_size = 16 if quick else 32
    w.two_object_fraction = 0.3  # share of scenes with two objects
    w.connect_size = 512 if quick else 20_000  # scenes Connect trains on
    w.train_size = 256 if quick else 5_000  # the captioners' (generators') training scenes
    w.val_size = 64 if quick else 500
    w.test_size = 64 if quick else 500
    # The share of captions that are terse (say less than their image shows: a one-object
    # caption without size and position, a two-object one without colours). Pairs that do
    # not determine each other keep the gap born at initialization: at depth 2, 0.65 at 5 %
    # (0.45 at 0); of the shares measured, 5 % alone gives CLIP's geometry with a
    # well-trained space (10 % and more retrieve under the bar). README: "The Connect study".
    w.caption_omit = 0.05
    return w


def default_connect(quick: bool = False) -> ml_collections.ConfigDict:
    """Connect: a small CLIP (ViT on patches + causal text transformer), CLIP's loss."""
    c = ml_collections.ConfigDict()
    c.width = 32 if quick else 64  # both towers'
    c.depth = 1 if quick else 3  # transformer layers per tower
    c.heads = 4
    c.patch_size = 8
    c.projection_dim = 32 if quick else 64  # the shared space's dimension
    # The temperature is held at 0.01, CLIP's end value (its logit scale hits the cap of 100).
    # With CLIP's learned temperature (from 0.07; it only reaches ~0.046 in 600 steps) the
    # gap closes to ~0.08 and Collapse has nothing to remove; at 0.01 the space keeps 0.62
    # (depth 3; 0.45 at depth 2 with complete captions only). README: "The Connect study".
    c.steps = 20 if quick else 600
    c.batch = 64 if quick else 256
    c.lr = 2e-3
    c.temperature = 0.01  # 0: learned from 0.07 (capped at 0.01); > 0: fixed
    return c



def world_fields(config) -> dict:
    """What shapes the world: the seed and the nested ``world`` config."""
    return {"seed": config.seed, **config.world.to_dict()}


def connect_fields(config) -> dict:
    """What shapes Connect and the embeddings: the world's fields and the ``connect`` config."""
    return {**world_fields(config), "connect": config.connect.to_dict()}


def variant_names(value, known, field: str = "sweep.variants") -> list:
    """The variant names of config field ``field`` (a tuple, or comma-separated), each
    checked against ``known``."""
    names = schema.names(value, field)
    unknown = sorted(set(names) - set(known))
    if unknown or not names:
        raise ValueError(f"config field {field!r} is {value!r}: " + (
            f"unknown variants {unknown}; known: {sorted(known)}" if unknown else "no variant"))
    return names


def with_dataset(config, dataset: str):
    """A copy of a world config whose ``data.dataset_dir`` is the dataset the run built:
    what the library's trainers read."""
    c = config.copy_and_resolve_references()
    c.data.dataset_dir = dataset
    return c


def member_fields(run, trainer: str) -> dict:
    """What shapes each member of a world sweep besides the member itself: the seed and the
    trainer's sub-configs ('data', ``trainer``, 'method' less the variant and sigma that
    each member carries, 'eval')."""
    method = {k: v for k, v in run.method.to_dict().items() if k not in ("variant", "noise_sigma")}
    return {"seed": run.seed, "data": run.data.to_dict(), trainer: run[trainer].to_dict(),
            "method": method, "eval": run.eval.to_dict()}


def every_test_scene(config) -> None:
    """A world experiment scores every test scene (its attributes are the whole split's)."""
    if config.eval.max_examples:
        raise ValueError(f"config field 'eval.max_examples' is {config.eval.max_examples}; the "
                         "world scores every test scene (leave it 0)")


def check_world(config, splits=("connect", "train", "val", "test")) -> None:
    """The ``world`` and ``connect`` configs of a shapes config, checked before any work."""
    checks.at_least(config, 1, ["world.image_size", "connect.width", "connect.depth",
                                "connect.heads", "connect.patch_size", "connect.projection_dim",
                                "connect.steps", "connect.batch"])
    checks.at_least(config, 10, [f"world.{s}_size" for s in splits if s != "connect"])
    checks.at_least(config, config.connect.batch, ["world.connect_size"])
    checks.within(config, 0.0, 1.0, ["world.two_object_fraction"] + (
        ["world.caption_omit"] if "caption_omit" in config.world else []))
    checks.divides(config, "connect.patch_size", "world.image_size")
    checks.divides(config, "connect.heads", "connect.width")
    connect_config(config)  # lr, temperature, steps


def connect_config(config, **overrides) -> connect.ConnectConfig:
    """The Connect settings of a shapes config (validated on construction)."""
    c = config.connect
    kw = dict(steps=c.steps, batch_size=c.batch, lr=c.lr, seed=config.seed,
              temperature=c.temperature)
    return connect.ConnectConfig(**{**kw, **overrides})


def world_dataset(config, wd: Workdir, sizes: Optional[Mapping[str, int]] = None,
                  caption_omit: Optional[float] = None, where: str = "") -> str:
    """The world's dataset under ``<workdir>/data[/where]``, built once per its fields
    (every process takes part in the write); ``caption_omit`` defaults to the world's."""
    w = config.world
    caption_omit = w.caption_omit if caption_omit is None else caption_omit
    sizes = dict(sizes or {"connect": w.connect_size, "train": w.train_size,
                           "val": w.val_size, "test": w.test_size})
    data_dir = wd.file(os.path.join("data", where))
    fields = {"seed": config.seed, "image_size": w.image_size,
              "two_object_fraction": w.two_object_fraction, "sizes": sizes,
              "caption_omit": caption_omit}
    name = "world" + (f"_{where}" if where else "")
    if not stages.begin(wd, name, fields, [os.path.join(data_dir, "shapes_world")]):
        scenes.build_dataset(data_dir, sizes, config.seed, w.image_size,
                             two_object_fraction=w.two_object_fraction,
                             caption_omit=caption_omit)
        stages.finish(wd, name)
    return os.path.join(data_dir, "shapes_world", builders.VERSION)


def world_tokenizer(world: str, wd: Workdir, world_fields: Mapping, where: str = "",
                    splits: tuple = ("connect", "train")):
    """A word-level tokenizer of the captions of ``splits`` (shared by CLIP and GPT-2)."""
    path = wd.file(os.path.join(where, "tokenizer"))
    name = "tokenizer" + (f"_{where}" if where else "")
    if not stages.begin(wd, name, {"world": dict(world_fields), "splits": list(splits)},
                        [path]):
        if wd.primary:
            build_word_tokenizer([c for s in splits for c in _all_captions(
                builders.data_source(world, s))], path)
        stages.finish(wd, name)
    return load_tokenizer(path)


def _all_captions(source) -> list:
    return [c for i in range(len(source)) for c in cd.captions_of(source[i], "caption")]


def clip_model(tokenizer, settings, image_size: int, **overrides) -> clip.CLIP:
    """The world's CLIP of a nested ``connect`` config (``overrides`` replace its fields,
    e.g. the depth): a ViT on patches and a causal text transformer of one shape."""
    c = {**settings.to_dict(), **overrides}
    tower = clip.Tower(c["width"], c["depth"], c["heads"], 4 * c["width"], "gelu")
    return clip.CLIP(clip.CLIPConfig(text=tower, vision=tower,
                                     projection_dim=c["projection_dim"],
                                     vocab_size=len(tokenizer), max_positions=MAX_TOKENS,
                                     eos_token_id=tokenizer.eos_token_id,
                                     image_size=image_size, patch_size=c["patch_size"]))


def connect_pairs(world: str, tokenizer) -> cd.CaptionPairs:
    """The connect split's (image, caption) pairs, tokenized; the split is read into memory
    once (Connect reads it over and over)."""
    source = builders.InMemory(builders.data_source(world, "connect"))
    return connect.image_pairs(source).tokenize(tokenizer, MAX_TOKENS, truncate=False)


def _connect(config, world: str, tokenizer, wd: Workdir):
    """Connect in ``<workdir>/connect`` (its metrics and checkpoints); resumes when cut."""
    model = clip_model(tokenizer, config.connect, config.world.image_size)
    fields = connect_fields(config)
    done = stages.begin(wd, "connect", fields, [wd.file("connect")], resumable=True)
    sub = Workdir(wd.file("connect"))
    # Trains, resumes an unfinished Connect, or (done) reloads its last checkpoint.
    params = connect.train(model, connect_pairs(world, tokenizer), connect_config(config), sub,
                           sub.file("checkpoints"))
    if not done:
        stages.finish(wd, "connect")
    return model, params


def _embed_splits(config, world: str, tokenizer, model, params, wd: Workdir,
                  chunk: int = 4096) -> str:
    """The frozen CLIP's embeddings of the train/val/test splits (with the images), in
    COCO's layout, written ``chunk`` rows at a time."""
    fields = connect_fields(config)
    if stages.begin(wd, "embeddings", fields, [wd.file(os.path.join("data", "shapes_clip"))]):
        return wd.file(os.path.join("data", "shapes_clip", builders.VERSION))
    sources = {s: builders.data_source(world, s) for s in ("train", "val", "test")}
    s, d, k = config.world.image_size, config.connect.projection_dim, scenes.CAPTIONS_PER_SCENE
    columns = {"image": ((s, s, 3), np.uint8), "image_embedding": ((d,), np.float32),
               "text_embedding": ((k, d), np.float32),
               **{a: ((), np.int64) for a in ("num_objects",) + scenes.ATTRIBUTES}}
    # Every process encodes every row (data-parallel); the writer keeps its part.
    with builders.PairsWriter("shapes_clip", wd.file("data"),
                              {s: len(src) for s, src in sources.items()}, columns,
                              (k,)) as writer:
        for split, src in sources.items():
            for lo in range(0, len(src), chunk):
                rows = [src[i] for i in range(lo, min(lo + chunk, len(src)))]
                caps = [cd.captions_of(r, "caption") for r in rows]
                ids, mask = encode_captions(tokenizer, [c for cs in caps for c in cs], MAX_TOKENS)
                images = np.stack([r["image"] for r in rows])
                writer.write(split, lo, {
                    "image": images,
                    "image_embedding": connect.encode(model, params, images=images),
                    "text_embedding": connect.encode(model, params, ids=ids, mask=mask
                                                     ).reshape(len(rows), k, d),
                    **{a: np.asarray([r[a] for r in rows])
                       for a in ("num_objects",) + scenes.ATTRIBUTES}}, caps)
    stages.finish(wd, "embeddings")
    return writer.final


def space_probe(model: clip.CLIP, world: str, tokenizer, split: str = "val",
                group_size: int = 100):
    """A function of CLIP params -> the geometry of their space (``geometry.space_summary``)
    on a world split's pairs: each image with its first caption."""
    rows = split_rows(world, split)
    images = np.stack([r["image"] for r in rows])
    ids, mask = encode_captions(tokenizer, [cd.captions_of(r, "caption")[0] for r in rows],
                                MAX_TOKENS)
    group = min(group_size, max(2, len(rows) // 5))

    def probe(params) -> dict:
        x = connect.encode(model, params, images=images)
        y = connect.encode(model, params, ids=ids, mask=mask)
        return geometry.space_summary(x, y, jax.random.PRNGKey(0), group)
    return probe


def val_probe(model: clip.CLIP, world: str, tokenizer, complete_world: Optional[str] = None,
              group_size: int = 100):
    """The Connect study's criterion, a function of CLIP params: the geometry of the world's
    val pairs (``space_probe``), with R@1 and gap on the same images' complete captions
    (``complete_*``, from ``complete_world``; the own ones when no caption is terse): what a
    terse caption does not state, R@1 cannot find."""
    own = space_probe(model, world, tokenizer, "val", group_size)
    complete = own if complete_world is None else space_probe(
        model, complete_world, tokenizer, "val", group_size)

    def probe(params) -> dict:
        g = own(params)
        c = g if complete is own else complete(params)
        return {**g, "complete_recall_at_1": c["recall_at_1"],
                "complete_gap_length": c["gap_length"]}
    return probe


def val_geometry(config, model: clip.CLIP, params, world: str, tokenizer, wd: Workdir) -> dict:
    """``val_probe`` of the main job's trained CLIP (its complete-caption val world built
    under ``<workdir>/data/complete`` when the world has terse captions)."""
    complete = None if not config.world.caption_omit else world_dataset(
        config, wd, {"val": config.world.val_size}, caption_omit=0.0, where="complete")
    return val_probe(model, world, tokenizer, complete)(params)


def connected_world(config, wd: Workdir) -> tuple:
    """World -> tokenizer -> Connect -> embeddings: (the CLIP module, its params, the
    world's dataset dir, its tokenizer, the embeddings dataset dir)."""
    world = world_dataset(config, wd)
    tokenizer = world_tokenizer(world, wd, world_fields(config))
    model, params = _connect(config, world, tokenizer, wd)
    dataset = _embed_splits(config, world, tokenizer, model, params, wd)
    return model, params, world, tokenizer, dataset


def split_rows(dataset: str, split: str) -> list:
    """Every row of a split of a world or embeddings dataset, in order."""
    src = builders.data_source(dataset, split)
    return [src[i] for i in range(len(src))]


def row_attributes(rows) -> dict:
    """The ground-truth attribute arrays (``num_objects`` and ``scenes.ATTRIBUTES``; -1 where
    one does not apply) of rows of the world or of its embeddings."""
    keys = ("num_objects",) + scenes.ATTRIBUTES
    return {k: np.asarray([int(r[k]) for r in rows]) for k in keys}


def test_attributes(dataset: str) -> dict:
    """The test split's ground-truth attributes (``row_attributes``)."""
    return row_attributes(split_rows(dataset, "test"))
