"""Offline captioning metrics as the COCO caption evaluation (coco-caption / pycocoevalcap) computes them.

* **BLEU-n**: corpus BLEU (clipped n-gram counts and n-gram totals summed over the corpus, geometric mean of
  precisions 1..n with equal weights, brevity penalty ``exp(1 - r/c)`` when the total hypothesis length c is below r,
  the sum of each hypothesis' *closest* reference length, ties to the shorter). Equal to nltk's ``corpus_bleu``
  (default weights, no smoothing) for hypotheses of at least n tokens; a zero n-gram precision gives 0, where
  coco-caption's 1e-15 epsilon gives a value ~1e-4 instead.
* **CIDEr-D**: coco-caption's ``Cider`` scorer (which is CIDEr-D): 1- to 4-gram TF-IDF vectors, document frequency
  computed on the references of the evaluated corpus (one count per image whose references contain the n-gram),
  idf = log(num_images) - log(max(1, df)), hypothesis weights clipped by the reference's, Gaussian length penalty
  (sigma 6) on the difference of *bigram* counts (as the reference code does), mean over n and references, x10.
* **ROUGE-L**: LCS-based F-measure with beta 1.2, using the maximum precision and maximum recall over the
  references (coco-caption's ``Rouge``); corpus score = mean over hypotheses.

Tokenisation: strings are lower-cased and split into words, punctuation dropped, inner hyphens/apostrophes kept
(an offline approximation of coco-caption's Java PTB tokenizer, which also drops punctuation). Pass lists of
tokens to bypass it. :func:`caption_metrics` reports all scores x100, as papers do.

These three are checked equal to pycocoevalcap's scorers (tests/test_evaluation.py). **METEOR** needs Java: with
``pycocoevalcap`` installed and ``java`` on the PATH, :func:`meteor_score` runs the toolkit's own METEOR 1.5 jar on the same
tokens; otherwise it returns None (``caption_metrics(..., meteor=True)`` then leaves it out).
"""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Sequence
from typing import Union

Tokens = list[str]
Text = Union[str, Sequence[str]]

_WORD = re.compile(r"[a-z0-9]+(?:['\-/&][a-z0-9]+)*")


def tokenize(text: Text) -> Tokens:
    """Lower-case words without punctuation; a list of tokens is returned unchanged (as a list)."""
    if isinstance(text, str):
        return _WORD.findall(text.lower())
    return list(text)


def _prepare(hypotheses: Sequence[Text], references: Sequence[Sequence[Text] | str]):
    if isinstance(hypotheses, str):
        raise TypeError("hypotheses must be a list of captions (one per image), not a single string.")
    if len(hypotheses) != len(references):
        raise ValueError(f"{len(hypotheses)} hypotheses but {len(references)} reference lists; pass one per image.")
    if len(hypotheses) == 0:
        raise ValueError("no captions to evaluate.")
    hyps = [tokenize(h) for h in hypotheses]
    refs = []
    for i, r in enumerate(references):
        r = [r] if isinstance(r, str) else list(r)
        if not r:
            raise ValueError(f"image {i} has no reference caption; every image needs at least one.")
        refs.append([tokenize(x) for x in r])
    return hyps, refs


def _ngrams(tokens: Tokens, n: int) -> Counter:
    return Counter(tuple(tokens[i : i + n]) for i in range(len(tokens) - n + 1))


def corpus_bleu(hypotheses: Sequence[Text], references: Sequence[Sequence[Text]], max_n: int = 4) -> list[float]:
    """Cumulative corpus BLEU-1..BLEU-``max_n`` in [0, 1] (see the module docstring for the exact rule)."""
    hyps, refs = _prepare(hypotheses, references)
    correct = [0] * max_n
    total = [0] * max_n
    hyp_len = ref_len = 0
    for h, rs in zip(hyps, refs):
        hyp_len += len(h)
        ref_len += min((abs(len(r) - len(h)), len(r)) for r in rs)[1]
        for n in range(1, max_n + 1):
            counts = _ngrams(h, n)
            max_ref: Counter = Counter()
            for r in rs:
                max_ref |= _ngrams(r, n)
            correct[n - 1] += sum(min(c, max_ref[g]) for g, c in counts.items())
            total[n - 1] += max(0, len(h) - n + 1)
    if hyp_len == 0:
        return [0.0] * max_n
    bp = 1.0 if hyp_len > ref_len else math.exp(1 - ref_len / hyp_len)
    out, log_sum = [], 0.0
    for n in range(max_n):
        if correct[n] == 0 or total[n] == 0:
            out.extend([0.0] * (max_n - n))
            break
        log_sum += math.log(correct[n] / total[n])
        out.append(bp * math.exp(log_sum / (n + 1)))
    return out


def bleu4(hypotheses: Sequence[Text], references: Sequence[Sequence[Text]]) -> float:
    """Corpus BLEU-4 in [0, 1]."""
    return corpus_bleu(hypotheses, references, 4)[3]


def _lcs(a: Tokens, b: Tokens) -> int:
    prev = [0] * (len(b) + 1)
    for x in a:
        cur = [0]
        for j, y in enumerate(b):
            cur.append(prev[j] + 1 if x == y else max(prev[j + 1], cur[j]))
        prev = cur
    return prev[-1]


