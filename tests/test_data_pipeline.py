"""TFDS builders (array_record, no TensorFlow) and the grain pipeline."""
import json
import os

import jax
import numpy as np
import pytest
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from c3_jax.data import builders, pipeline


def _splits(rng):
    return {"train": {"image_embedding": rng.normal(size=(24, 8)).astype(np.float32),
                      "image_id": np.arange(24, dtype=np.int64) * 7},
            "test": {"image_embedding": rng.normal(size=(5, 8)).astype(np.float32),
                     "image_id": np.arange(5, dtype=np.int64)}}


def test_a_split_read_into_memory_is_its_source(tmp_path):
    """builders.InMemory: the same rows, the same identity for grain, the same batches."""
    rng = np.random.default_rng(0)
    captions = {"train": [f"caption {i}" for i in range(24)], "test": list("abcde")}
    path = builders.build_pairs_dataset("toy_pairs", str(tmp_path), _splits(rng), captions)
    source = builders.data_source(path, "train")
    kept = builders.InMemory(source, chunk=5)  # chunks that do not divide the split
    assert len(kept) == len(source) == 24 and repr(kept) == repr(source)
    for i in range(24):
        assert kept[i].keys() == source[i].keys()
        for key in source[i]:
            np.testing.assert_array_equal(kept[i][key], source[i][key])
    batches = [list(zip(range(4), pipeline.make_loader(s, 4, 3, shard_index=0, shard_count=1)))
               for s in (source, kept)]
    for (_, a), (_, b) in zip(*batches):
        np.testing.assert_array_equal(a["image_embedding"], b["image_embedding"])


def test_generic_builder_round_trips_exactly(tmp_path):
    rng = np.random.default_rng(0)
    splits = _splits(rng)
    captions = {"train": [f"caption {i}" for i in range(24)], "test": list("abcde")}
    path = builders.build_pairs_dataset("toy_pairs", str(tmp_path), splits, captions)
    for split, arrays in splits.items():
        src = builders.data_source(path, split)
        assert len(src) == len(arrays["image_id"])
        for i in range(len(src)):
            ex = src[i]
            assert ex["index"] == i
            np.testing.assert_array_equal(ex["image_embedding"], arrays["image_embedding"][i])
            assert ex["image_id"] == arrays["image_id"][i]
            assert ex["caption"].decode() == captions[split][i]
    with pytest.raises(KeyError, match="no split 'val'"):
        builders.data_source(path, "val")
    assert not list(tmp_path.glob("**/incomplete*"))


def test_generic_builder_rejects_bad_input(tmp_path):
    rng = np.random.default_rng(1)
    bad = _splits(rng)
    bad["train"]["image_embedding"][3, 2] = np.nan
    with pytest.raises(ValueError, match="'image_embedding' contains NaN"):
        builders.build_pairs_dataset("bad_pairs", str(tmp_path), bad)
    short = _splits(rng)
    short["test"]["image_id"] = short["test"]["image_id"][:3]
    with pytest.raises(ValueError, match="different row counts"):
        builders.build_pairs_dataset("bad_pairs", str(tmp_path), short)
    assert not (tmp_path / "bad_pairs").exists()


def _rows(path, split) -> list:
    return [{k: np.asarray(v) for k, v in ex.items()} for ex in builders.data_source(path, split)]


