"""c3_jax.world.over_worlds: world figures and their paired intervals, against numpy and
scipy on hand-made results.json files."""
import json

import numpy as np
import pytest
from scipy import stats as sps

from c3_jax.world import over_worlds


def _result(c1, c3):
    per = lambda xs: {"per_seed": list(xs)}
    return {"variants": {"c1": {"CIDEr": per(c1), "attribute_accuracy": per(c1)},
                         "c3": {"CIDEr": per(c3), "attribute_accuracy": per(c3)}}}


def test_world_figures_average_the_first_seeds_and_pair_across_worlds(tmp_path, capsys):
    worlds = [([0.1, 0.2, 0.3, 9.0], [0.5, 0.6, 0.7, 9.0]), ([0.2, 0.2, 0.2], [0.9, 0.8, 0.7]),
              ([0.0, 0.3, 0.3], [0.6, 0.6, 0.9])]
    dirs = []
    for i, (c1, c3) in enumerate(worlds):
        (tmp_path / f"w{i}").mkdir()
        (tmp_path / f"w{i}" / "results.json").write_text(json.dumps(_result(c1, c3)))
        dirs.append(str(tmp_path / f"w{i}"))
    figures = over_worlds.world_figures([over_worlds.load(d) for d in dirs], seeds=3)
    want_c1 = [np.mean(c1[:3]) for c1, _ in worlds]
    np.testing.assert_allclose(figures["c1"]["CIDEr"]["per_seed"], want_c1)
    assert figures["c1"]["CIDEr"]["std"] == pytest.approx(np.std(want_c1, ddof=1))
    assert over_worlds.main(dirs) == 0
    out = capsys.readouterr().out
    d = np.array([np.mean(c3[:3]) - np.mean(c1[:3]) for c1, c3 in worlds])
    low, high = sps.t.interval(0.95, 2, loc=d.mean(), scale=sps.sem(d))
    assert f"| c3 − c1 | {100 * d.mean():+.1f} [{100 * low:+.1f}, {100 * high:+.1f}]" in out


def test_a_workdir_without_results_is_one_line(tmp_path, capsys):
    assert over_worlds.main([str(tmp_path), str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1
