"""How dataset arrays are stored: rows with dimensions as raw bytes (fast to write), and
datasets written before that (every value in an int64 or float list) still read the same."""
import json
import os

import numpy as np
import pytest
import tensorflow_datasets as tfds

from c3_jax.data import builders, pipeline
from c3_jax.data import captions as cd
from c3_jax.train import connect


def old_features(fields, caption_shape):
    """The feature spec that builders wrote before raw bytes (copied from that version):
    every field a ``Tensor`` with tfds's default encoding (values in int64/float lists)."""
    features = {k: tfds.features.Tensor(
        shape=tuple(shape), dtype=np.float32 if np.issubdtype(dtype, np.floating) else dtype)
        for k, (shape, dtype) in fields.items()}
    features["index"] = np.int64
    if caption_shape is not None:
        features["caption"] = (tfds.features.Text() if caption_shape == () else
                               tfds.features.Sequence(tfds.features.Text(),
                                                      length=caption_shape[0]))
    return tfds.features.FeaturesDict(features)


def rows(n=7, size=6, k=2, seed=0):
    """A split of every kind of field the library writes, and its captions."""
    rng = np.random.default_rng(seed)
    arrays = {"image": rng.integers(0, 256, (n, size, size, 3), np.uint8),
              "image_embedding": rng.normal(size=(n, 5)).astype(np.float32),
              "text_embedding": rng.normal(size=(n, k, 5)).astype(np.float32),
              "image_id": rng.integers(-2 ** 40, 2 ** 40, n).astype(np.int64),
              "ids": rng.integers(-9, 9, (n, 4)).astype(np.int32),
              "boxes": rng.integers(0, 2 ** 16, (n, 3, 2)).astype(np.uint16),
              "mask": rng.integers(0, 2, (n, 4)).astype(np.int8),
              "wide": rng.integers(-2 ** 62, 2 ** 62, (n, 2)).astype(np.int64),
              "num_objects": rng.integers(1, 3, n).astype(np.int64)}
    captions = [[f"row {i} caption {j}" for j in range(k)] for i in range(n)]
    return arrays, captions


def write(data_dir, name, arrays, captions, features=None):
    """Writes one 'train' split with PairsWriter (``features``: another spec to write with)."""
    fields, caption_shape = builders.fields_of({"train": arrays}, {"train": captions})
    n = len(captions)
    with builders.PairsWriter(name, str(data_dir), {"train": n}, fields, caption_shape) as w:
        if features is not None:
            w.features = features(fields, caption_shape)
        w.write("train", 0, arrays, captions)
    return w.final


def saved_encodings(path) -> dict:
    """{field: encoding} of the Tensor fields in a dataset's features.json."""
    with open(os.path.join(path, "features.json")) as f:
        spec = json.load(f)["featuresDict"]["features"]
    return {k: v["tensor"].get("encoding", "none") for k, v in spec.items() if "tensor" in v}


def assert_rows_equal(source, arrays, captions):
    assert len(source) == len(captions)
    for i in range(len(source)):
        ex = source[i]
        assert ex["index"] == i
        assert [c.decode() for c in ex["caption"]] == captions[i]
        for k, v in arrays.items():
            got = np.asarray(ex[k])
            assert got.dtype == v.dtype and got.shape == v[i].shape, k
            np.testing.assert_array_equal(got, v[i], err_msg=k)


def test_array_rows_are_stored_as_raw_bytes_and_read_back_exactly(tmp_path):
    """Every field with row dimensions (uint8 images, float embeddings, int8..int64 and
    uint16 arrays) is raw bytes; per-row scalars stay values; all read back equal, with
    their dtype and shape."""
    arrays, captions = rows()
    path = write(tmp_path, "new_pairs", arrays, captions)
    assert saved_encodings(path) == {
        "image": "bytes", "image_embedding": "bytes", "text_embedding": "bytes",
        "ids": "bytes", "boxes": "bytes", "mask": "bytes", "wide": "bytes",
        "image_id": "none", "num_objects": "none", "index": "none"}
    source = builders.data_source(path, "train")
    assert_rows_equal(source, arrays, captions)
    assert np.ndim(source[0]["image_id"]) == 0 and np.ndim(source[0]["num_objects"]) == 0