def _in_memory_write(data_dir, name, splits, captions) -> str:
    """The writer before streaming, written out with tfds alone: whole float32 arrays, one
    shard per split, the features and metadata built from them (rows with dimensions as raw
    bytes, per-row scalars as values)."""
    import tensorflow_datasets as tfds
    from array_record.python.array_record_module import ArrayRecordWriter
    arrays = {s: {k: (v.astype(np.float32) if v.dtype.kind == "f" else v) for k, v in a.items()}
              for s, a in splits.items()}
    first = next(iter(arrays.values()))
    features = tfds.features.FeaturesDict({
        **{k: tfds.features.Tensor(shape=v.shape[1:], dtype=v.dtype,
                                   encoding="bytes" if v.ndim > 1 else "none")
           for k, v in first.items()},
        "index": np.int64,
        "caption": tfds.features.Sequence(tfds.features.Text(), length=3)})
    path = os.path.join(data_dir, name, "1.0.0")
    os.makedirs(path)
    template = tfds.core.ShardedFileTemplate(
        data_dir=path, template="{DATASET}-{SPLIT}.{FILEFORMAT}-{SHARD_X_OF_Y}",
        dataset_name=name, filetype_suffix="array_record")
    infos = []
    for s, a in sorted(arrays.items()):
        shard = os.fspath(template.replace(split=s).sharded_filepath(shard_index=0, num_shards=1))
        writer = ArrayRecordWriter(shard, "group_size:1")
        for i in range(len(a["image"])):
            writer.write(features.serialize_example(
                {**{k: v[i] for k, v in a.items()}, "index": i, "caption": captions[s][i]}))
        writer.close()
        infos.append(tfds.core.SplitInfo(name=s, shard_lengths=[len(a["image"])],
                                         num_bytes=os.path.getsize(shard),
                                         filename_template=template.replace(split=s)))
    tfds.folder_dataset.write_metadata(data_dir=path, features=features, split_infos=infos,
                                       version="1.0.0", filename_template=template,
                                       check_data=False, disable_shuffling=True)
    return path


def _metadata(path) -> tuple:
    """features.json and dataset_info.json, less each split's byte count."""
    info = json.loads(open(f"{path}/dataset_info.json").read())
    for split in info["splits"]:
        split.pop("numBytes")
    return json.loads(open(f"{path}/features.json").read()), info


def test_streamed_writes_equal_the_in_memory_writer(tmp_path):
    """Rows written by PairsWriter in uneven batches, and whole arrays given to
    build_pairs_dataset, read back as the same dataset written in memory with tfds alone
    (the writer before streaming): the same rows, dataset_info.json and features.json
    (num_bytes aside: array_record files are not byte-reproducible). Rows out of order, a
    batch of another shape or rows left unwritten fail, and a failed write never looks
    complete."""
    rng = np.random.default_rng(4)
    splits = {s: {"image": rng.integers(0, 256, (n, 6, 6, 3), dtype=np.uint8),
                  "text_embedding": rng.normal(size=(n, 3, 8)),  # float64: stored as float32
                  "image_id": np.arange(n, dtype=np.int64) + 100}
              for s, n in (("train", 23), ("test", 4))}
    captions = {s: [[f"{s} {i} {j}" for j in range(3)] for i in range(len(a["image"]))]
                for s, a in splits.items()}
    want = _in_memory_write(str(tmp_path), "pairs", splits, captions)
    whole = builders.build_pairs_dataset("pairs", str(tmp_path / "whole"), splits, captions)
    fields, caption_shape = builders.fields_of(splits, captions)
    sizes = {s: len(a["image"]) for s, a in splits.items()}
    with builders.PairsWriter("pairs", str(tmp_path / "streamed"), sizes, fields,
                              caption_shape) as w:
        for s, arrays in splits.items():
            for lo, hi in ((0, 1), (1, 8), (8, 8), (8, 23)):
                w.write(s, lo, {k: v[lo:hi] for k, v in arrays.items()}, captions[s][lo:hi])
    for got_dir in (whole, w.final):
        for s in splits:
            got, ref = _rows(got_dir, s), _rows(want, s)
            assert len(got) == len(ref) == sizes[s]
            for a, b in zip(got, ref):
                assert a.keys() == b.keys()
                for k in a:
                    np.testing.assert_array_equal(a[k], b[k])
        assert _metadata(got_dir) == _metadata(want)
    head = {k: v[:2] for k, v in splits["test"].items()}
    with pytest.raises(ValueError, match="rows must arrive in order"):
        with builders.PairsWriter("skips", str(tmp_path), sizes, fields, caption_shape) as w:
            w.write("test", 1, head, captions["test"][:2])
    with pytest.raises(ValueError, match=r"'image' has rows of shape \(6, 6\), the dataset"):
        with builders.PairsWriter("shape", str(tmp_path), sizes, fields, caption_shape) as w:
            w.write("test", 0, {**head, "image": head["image"][..., 0]}, captions["test"][:2])
    with pytest.raises(ValueError, match="not written"):
        with builders.PairsWriter("short", str(tmp_path), sizes, fields, caption_shape) as w:
            w.write("test", 0, head, captions["test"][:2])
    for name in ("skips", "shape", "short"):
        assert not (tmp_path / name / builders.VERSION).exists()


