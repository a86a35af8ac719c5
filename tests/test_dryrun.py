"""The COCO-sized dry run (configs/coco_dryrun.py), at its ':quick' size."""
import json
import math

import numpy as np
import pytest

from c3_jax import runner
from c3_jax.data import builders
from c3_jax.experiments import dryrun
from configs import coco_dryrun
from conftest import override


def test_synthetic_rows_do_not_depend_on_the_batching():
    whole, caps = dryrun.synthetic_rows(0, "train", 3, 6, 2, 8, image_size=4)
    parts = [dryrun.synthetic_rows(0, "train", 3 + lo, n, 2, 8, image_size=4)
             for lo, n in ((0, 1), (1, 5))]
    for key, value in whole.items():
        np.testing.assert_array_equal(np.concatenate([p[0][key] for p in parts]), value)
    assert caps == parts[0][1] + parts[1][1]
    np.testing.assert_allclose(np.linalg.norm(whole["text_embedding"], axis=-1), 1, rtol=1e-6)
    assert all(len(c) == 2 and c[0].endswith(" .") for c in caps)


@pytest.mark.slow
def test_quick_dry_run_reports_every_figure_and_reuses_its_stages(tmp_path, scorer):
    config = coco_dryrun.get_config("quick")
    with pytest.raises(runner.ConfigError, match="captioner.vocab 8 is smaller"):
        runner.run(override(config, captioner={"vocab": 8}), str(tmp_path / "bad"))
    assert not (tmp_path / "bad" / "dataset").exists()
    results = runner.run(config, str(tmp_path / "run"), scorer=scorer)
    data = results["dataset"]
    for split, n in (("train", config.dataset.train_size), ("test", config.dataset.test_size)):
        assert len(builders.data_source(data["dataset_dir"], split)) == n
    sizes = config.dataset
    assert data["rows"] == sizes.train_size + sizes.val_size + sizes.test_size
    figures = [data["rows_per_second"], data["write_mb_per_second"], data["bytes_on_disk"],
               results["captioning"]["seconds_per_step"],
               results["captioning"]["decode_seconds_per_image"],
               results["captioning"]["projected_train_hours"],
               results["t2i"]["seconds_per_step"], results["t2i"]["projected_train_hours"],
               results["peak_rss_gb"]]
    assert all(math.isfinite(f) and f > 0 for f in figures), figures
    assert results["captioning"]["paper_schedule"]["steps"] == 10 * (96 * 5 // 40)
    assert "| captioner step (batch 40) |" in (tmp_path / "run" / "RESULTS.md").read_text()
    again = runner.run(config, str(tmp_path / "run"))  # every stage reused, figures kept
    for key in ("dataset", "captioning", "t2i"):
        assert again[key] == json.loads(json.dumps(results[key]))

