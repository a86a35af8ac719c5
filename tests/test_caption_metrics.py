"""Caption metrics: equal to pycocoevalcap run by hand, plus closed-form checks."""
import math
import os

import pytest

pytest.importorskip("pycocoevalcap")

from pycocoevalcap.bleu.bleu import Bleu  # noqa: E402
from pycocoevalcap.cider.cider import Cider  # noqa: E402
from pycocoevalcap.meteor.meteor import Meteor  # noqa: E402
from pycocoevalcap.rouge.rouge import Rouge  # noqa: E402
from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer  # noqa: E402

from c3_jax.eval import caption_metrics  # noqa: E402
from c3_jax.eval.caption_metrics import score_caption_sets, score_captions  # noqa: E402

REFERENCES = {
    101: ["A man riding a wave on top of a surfboard.",
          "A surfer rides a large wave in the ocean",
          "A person on a surfboard riding a big wave!",
          "Surfer in a wetsuit catching a wave.",
          "a man surfing on a blue ocean wave"],
    102: ["Two dogs playing with a frisbee in the park.",
          "A pair of dogs run across the grass, chasing a frisbee",
          "Dogs play fetch on a green lawn.",
          "two brown dogs are running on grass",
          "Two dogs jump for a flying disc."],
    103: ["A plate of food with broccoli and rice.",
          "A white plate topped with rice, meat and broccoli",
          "Dinner plate with vegetables and a pile of rice.",
          "A meal of chicken, broccoli, and rice on a plate",
          "Food on a plate: broccoli and white rice."],
    104: ["A red double-decker bus driving down a city street.",
          "A large red bus on a street next to buildings",
          "The double decker bus is driving on the road.",
          "A red bus drives past tall buildings.",
          "Red tour bus travelling down a busy street"],
    105: ["A cat sleeping on top of a laptop keyboard.",
          "A gray cat lying on an open laptop",
          "The kitten is asleep on the computer's keys.",
          "A cat naps on a laptop on a desk",
          "Cat curled up on a black laptop computer."],
    106: ["Two people flying kites on a sandy beach.",
          "Kites in the sky above a beach with people",
          "A couple of people fly a kite by the ocean",
          "People on the beach with colorful kites.",
          "Two kids flying a kite at the beach!"],
}
PREDICTIONS = {
    101: "A man riding a wave on a surfboard.",
    102: "two DOGS playing in the grass with a Frisbee",
    103: "a plate of rice and broccoli , with meat",
    104: "A red bus driving down the street!!",
    105: "A cat laying on a laptop computer.",
    106: "people flying a kite on the beach; sunny day",
}
KEYS = ["BLEU-1", "BLEU-2", "BLEU-3", "BLEU-4", "METEOR", "ROUGE-L", "CIDEr"]


@pytest.fixture(scope="module")
def direct_meteor():
    meteor = Meteor()  # its JVM loads the paraphrase table (~5 s) while `ours` runs
    yield meteor
    del meteor


@pytest.fixture(scope="module")
def ours(direct_meteor, scorer):
    return score_captions(PREDICTIONS, REFERENCES, scorer=scorer)


@pytest.mark.slow
def test_equals_pycocoevalcap_by_hand(ours, direct_meteor):
    tokenizer = PTBTokenizer()
    gts = tokenizer.tokenize({k: [{"caption": c} for c in v] for k, v in REFERENCES.items()})
    res = tokenizer.tokenize({k: [{"caption": c}] for k, c in PREDICTIONS.items()})
    bleu, _ = Bleu(4).compute_score(gts, res)
    expected = {f"BLEU-{n + 1}": b for n, b in enumerate(bleu)}
    expected["METEOR"] = direct_meteor.compute_score(gts, res)[0]
    expected["ROUGE-L"] = Rouge().compute_score(gts, res)[0]
    expected["CIDEr"] = Cider().compute_score(gts, res)[0]
    for key in KEYS:
        assert isinstance(ours[key], float), key
        assert ours[key] == pytest.approx(expected[key], rel=1e-12, abs=1e-15), key
    # Imperfect but related predictions: scores strictly inside (0, 1), CIDEr well above 0.
    assert 0 < ours["BLEU-4"] < ours["BLEU-1"] < 1
    assert 0 < ours["METEOR"] < 1 and 0 < ours["ROUGE-L"] < 1 and ours["CIDEr"] > 0.3


@pytest.mark.slow
def test_spice_present_or_skipped_with_reason(ours):
    if all(os.path.exists(p) for p in caption_metrics._spice_jars()):
        assert isinstance(ours.get("SPICE"), float), ours.get("SPICE_skipped")
    else:
        assert "SPICE" not in ours
        assert "stanford-corenlp-3.6.0" in ours["SPICE_skipped"]


@pytest.mark.slow
def test_spice_skipped_when_models_absent(tmp_path, monkeypatch, scorer):
    jars = [str(tmp_path / "lib" / f"stanford-corenlp-3.6.0{s}.jar") for s in ("", "-models")]
    monkeypatch.setattr(caption_metrics, "_spice_jars", lambda: jars)
    monkeypatch.setattr(caption_metrics, "_spice_score", lambda *a: pytest.fail("SPICE ran"))
    out = score_captions({1: "a cat"}, {1: ["a cat on a mat"]}, scorer=scorer)
    assert "SPICE" not in out and jars[1] in out["SPICE_skipped"]
    out = score_captions({1: "a cat"}, {1: ["a cat on a mat"]}, spice=False, scorer=scorer)
    assert "SPICE" not in out and "spice=False" in out["SPICE_skipped"]