def _indices(loader):
    return np.concatenate([b["index"] for b in loader])


def test_two_processes_read_disjoint_shards_covering_each_example_once(tmp_path):
    path = builders.build_pairs_dataset("toy_pairs", str(tmp_path), _splits(np.random.default_rng(2)))
    src = builders.data_source(path, "train")
    shards = [_indices(pipeline.make_loader(src, 4, seed=3, num_epochs=1, shard_index=i,
                                            shard_count=2)) for i in range(2)]
    assert not set(shards[0]) & set(shards[1])
    assert sorted(np.concatenate(shards).tolist()) == list(range(24))
    # Same seed, same order; another seed, another order.
    again = _indices(pipeline.make_loader(src, 4, seed=3, num_epochs=1, shard_index=0,
                                          shard_count=2))
    other = _indices(pipeline.make_loader(src, 4, seed=4, num_epochs=1, shard_index=0,
                                          shard_count=2))
    assert again.tolist() == shards[0].tolist() and other.tolist() != shards[0].tolist()


def test_restored_iterator_continues_with_the_next_batch(tmp_path):
    path = builders.build_pairs_dataset("toy_pairs", str(tmp_path), _splits(np.random.default_rng(3)))
    src = builders.data_source(path, "train")
    it = iter(pipeline.make_loader(src, 4, seed=0, shard_index=0, shard_count=1))
    for _ in range(3):
        next(it)
    state = it.get_state()
    want = [next(it)["index"].tolist() for _ in range(4)]  # crosses the epoch boundary
    restored = iter(pipeline.make_loader(src, 4, seed=0, shard_index=0, shard_count=1))
    restored.set_state(state)
    assert [next(restored)["index"].tolist() for _ in range(4)] == want


def test_global_batch_over_devices():
    mesh = Mesh(np.array(jax.devices()), ("data",))
    local = {"x": np.arange(8 * 3, dtype=np.float32).reshape(8, 3)}
    out = pipeline.global_batch(local, NamedSharding(mesh, P("data")))
    assert out["x"].shape == (8, 3) and out["x"].sharding.spec == P("data")
    np.testing.assert_array_equal(out["x"], local["x"])


class _WordTokenizer:
    """Stands in for a Hugging Face tokenizer: one id per word, EOS = 0."""
    eos_token_id = 0

    def __call__(self, texts, add_special_tokens=False):
        one = lambda text: [len(w) for w in text.split()]
        return {"input_ids": one(texts) if isinstance(texts, str) else [one(t) for t in texts]}


def test_caption_batches_are_padded_with_mask(tmp_path):
    from c3_jax.data.text import encode_captions
    captions = {"train": ["a b", "ccc dd e", "ffff"] * 4, "test": ["x"] * 5}
    splits = {"train": {"image_id": np.arange(12)}, "test": {"image_id": np.arange(5)}}
    path = builders.build_pairs_dataset("toy_pairs", str(tmp_path), splits, captions)
    tok = _WordTokenizer()

    def tokenize(ex):
        ids, mask = encode_captions(tok, [ex["caption"].decode()], max_length=6)
        return {"index": ex["index"], "ids": ids[0], "mask": mask[0]}

    batch = next(iter(pipeline.make_loader(builders.data_source(path, "train"), 4, seed=0,
                                           shard_index=0, shard_count=1, transform=tokenize)))
    assert batch["ids"].shape == batch["mask"].shape == (4, 6)
    for ids, mask, i in zip(batch["ids"], batch["mask"], batch["index"]):
        words = captions["train"][i].split()
        assert ids[:len(words) + 1].tolist() == [len(w) for w in words] + [0]
        assert mask.tolist() == [1] * (len(words) + 1) + [0] * (5 - len(words))


