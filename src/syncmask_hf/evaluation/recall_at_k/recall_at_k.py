"""Recall@K for retrieval as an `evaluate` metric (load offline with `evaluate.load(path_to_this_folder)`).

Self-contained (numpy only) so `evaluate` can copy it into its module cache; `syncmask_hf.evaluation.recall_at_k`
(the function) computes the same numbers, and both follow the same rank rule.
"""

import datasets
import evaluate
import numpy as np

_DESCRIPTION = """\
Recall@K of a retrieval system, in percent: the share of queries with a relevant gallery item among the top K.
Several relevant items per query are allowed (e.g. all images of the queried product).

Two input forms (`predictions_are`):
* "scores" (default): each prediction is the query's similarity to every gallery item (higher = better) and each
  reference lists the gallery indices relevant to it. Rank = number of non-relevant items scoring strictly higher
  than the best relevant one (ties go to the query).
* "rankings": each prediction lists gallery ids best first (a full ranking or a top-N list) and each reference lists
  the relevant ids. Rank = position of the first relevant id; a query with none in its list is a miss.
"""

_KWARGS_DESCRIPTION = """
Args:
    predictions (list of list of float): per query, scores over the gallery, or ranked gallery ids.
    references (list of list of int): per query, the relevant gallery indices / ids (at least one).
    k (int or list of int): cut-offs, default [1, 5, 10].
    predictions_are (str): "scores" or "rankings".
Returns:
    dict: {"R@1": ..., "R@5": ..., "R@10": ...} in percent, plus "num_queries".
Examples:
    >>> metric = evaluate.load("path/to/recall_at_k")
    >>> metric.compute(predictions=[[0.9, 0.1, 0.3], [0.2, 0.8, 0.5]], references=[[0], [2]], k=[1, 2])
    {'R@1': 50.0, 'R@2': 100.0, 'num_queries': 2}
"""

_CITATION = """\
@inproceedings{gao2020fashionbert,
  title={FashionBERT: Text and Image Matching with Adaptive Loss for Cross-modal Retrieval},
  author={Gao, Dehong and Jin, Linbo and Chen, Ben and Qiu, Minghui and Li, Peng and Wei, Yi and Hu, Yi and Wang, Hao},
  booktitle={SIGIR},
  year={2020}
}
"""


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class RecallAtK(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features(
                {
                    "predictions": datasets.Sequence(datasets.Value("float64")),
                    "references": datasets.Sequence(datasets.Value("int64")),
                }
            ),
        )

    def _compute(self, predictions, references, k=(1, 5, 10), predictions_are="scores"):
        ks = sorted({int(x) for x in ([k] if isinstance(k, int) else k)})
        if not ks or ks[0] < 1:
            raise ValueError(f"k must be positive integers, got {k}.")
        if predictions_are not in ("scores", "rankings"):
            raise ValueError(f"predictions_are must be 'scores' or 'rankings', got {predictions_are!r}.")
        if len(predictions) == 0:
            raise ValueError("no queries to evaluate.")
        ranks = np.empty(len(predictions), dtype=np.int64)
        for i, (pred, ref) in enumerate(zip(predictions, references)):
            pred = np.asarray(pred, dtype=np.float64)
            rel_ids = np.asarray(ref, dtype=np.int64)
            if rel_ids.size == 0:
                raise ValueError(f"query {i} has no relevant item in its reference; list at least one.")
            if predictions_are == "scores":
                if ks[-1] > len(pred):
                    raise ValueError(f"k={ks[-1]} is larger than the gallery ({len(pred)} scores) of query {i}.")
                if rel_ids.min() < 0 or rel_ids.max() >= len(pred):
                    raise ValueError(f"query {i}: relevant indices must lie in [0, {len(pred)}).")
                relevant = np.zeros(len(pred), dtype=bool)
                relevant[rel_ids] = True
                best = pred[relevant].max()
                ranks[i] = int(((~relevant) & (pred > best)).sum())
            else:
                hits = np.flatnonzero(np.isin(pred.astype(np.int64), rel_ids))
                ranks[i] = hits[0] if len(hits) else np.iinfo(np.int64).max
        out = {f"R@{kk}": float((ranks < kk).mean() * 100.0) for kk in ks}
        out["num_queries"] = len(predictions)
        return out