def rouge_l(hypotheses: Sequence[Text], references: Sequence[Sequence[Text]], beta: float = 1.2) -> float:
    """Corpus ROUGE-L (mean of per-image LCS F-measures, coco-caption's rule) in [0, 1]."""
    hyps, refs = _prepare(hypotheses, references)
    scores = []
    for h, rs in zip(hyps, refs):
        if not h:
            scores.append(0.0)
            continue
        lcs = [_lcs(r, h) for r in rs]
        p = max(c / len(h) for c in lcs)
        r = max(c / len(ref) if ref else 0.0 for c, ref in zip(lcs, rs))
        scores.append((1 + beta**2) * p * r / (r + beta**2 * p) if p > 0 and r > 0 else 0.0)
    return sum(scores) / len(scores)


def cider_d(
    hypotheses: Sequence[Text],
    references: Sequence[Sequence[Text]],
    n: int = 4,
    sigma: float = 6.0,
    return_per_image: bool = False,
) -> float | tuple[float, list[float]]:
    """Corpus CIDEr-D as coco-caption computes it (document frequency from these references); ~[0, 10]."""
    hyps, refs = _prepare(hypotheses, references)

    def counts(tokens):
        c: Counter = Counter()
        for k in range(1, n + 1):
            c.update(_ngrams(tokens, k))
        return c

    hyp_counts = [counts(h) for h in hyps]
    ref_counts = [[counts(r) for r in rs] for rs in refs]
    df: Counter = Counter()
    for rcs in ref_counts:
        df.update({g for rc in rcs for g in rc})
    log_n = math.log(float(len(refs)))

    def to_vec(cnts):
        vec = [dict() for _ in range(n)]
        norm = [0.0] * n
        length = 0
        for g, tf in cnts.items():
            k = len(g) - 1
            w = tf * (log_n - math.log(max(1.0, df[g])))
            vec[k][g] = w
            norm[k] += w * w
            if k == 1:
                length += tf
        return vec, [math.sqrt(x) for x in norm], length

    per_image = []
    for hc, rcs in zip(hyp_counts, ref_counts):
        vh, nh, lh = to_vec(hc)
        score = [0.0] * n
        for rc in rcs:
            vr, nr, lr = to_vec(rc)
            penalty = math.exp(-((lh - lr) ** 2) / (2 * sigma**2))
            for k in range(n):
                val = sum(min(w, vr[k].get(g, 0.0)) * vr[k].get(g, 0.0) for g, w in vh[k].items())
                if nh[k] != 0 and nr[k] != 0:
                    val /= nh[k] * nr[k]
                score[k] += val * penalty
        per_image.append(sum(score) / n / len(rcs) * 10.0)
    mean = sum(per_image) / len(per_image)
    return (mean, per_image) if return_per_image else mean


def meteor_available() -> bool:
    """pycocoevalcap's METEOR can run: the package is installed and ``java`` is on the PATH."""
    import importlib.util
    import shutil

    return importlib.util.find_spec("pycocoevalcap") is not None and shutil.which("java") is not None


def meteor_score(hypotheses: Sequence[Text], references: Sequence[Sequence[Text]]) -> float | None:
    """Corpus METEOR in [0, 1] by the COCO caption toolkit's METEOR 1.5 (a Java process, ~10 s to start), on the
    tokens of :func:`tokenize`; None when it cannot run (see :func:`meteor_available`)."""
    if not meteor_available():
        return None
    from pycocoevalcap.meteor.meteor import Meteor

    hyps, refs = _prepare(hypotheses, references)
    # METEOR reads "|||" as its field separator; a caption never needs it.
    clean = lambda tokens: " ".join(tokens).replace("|||", " ") or "."  # noqa: E731
    scorer = Meteor()
    try:
        score, _ = scorer.compute_score(
            {i: [clean(r) for r in rs] for i, rs in enumerate(refs)}, {i: [clean(h)] for i, h in enumerate(hyps)}
        )
    finally:
        scorer.meteor_p.kill()  # the toolkit leaves its Java process running until garbage collection
    return float(score)


def caption_metrics(
    hypotheses: Sequence[Text], references: Sequence[Sequence[Text]], meteor: bool = False
) -> dict[str, float]:
    """BLEU-1..4, CIDEr-D and ROUGE-L of generated captions against reference captions, all x100.

    Args:
        hypotheses: one generated caption per image (string or token list).
        references: per image, a list of reference captions (or a single string).
        meteor: also METEOR (x100) when the COCO toolkit's Java METEOR can run (:func:`meteor_available`).
    """
    bleu = corpus_bleu(hypotheses, references, 4)
    out = {f"BLEU-{i + 1}": 100 * b for i, b in enumerate(bleu)}
    out["CIDEr-D"] = 100 * cider_d(hypotheses, references)
    out["ROUGE-L"] = 100 * rouge_l(hypotheses, references)
    if meteor:
        score = meteor_score(hypotheses, references)
        if score is not None:
            out["METEOR"] = 100 * score
    out["num_images"] = len(hypotheses)
    return out