def test_iterator_state_round_trips_through_orbax(tmp_path):
    import grain
    import orbax.checkpoint as ocp
    path = builders.build_pairs_dataset("toy_pairs", str(tmp_path / "data"),
                                        _splits(np.random.default_rng(5)))
    src = builders.data_source(path, "train")
    loader = lambda: pipeline.make_loader(src, 4, seed=1, shard_index=0, shard_count=1)
    it = iter(loader())
    next(it), next(it)
    with ocp.CheckpointManager(tmp_path / "ckpt") as mngr:
        mngr.save(2, args=ocp.args.Composite(data=grain.checkpoint.CheckpointSave(it)))
        mngr.wait_until_finished()
    want = next(it)["index"].tolist()
    fresh = iter(loader())
    with ocp.CheckpointManager(tmp_path / "ckpt") as mngr:
        mngr.restore(2, args=ocp.args.Composite(data=grain.checkpoint.CheckpointRestore(fresh)))
    assert next(fresh)["index"].tolist() == want


@pytest.mark.slow
def test_embeddings_dataset_command(tmp_path):
    import json
    import subprocess
    import sys
    rng = np.random.default_rng(6)
    audio, text = rng.normal(size=(6, 16)).astype(np.float32), rng.normal(size=(6, 16))
    np.savez(tmp_path / "clotho.npz", **{"train/audio_embedding": audio[:4],
                                         "train/text_embedding": text[:4],
                                         "test/audio_embedding": audio[4:],
                                         "test/text_embedding": text[4:]})
    (tmp_path / "captions.json").write_text(json.dumps(
        {"train": ["rain", "a dog barks", "wind", "birds"], "test": ["a car", "a bell"]}))
    out = subprocess.run(
        [sys.executable, "-m", "c3_jax.main", "--config=configs/embeddings_dataset.py",
         f"--config.embeddings={tmp_path / 'clotho.npz'}",
         f"--config.captions={tmp_path / 'captions.json'}", "--config.name=clotho_imagebind",
         f"--config.data_dir={tmp_path / 'data'}", f"--workdir={tmp_path / 'run'}"],
        capture_output=True, text=True, timeout=300,
        cwd=str(__import__("pathlib").Path(__file__).parents[1]))
    assert out.returncode == 0, out.stderr[-2000:]
    result = json.loads((tmp_path / "run" / "results.json").read_text())
    assert result["splits"] == {"train": 4, "test": 2}
    test = builders.data_source(result["dataset_dir"], "test")
    np.testing.assert_array_equal(test[1]["audio_embedding"], audio[5])
    np.testing.assert_array_equal(test[1]["text_embedding"], text[5].astype(np.float32))
    assert test[1]["caption"] == b"a bell"


def _stream(src, shard_count, batches, seed=3, epochs=None, start_state=None):
    """``batches`` global batches assembled from ``shard_count`` loaders' slices."""
    its = [iter(pipeline.make_loader(src, 12 // shard_count, seed=seed, num_epochs=epochs,
                                     shard_index=p, shard_count=shard_count))
           for p in range(shard_count)]
    if start_state is not None:
        for it in its:
            it.set_state(start_state)
    out = [np.concatenate([next(it)["index"] for it in its]) for _ in range(batches)]
    return out, its


@pytest.mark.parametrize("shard_count", [1, 2, 3, 4])
def test_every_process_count_assembles_the_same_global_batches(tmp_path, shard_count):
    import grain.python as grain
    path = builders.build_pairs_dataset("toy_pairs", str(tmp_path), _splits(np.random.default_rng(7)))
    src = builders.data_source(path, "train")
    # Reference: grain's own single-process shuffled order, cut into batches of 12.
    order = grain.IndexSampler(24, grain.ShardOptions(0, 1, True), shuffle=True, seed=3)
    want = np.array([order[i].record_key for i in range(12 * 5)]).reshape(5, 12)
    got, its = _stream(src, shard_count, 5)  # 5 batches: crosses two epoch boundaries
    np.testing.assert_array_equal(np.stack(got), want)
    # The position is the number of global batches, the same on every process.
    assert len({it.get_state() for it in its}) == 1
    assert json.loads(its[0].get_state())["global_batches"] == 5


def test_position_saved_with_one_process_count_resumes_with_another(tmp_path):
    path = builders.build_pairs_dataset("toy_pairs", str(tmp_path), _splits(np.random.default_rng(8)))
    src = builders.data_source(path, "train")
    want, _ = _stream(src, 1, 7)
    _, its = _stream(src, 2, 3)
    state = its[1].get_state()
    for count in (1, 3, 4):
        got, _ = _stream(src, count, 4, start_state=state)
        np.testing.assert_array_equal(np.stack(got), np.stack(want[3:]))
    with pytest.raises(ValueError, match="does not match this pipeline: order"):
        _stream(src, 2, 1, seed=4, start_state=state)
    other_batch = iter(pipeline.make_loader(src, 4, seed=3, shard_index=0, shard_count=2))
    with pytest.raises(ValueError, match="global_batch is 12 in the checkpoint and 8 here"):
        other_batch.set_state(state)


