"""Peak memory and throughput of a streamed dataset write at COCO's size: the rows of the
Karpathy split (113,287 + 5,000 + 5,000) with 256 px images, as coco_extract writes for
text-to-image (about 24 GB of images), from synthetic rows.

  python benchmarks/dataset_write.py --image_size=256 --out=runs/dataset_write

Ours: ``dryrun.write_synthetic_dataset`` (``builders.PairsWriter``, tfds array_record
records, ``--write_batch`` rows at a time). Reference: the disk's side of the same work,
the same rows (drawn by the same ``dryrun.synthetic_rows``, in the same batches) written as
their raw bytes (each array's buffer and the captions as UTF-8) to one plain file per split,
so the ratio is the share of the raw write speed that serialization keeps. Neither side
syncs to disk. Prints one JSON line (peak RSS of this process, rows/s of both sides, MB/s,
bytes on disk; ms per row in all, spent drawing the rows, and writing them: the total less
the drawing, which is timed in the reference's pass) and removes what it wrote unless
--keep. ``--smoke``: 12 rows of 16 px images in a temporary directory, through the same
code (seconds; the test suite runs it).
"""
import argparse
import json
import os
import shutil
import tempfile
import time

from c3_jax.data import builders
from c3_jax.experiments.dryrun import synthetic_rows, write_synthetic_dataset

# --smoke: the sizes of the test suite's run of this benchmark.
SMOKE = dict(train=8, val=2, test=2, image_size=16, write_batch=4)
CAPTIONS, DIM = 5, 512


def raw_write(directory: str, sizes: dict, image_size: int, write_batch: int,
              seed: int = 0) -> dict:
    """The reference: the same synthetic rows as raw bytes, one file per split; returns
    rows, seconds, rows/s, bytes written and the seconds spent drawing the rows (the same
    work on both sides, so either side's write alone is its seconds less these)."""
    os.makedirs(directory, exist_ok=True)
    written, drawing, start = 0, 0.0, time.perf_counter()
    for split, n in sizes.items():
        part = builders.process_rows(n)
        with open(os.path.join(directory, f"{split}.raw"), "wb") as f:
            for lo in range(part.start, part.stop, write_batch):
                drawn = time.perf_counter()
                arrays, caps = synthetic_rows(seed, split, lo, min(write_batch, part.stop - lo),
                                              CAPTIONS, DIM, image_size)
                drawing += time.perf_counter() - drawn
                for a in arrays.values():
                    written += f.write(a.tobytes())
                written += f.write("\n".join(c for row in caps for c in row).encode())
    seconds = time.perf_counter() - start
    rows = sum(sizes.values())
    return {"rows": rows, "seconds": seconds, "rows_per_second": rows / seconds,
            "bytes": written, "drawing_seconds": drawing}


def main():
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--train", type=int, default=113_287)
    p.add_argument("--val", type=int, default=5_000)
    p.add_argument("--test", type=int, default=5_000)
    p.add_argument("--image_size", type=int, default=256)
    p.add_argument("--write_batch", type=int, default=256)
    p.add_argument("--out", default=None,
                   help="where to write (default runs/dataset_write; --smoke: a temporary "
                        "directory)")
    p.add_argument("--keep", action="store_true")
    p.add_argument("--smoke", action="store_true",
                   help=f"tiny sizes, same code path (the test suite's run): {SMOKE}")
    a = p.parse_args()
    if a.smoke:
        vars(a).update(SMOKE)
    out = a.out or (tempfile.mkdtemp(prefix="dataset_write_") if a.smoke
                    else "runs/dataset_write")
    sizes = {"train": a.train, "val": a.val, "test": a.test}
    figures = write_synthetic_dataset("coco_synthetic_images", out, sizes, CAPTIONS, DIM,
                                      a.image_size, a.write_batch, seed=0)
    raw_dir = os.path.join(out, "raw_reference")
    raw = raw_write(raw_dir, sizes, a.image_size, a.write_batch)
    ours, rows = figures["rows_per_second"], raw["rows"]
    drawing_ms = 1e3 * raw["drawing_seconds"] / rows
    print(json.dumps({
        "name": "dataset_write_pairs_writer", "reference_name": "raw_bytes_plain_file",
        "ours": ours, "reference": raw["rows_per_second"], "unit": "rows/s",
        "ratio": ours / raw["rows_per_second"],
        "ms_per_row": 1e3 / ours, "reference_ms_per_row": 1e3 / raw["rows_per_second"],
        "drawing_ms_per_row": drawing_ms,
        "write_ms_per_row": 1e3 / ours - drawing_ms,
        "reference_write_ms_per_row": 1e3 / raw["rows_per_second"] - drawing_ms,
        **figures, "reference_seconds": raw["seconds"], "reference_bytes": raw["bytes"],
        "image_size": a.image_size, "write_batch": a.write_batch, "smoke": a.smoke,
        "load_average_1min": os.getloadavg()[0]}))
    if not a.keep:
        shutil.rmtree(figures["dataset_dir"])
        shutil.rmtree(raw_dir)
        if a.out is None and a.smoke:
            shutil.rmtree(out, ignore_errors=True)


if __name__ == "__main__":
    main()
