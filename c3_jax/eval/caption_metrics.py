"""COCO caption metrics (BLEU-1..4, METEOR, ROUGE-L, CIDEr, SPICE) via pycocoevalcap.

Both sides are tokenized with pycocoevalcap's PTBTokenizer (lower-cased, punctuation
dropped), as the COCO caption evaluation server does. METEOR, the tokenizer and SPICE
are Java programs: a JRE on PATH is required. The METEOR JVM takes ~5 s to load its
paraphrase table: a ``Scorer`` starts one when first needed and keeps it until it is closed
(``with Scorer() as scorer:`` around several calls), and a call given no scorer uses one of
its own for all of its prediction sets. SPICE needs
the Stanford CoreNLP 3.6.0 jars, which pycocoevalcap would download on first use; this
module never downloads anything and reports SPICE as skipped when they are absent.
"""
from __future__ import annotations

import collections
import contextlib
import io
import os
import re
import shutil
import subprocess
import sys
import threading
from typing import Hashable, Mapping, Sequence

from pycocoevalcap.bleu.bleu import Bleu
from pycocoevalcap.cider.cider import Cider
from pycocoevalcap.meteor.meteor import Meteor
from pycocoevalcap.rouge.rouge import Rouge
from pycocoevalcap.spice import get_stanford_models as _spice_models
from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer

_CORENLP_URL = f"http://nlp.stanford.edu/software/{_spice_models.CORENLP}.zip"

class Scorer:
    """Holds one METEOR JVM, started when first needed, for every call it is given to;
    ``close`` (or leaving its ``with`` block) stops it."""

    def __init__(self):
        self.meteor: Meteor | None = None
        self.lock = threading.Lock()

    def __enter__(self) -> "Scorer":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        with self.lock:
            _close_meteor(self.meteor)
            self.meteor = None

    def meteor_score(self, gts: dict, res: dict) -> float:
        """Corpus METEOR with this scorer's JVM (started again if it died)."""
        with self.lock:
            if self.meteor is None or self.meteor.meteor_p.poll() is not None:
                self.meteor = Meteor()
            try:
                return float(self.meteor.compute_score(gts, res)[0])
            except Exception as e:
                broken, self.meteor = self.meteor, None
                _close_meteor(broken)
                raise RuntimeError("METEOR (java -jar meteor-1.5.jar) failed; is Java >= 8 "
                                   "installed and is 2 GB of memory free for its JVM?") from e


def score_captions(predictions: Mapping[Hashable, str],
                   references: Mapping[Hashable, Sequence[str]],
                   spice: bool = True, meteor: bool = True,
                   scorer: Scorer | None = None) -> dict:
    """Corpus-level COCO caption scores of one predicted caption per id against its references
    (without METEOR when ``meteor`` is False: its JVM needs 2 GB and ~5 s to start; with
    ``scorer``, its JVM)."""
    return score_caption_sets({0: predictions}, references, spice, meteor, scorer)[0]