def test_finite_epochs_end_together_on_every_process(tmp_path):
    path = builders.build_pairs_dataset("toy_pairs", str(tmp_path), _splits(np.random.default_rng(9)))
    src = builders.data_source(path, "train")
    # 24 records, global batch 10: two full batches on every process, the rest dropped.
    for count in (1, 2, 5):
        loaders = [pipeline.make_loader(src, 10 // count, seed=0, num_epochs=1, shard_index=p,
                                        shard_count=count) for p in range(count)]
        assert [len(list(loader)) for loader in loaders] == [2] * count
    short = pipeline.make_loader(src, 10, seed=0, num_epochs=1, shard_index=0, shard_count=1,
                                 drop_remainder=False, shuffle=False)
    assert [len(b["index"]) for b in short] == [10, 10, 4]
    with pytest.raises(ValueError, match="drop_remainder=False needs one process"):
        pipeline.make_loader(src, 5, seed=0, shard_index=0, shard_count=2, drop_remainder=False)


def test_position_saved_by_the_previous_grain_pipeline_resumes_at_the_same_batch(tmp_path):
    """Runs saved before positions became process-count independent (grain's handler, a
    ShardByJaxProcess DataLoader) resume at the batch they would have read next."""
    import grain
    import grain.python as gp
    import jax.numpy as jnp
    import orbax.checkpoint as ocp
    from c3_jax.train import checkpoints
    from c3_jax.train import state as st
    path = builders.build_pairs_dataset("toy_pairs", str(tmp_path / "data"),
                                        _splits(np.random.default_rng(10)))
    src = builders.data_source(path, "train")
    sampler = gp.IndexSampler(len(src), shard_options=gp.ShardByJaxProcess(drop_remainder=True),
                              shuffle=True, num_epochs=None, seed=5)
    old = iter(gp.DataLoader(data_source=src, sampler=sampler,
                             operations=[gp.Batch(4, drop_remainder=True)], worker_count=0))
    for _ in range(7):  # crosses an epoch boundary
        next(old)
    state = st.TrainState(jnp.zeros((), jnp.int32), {"w": jnp.ones(3)}, ())
    with ocp.CheckpointManager(tmp_path / "ckpt" / "latest") as mngr:
        mngr.save(7, args=ocp.args.Composite(state=ocp.args.StandardSave(state),
                                             data=grain.checkpoint.CheckpointSave(old)))
        mngr.wait_until_finished()
    new = iter(pipeline.make_loader(src, 4, seed=5))
    ckpts = checkpoints.Checkpoints(str(tmp_path / "ckpt"))
    try:
        restored = ckpts.restore(checkpoints.abstract(state), new)
    finally:
        ckpts.close()
    np.testing.assert_array_equal(restored.params["w"], np.ones(3))
    assert [next(new)["index"].tolist() for _ in range(3)] == [
        next(old)["index"].tolist() for _ in range(3)]


class _Records:
    """A random-access source of numbered records: an image-like array, a scalar, bytes."""

    def __init__(self, n: int):
        self.n = n

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> dict:
        return {"index": np.int64(i), "pixels": np.full((2, 3), i, np.uint8),
                "text": b"x" * (i % 3 + 1)}


def _batches(loader, count):
    it = iter(loader)
    return [next(it) for _ in range(count)]


@pytest.mark.parametrize("seed", [0, 3, 2 ** 32 - 2])
def test_record_keys_are_grains_index_sampler_order(seed):
    import grain.python as grain
    for n, shuffle in ((24, True), (7, True), (1, True), (24, False)):
        order = grain.IndexSampler(n, grain.ShardOptions(0, 1, True), shuffle=shuffle,
                                   seed=seed)
        positions = np.arange(4 * n)  # four epochs (the seed wraps past 2**32 - 1)
        want = [order[int(i)].record_key for i in positions]
        assert pipeline.record_keys(n, positions, seed, shuffle).tolist() == want