def test_float64_arrays_are_stored_as_float32_raw_bytes(tmp_path):
    rng = np.random.default_rng(1)
    wide = rng.normal(size=(3, 4))
    path = builders.build_pairs_dataset("doubles", str(tmp_path), {"train": {"e": wide}})
    got = np.stack([r["e"] for r in builders.InMemory(builders.data_source(path, "train"))])
    assert got.dtype == np.float32
    np.testing.assert_array_equal(got, wide.astype(np.float32))


def test_datasets_written_in_the_old_format_read_identically(tmp_path):
    """A dataset written with the old spec (uint8 images as int64 lists) reads, through
    data_source, InMemory, caption pairs and both loaders, exactly as the new format."""
    arrays, captions = rows(n=9)
    old = write(tmp_path / "old", "pairs", arrays, captions, features=old_features)
    new = write(tmp_path / "new", "pairs", arrays, captions)
    assert set(saved_encodings(old).values()) == {"none"}
    assert saved_encodings(new)["image"] == "bytes"
    sources = [builders.data_source(p, "train") for p in (old, new)]
    for source in sources:
        assert_rows_equal(source, arrays, captions)
        assert_rows_equal(builders.InMemory(source, chunk=4), arrays, captions)
    # The loaders: grain streaming and read into memory, over rows and over caption pairs.
    for make in (lambda s: s, lambda s: connect.image_pairs(s),
                 lambda s: cd.CaptionPairs(s, "text_embedding")):
        for in_memory in (0, 1 << 30):
            batches = [[b for _, b in zip(range(3), pipeline.make_loader(
                make(s), 4, 5, shard_index=0, shard_count=1, in_memory_bytes=in_memory))]
                for s in sources]
            assert len(batches[0]) == len(batches[1]) == 3
            for a, b in zip(*batches):
                assert a.keys() == b.keys()
                for key in a:
                    assert np.asarray(a[key]).dtype == np.asarray(b[key]).dtype, key
                    np.testing.assert_array_equal(a[key], b[key], err_msg=key)
    first = connect.image_pairs(sources[0])[3]["image"]
    assert first.dtype == np.uint8
    np.testing.assert_array_equal(first, arrays["image"][1])


def test_an_old_format_dataset_is_replaced_by_the_new_format_on_overwrite(tmp_path):
    """overwrite swaps an old-format dataset for a new-format one; nothing reads stale."""
    arrays, captions = rows(n=4)
    old = write(tmp_path, "pairs", arrays, captions, features=old_features)
    assert saved_encodings(old)["image"] == "none"
    fresh, fresh_captions = rows(n=5, seed=3)
    path = builders.build_pairs_dataset("pairs", str(tmp_path), {"train": fresh},
                                        {"train": fresh_captions}, overwrite=True)
    assert path == old and saved_encodings(path)["image"] == "bytes"
    assert_rows_equal(builders.data_source(path, "train"), fresh, fresh_captions)


def test_rows_of_the_wrong_dtype_are_refused_before_the_dataset_is_complete(tmp_path):
    """Raw bytes do not reinterpret: an int32 batch for an int64 field is an error."""
    arrays, captions = rows(n=2)
    fields, caption_shape = builders.fields_of({"train": arrays}, {"train": captions})
    with pytest.raises(ValueError, match="(?i)dtype"):
        with builders.PairsWriter("pairs", str(tmp_path), {"train": 2}, fields,
                                  caption_shape) as w:
            w.write("train", 0, {**arrays, "wide": arrays["wide"].astype(np.int32)}, captions)
    assert not os.path.exists(os.path.join(tmp_path, "pairs"))