def score_caption_sets(prediction_sets: Mapping[Hashable, Mapping[Hashable, str]],
                       references: Mapping[Hashable, Sequence[str]],
                       spice: bool = True, meteor: bool = True,
                       scorer: Scorer | None = None) -> dict:
    """``score_captions`` of several prediction sets (e.g. a sweep's members) against the same
    references: {set: scores}, with one tokenizer JVM and one METEOR JVM (``scorer``'s, or
    one for this call) for all of them (the tokenizer sees each line alone, so a set's
    scores equal its ``score_captions``)."""
    if scorer is None:
        with Scorer() as own:
            return score_caption_sets(prediction_sets, references, spice, meteor, own)
    if not prediction_sets:
        raise ValueError("No prediction sets to score")
    for predictions in prediction_sets.values():
        ids = _check_inputs(predictions, references)  # the same ids for every set
    if shutil.which("java") is None:
        raise RuntimeError("Caption metrics need Java (PTBTokenizer, METEOR and SPICE are Java "
                           "programs): install a JRE, e.g. `apt-get install default-jre-headless`.")
    # Integer keys: SPICE round-trips ids through JSON and sorts them; scores don't depend on keys.
    # One tokenizer JVM for references and predictions (each line is tokenized alone).
    names = list(prediction_sets)
    both = _tokenize({**{("ref", i): list(references[k]) for i, k in enumerate(ids)},
                      **{(n, i): [prediction_sets[name][k]] for n, name in enumerate(names)
                         for i, k in enumerate(ids)}})
    gts = {i: both[("ref", i)] for i in range(len(ids))}
    empty_refs = [ids[i] for i, refs in gts.items() if any(not r for r in refs)]
    if empty_refs:
        raise ValueError(f"References empty after PTB tokenization (blank or punctuation only) "
                         f"for ids {_preview(empty_refs)}")
    return {name: _scores(gts, {i: both[(n, i)] for i in range(len(ids))}, spice,
                          scorer if meteor else None)
            for n, name in enumerate(names)}


def _scores(gts: dict, res: dict, spice: bool, meteor: Scorer | None) -> dict:
    """The metrics of tokenized predictions ``res`` against tokenized references ``gts``
    (METEOR with ``meteor``'s JVM, none without)."""
    out: dict = {}
    with contextlib.redirect_stdout(io.StringIO()):
        bleu, _ = Bleu(4).compute_score(gts, res, verbose=0)
        out.update({f"BLEU-{n + 1}": float(b) for n, b in enumerate(bleu)})
        if meteor is not None:
            out["METEOR"] = meteor.meteor_score(gts, res)
        else:
            out["METEOR_skipped"] = "disabled (meteor=False)"
        out["ROUGE-L"] = float(Rouge().compute_score(gts, res)[0])
        out["CIDEr"] = float(Cider().compute_score(gts, res)[0])
        skip = _spice_skip_reason(spice)
        if skip is None:
            score, skip = _spice_score(gts, res)
            if score is not None:
                out["SPICE"] = score
        if skip is not None:
            out["SPICE_skipped"] = skip
    return out


def _check_inputs(predictions: Mapping[Hashable, str],
                  references: Mapping[Hashable, Sequence[str]]) -> list:
    """Validate ids and types; return the ids in prediction order."""
    if not predictions:
        raise ValueError("No predictions to score")
    missing = [k for k in references if k not in predictions]
    extra = [k for k in predictions if k not in references]
    if missing or extra:
        raise ValueError(f"Prediction and reference ids differ: {len(missing)} id(s) without a "
                         f"prediction {_preview(missing)}, {len(extra)} prediction id(s) without "
                         f"references {_preview(extra)}")
    for k, caption in predictions.items():
        if not isinstance(caption, str):
            raise TypeError(f"Prediction for id {k!r} must be a str, got {type(caption).__name__}")
    for k, refs in references.items():
        if isinstance(refs, str) or not all(isinstance(r, str) for r in refs):
            raise TypeError(f"References for id {k!r} must be a sequence of str, got {refs!r:.80}")
        if len(refs) == 0:
            raise ValueError(f"No references for id {k!r}")
    return list(predictions)


def _preview(ids: list, n: int = 10) -> str:
    """At most n ids, for error messages."""
    return repr(ids[:n])[:-1] + (", ...]" if len(ids) > n else "]")