@pytest.mark.slow
def test_identical_caption_scores_one(scorer):
    caption = "A man riding a wave on top of a surfboard."
    out = score_captions({"x": caption}, {"x": [caption]}, spice=False, scorer=scorer)
    for n in range(1, 5):
        assert out[f"BLEU-{n}"] == pytest.approx(1.0, abs=1e-6)
    assert out["ROUGE-L"] == pytest.approx(1.0, abs=1e-12)
    assert out["METEOR"] > 0.9


def test_disjoint_prediction_scores_zero(scorer):
    refs = {1: ["a cat sleeps on the sofa", "the kitten is asleep"],
            2: ["two dogs run in a park", "dogs playing outside"]}
    preds = {1: "blue sky over mountains", 2: "green vegetables for dinner"}
    out = score_captions(preds, refs, spice=False, scorer=scorer)
    assert out["BLEU-1"] == pytest.approx(0.0, abs=1e-9)
    assert out["CIDEr"] == 0.0 and out["ROUGE-L"] == 0.0
    assert out["METEOR"] < 0.1  # not 0: METEOR's paraphrase table matches some unrelated words


def test_bleu1_by_hand(scorer):
    refs = {1: ["The cat sat on the mat.", "A cat sat!"],
            2: ["a big dog barks", "Dogs bark loudly at night"]}
    preds = {1: "the THE the cat, sat", 2: "A dog."}
    # Image 1: 5 words; "the" clipped to 2 (its most in one reference), so 4 correct;
    # closest reference length 6. Image 2: 2 words, both correct; closest reference length 4.
    correct, guessed, ref_len = 4 + 2, 5 + 2, 6 + 4
    expected = correct / guessed * math.exp(1 - ref_len / guessed)
    out = score_captions(preds, refs, spice=False, scorer=scorer)
    assert out["BLEU-1"] == pytest.approx(expected, abs=1e-6)


def test_empty_and_multiline_predictions(scorer):
    refs = {1: ["a dog runs on the grass"], 2: ["a cat on a mat"], 3: ["a red car"]}
    out = score_captions({1: "", 2: "...", 3: "  "}, refs, spice=False, scorer=scorer)
    assert all(out[k] == 0.0 for k in KEYS)
    # A line break inside a caption must not shift later captions onto other ids.
    split = score_captions({1: "a dog\r\nruns", 2: "", 3: "a red\u2028car"}, refs,
                           spice=False, scorer=scorer)
    joined = score_captions({1: "a dog runs", 2: "", 3: "a red car"}, refs, spice=False,
                            scorer=scorer)
    assert {k: split[k] for k in KEYS} == {k: joined[k] for k in KEYS}
    assert joined["BLEU-1"] > 0.2  # all 6 words match; brevity penalty exp(1 - 14/6)


def test_prediction_sets_score_as_each_alone(scorer):
    """A sweep's members scored with one tokenizer JVM: each set's scores are its own call's."""
    sets = {"a": {1: "A cat, on the mat.", 2: "dogs bark"},
            "b": {1: "a dog runs", 2: ""},
            "c": dict(PREDICTIONS)}
    refs = {1: ["The cat sat on the mat.", "A cat sat!"], 2: ["a big dog barks"]}
    together = score_caption_sets({k: sets[k] for k in ("a", "b")}, refs, spice=False,
                                  scorer=scorer)
    for name in ("a", "b"):
        assert together[name] == score_captions(sets[name], refs, spice=False, scorer=scorer), name
    assert list(score_caption_sets({"c": sets["c"]}, REFERENCES, spice=False,
                                   scorer=scorer)) == ["c"]
    with pytest.raises(ValueError, match="without references"):
        score_caption_sets({"a": sets["a"], "c": sets["c"]}, refs, scorer=scorer)


def test_input_errors(monkeypatch):
    with pytest.raises(ValueError, match=r"without a prediction \[2\].*without references \['z'\]"):
        score_captions({1: "a", "z": "b"}, {1: ["a"], 2: ["c"]})
    with pytest.raises(ValueError, match="No predictions"):
        score_captions({}, {})
    with pytest.raises(ValueError, match="No references for id 1"):
        score_captions({1: "a"}, {1: []})
    with pytest.raises(TypeError, match="sequence of str"):
        score_captions({1: "a"}, {1: "a cat"})
    with pytest.raises(ValueError, match="empty after PTB tokenization"):
        score_captions({1: "a"}, {1: ["a cat", "..."]}, spice=False)
    monkeypatch.setattr(caption_metrics.shutil, "which", lambda name: None)
    with pytest.raises(RuntimeError, match="install a JRE"):
        score_captions({1: "a"}, {1: ["a cat"]})


def test_rouge_1_is_unigram_f1_against_the_best_reference():
    from c3_jax.eval.caption_metrics import rouge_n
    # "a red square" vs "a red circle": overlap 2, P = R = 2/3 -> F = 2/3; the other
    # reference shares nothing; the second caption matches exactly.
    got = rouge_n(["A red square.", "the dog"], [["a red circle", "blue"], ["The dog"]], 1)
    assert abs(got - (2 / 3 + 1.0) / 2) < 1e-12
    assert rouge_n(["x y"], [["z"]], 1) == 0.0
    # Bigrams: "a red square" vs "a red circle" share "a red": P = R = 1/2.
    assert abs(rouge_n(["a red square"], [["a red circle"]], 2) - 0.5) < 1e-12
