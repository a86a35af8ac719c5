"""Peak memory and throughput of a streamed dataset write at COCO's size: the rows of the
Karpathy split (113,287 + 5,000 + 5,000) with 256 px images, as coco_extract writes for
text-to-image (about 24 GB of images), from synthetic rows.

  python benchmarks/dataset_write.py --image_size=256 --out=runs/dataset_write

Prints the figures as JSON (peak RSS of this process, rows/s, MB/s, bytes on disk) and
removes the dataset afterwards unless --keep.
"""
import argparse
import json
import shutil

from c3_jax.experiments.dryrun import write_synthetic_dataset


def main():
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--train", type=int, default=113_287)
    p.add_argument("--val", type=int, default=5_000)
    p.add_argument("--test", type=int, default=5_000)
    p.add_argument("--image_size", type=int, default=256)
    p.add_argument("--write_batch", type=int, default=256)
    p.add_argument("--out", default="runs/dataset_write")
    p.add_argument("--keep", action="store_true")
    a = p.parse_args()
    sizes = {"train": a.train, "val": a.val, "test": a.test}
    figures = write_synthetic_dataset("coco_synthetic_images", a.out, sizes, 5, 512,
                                      a.image_size, a.write_batch, seed=0)
    print(json.dumps({**figures, "image_size": a.image_size, "write_batch": a.write_batch},
                     indent=1))
    if not a.keep:
        shutil.rmtree(figures["dataset_dir"])


if __name__ == "__main__":
    main()