@pytest.mark.parametrize("shard_count", [1, 2, 3])
def test_in_memory_batches_equal_grains(shard_count):
    """A source read into memory gives grain's batches on every process, in finite and
    endless epochs, with a transform, and resumes from a position either path saved."""
    src = _Records(26)
    double = lambda r: {**r, "pixels": r["pixels"] * 2}
    for epochs, transform in ((None, None), (2, None), (1, double)):
        for p in range(shard_count):
            make = lambda memory: pipeline.make_loader(
                src, 12 // shard_count, seed=5, num_epochs=epochs, shard_index=p,
                shard_count=shard_count, transform=transform,
                in_memory_bytes=memory)
            kept, streamed = make(pipeline.IN_MEMORY_BYTES), make(0)
            assert kept.columns is not None and streamed.columns is None
            want = list(streamed) if epochs else _batches(streamed, 6)
            got = list(kept) if epochs else _batches(kept, 6)
            assert len(got) == len(want) == (6 if epochs is None else 26 * epochs // 12)
            for a, b in zip(got, want):
                assert a.keys() == b.keys()
                for k in a:
                    assert a[k].dtype == b[k].dtype, k
                    np.testing.assert_array_equal(a[k], b[k])
            for saver, loader in ((streamed, kept), (kept, streamed)):
                it = iter(saver)
                next(it)
                fresh = iter(loader)
                fresh.set_state(it.get_state())
                np.testing.assert_array_equal(next(fresh)["index"], next(it)["index"])


def test_short_last_batch_in_memory_and_the_size_bound():
    src = _Records(10)
    short = pipeline.make_loader(src, 4, seed=0, num_epochs=1, shard_index=0, shard_count=1,
                                 drop_remainder=False, shuffle=False)
    assert short.columns is not None
    assert [b["index"].tolist() for b in short] == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]]
    # Over the bound (or ragged records): grain streams them.
    one = pipeline.record_bytes(src[0])
    assert pipeline.make_loader(src, 4, 0, shard_index=0, shard_count=1,
                                in_memory_bytes=one * 10).columns is not None
    assert pipeline.make_loader(src, 4, 0, shard_index=0, shard_count=1,
                                in_memory_bytes=one * 10 - 1).columns is None
    ragged = lambda r: {"v": np.zeros(int(r["index"]) % 2 + 1)}
    nested = lambda r: {"v": [r["index"], r["index"]]}
    for transform in (ragged, nested):
        assert pipeline.make_loader(src, 4, 0, shard_index=0, shard_count=1,
                                    transform=transform).columns is None


@pytest.mark.parametrize("per_caption", [True, False])
def test_caption_pairs_columns_are_their_items(per_caption):
    """CaptionPairs.columns (each row read once) holds what __getitem__ gives, pair by pair,
    and a loader over them gives grain's batches."""
    from c3_jax.data import captions as cd
    rng = np.random.default_rng(11)
    rows = [{"caption": [f"w{i} " * (i % 3 + 1), f"v{i}", "a b c"],
             "embedding": rng.normal(size=(3, 4) if per_caption else (4,)),
             "image": np.full((2, 2, 3), i, np.uint8)} for i in range(9)]
    for field, key in (("embedding", "embedding"), ("image", "image")):
        pairs = cd.CaptionPairs(rows, field, rows=[1, 4, 5, 8], output_key=key)
        assert pairs.columns() is None  # not tokenized: grain reads the captions
        pairs.tokenize(_WordTokenizer(), 5, truncate=True)
        columns = pairs.columns()
        assert sorted(columns) == sorted(pairs[0])
        for i in range(len(pairs)):
            for k, v in pairs[i].items():
                assert columns[k][i].dtype == v.dtype
                np.testing.assert_array_equal(columns[k][i], v)
        kept, streamed = (pipeline.make_loader(pairs, 5, 2, shard_index=0, shard_count=1,
                                               in_memory_bytes=m) for m in (1 << 20, 0))
        assert kept.columns is not None
        for a, b in zip(_batches(kept, 4), _batches(streamed, 4)):
            for k in a:
                np.testing.assert_array_equal(a[k], b[k])