@contextlib.contextmanager
def _quiet_stderr():
    """Sends this process's stderr (file descriptor 2, which child processes inherit) to
    /dev/null for the block; a failure still raises from the Python side."""
    sys.stderr.flush()
    saved = os.dup(2)
    with open(os.devnull, "w") as null:
        os.dup2(null.fileno(), 2)
    try:
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def _tokenize(captions: dict[Hashable, list[str]]) -> dict[Hashable, list[str]]:
    """PTB-tokenize captions; blank ones stay '' without going through the tokenizer."""
    # Any line break (\r, \u2028, ...) would split a caption into two tokenizer lines and
    # shift every later caption onto the wrong id: fold all whitespace to single spaces.
    flat = {k: [" ".join(c.split()) for c in caps] for k, caps in captions.items()}
    to_tokenize = {(k, j): [{"caption": c}] for k, caps in flat.items()
                   for j, c in enumerate(caps) if c}
    with _quiet_stderr():  # the Java tokenizer prints a speed line per call
        tokenized = PTBTokenizer().tokenize(to_tokenize) if to_tokenize else {}
    if tokenized.keys() != to_tokenize.keys() or any(len(v) != 1 for v in tokenized.values()):
        raise RuntimeError("PTBTokenizer output does not line up with its input captions")
    return {k: [tokenized[(k, j)][0] if c else "" for j, c in enumerate(caps)]
            for k, caps in flat.items()}


def _close_meteor(meteor: Meteor | None) -> None:
    """Kill a METEOR JVM, leaving its lock free for Meteor.__del__."""
    if meteor is None:
        return
    if meteor.lock.locked():  # compute_score raised while holding it; __del__ would deadlock
        meteor.lock.release()
    meteor.meteor_p.kill()
    meteor.meteor_p.wait()



def _spice_jars() -> list[str]:
    """Paths of the CoreNLP jars that SPICE needs and pycocoevalcap would otherwise download."""
    lib = os.path.join(os.path.abspath(_spice_models.SPICEDIR), _spice_models.SPICELIB)
    return [os.path.join(lib, f"{_spice_models.JAR}{suffix}.jar") for suffix in ("", "-models")]


def _spice_skip_reason(spice: bool) -> str | None:
    """Why SPICE cannot run without touching the network, or None if it can."""
    if not spice:
        return "disabled (spice=False)"
    missing = [p for p in _spice_jars() if not os.path.exists(p)]
    if missing:
        return (f"Stanford CoreNLP models missing: {', '.join(missing)}. Get them from "
                f"{_CORENLP_URL} (copy {_spice_models.JAR}.jar and {_spice_models.JAR}-models.jar "
                f"into {os.path.dirname(missing[0])}), or run `python -m "
                f"pycocoevalcap.spice.get_stanford_models` once (downloads ~400 MB).")
    return None


def _spice_score(gts: dict, res: dict) -> tuple[float | None, str | None]:
    """Corpus SPICE, or (None, reason) if the SPICE jar fails."""
    from pycocoevalcap.spice.spice import Spice  # Spice() only downloads when the jars are absent
    try:
        return float(Spice().compute_score(gts, res)[0]), None
    except subprocess.CalledProcessError as e:
        return None, (f"SPICE jar failed ({e}); spice-1.0.jar is known to fail on Java >= 16 "
                      f"(its fst cache needs --add-opens); Java 8 or 11 works.")


def _words(text: str) -> list[str]:
    return re.findall(r"[a-z0-9]+", text.lower())


def rouge_n(predictions: Sequence[str], references: Sequence[Sequence[str]], n: int = 1) -> float:
    """Mean ROUGE-N F1 (n-gram overlap, best reference per caption; lower-cased words)."""
    if len(predictions) != len(references) or not predictions:
        raise ValueError(f"{len(predictions)} predictions for {len(references)} reference lists")
    grams = lambda words: collections.Counter(zip(*(words[i:] for i in range(n))))
    total = 0.0
    for pred, refs in zip(predictions, references):
        p, best = grams(_words(pred)), 0.0
        for ref in refs:
            r = grams(_words(ref))
            overlap = sum((p & r).values())
            if overlap:
                prec, rec = overlap / sum(p.values()), overlap / sum(r.values())
                best = max(best, 2 * prec * rec / (prec + rec))
        total += best
    return total / len(predictions)
