"""Classification accuracy (top-k, macro) and linear probing on frozen features (E2's protocol).

The linear probe is a multinomial logistic regression trained in torch with full-batch L-BFGS (strong-Wolfe line
search) on standardised features, so it is deterministic on CPU and needs no sklearn. The L2 penalty (weight decay
on the weights, not the bias) is a float, or a list of candidates chosen on a seeded 20% hold-out of the training
set (CLIP's linear-probe recipe sweeps the same knob); the final probe is refit on the whole training set.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from ._utils import as_float_tensor, as_id_array


def classification_accuracy(
    predictions: Any,
    labels: Any,
    ks: Sequence[int] = (1,),
    ignore_index: Any = -100,
) -> dict[str, float]:
    """Top-k accuracy and macro accuracy (mean over classes of per-class recall) in percent.

    Args:
        predictions: (N,) predicted labels, or (N, C) class scores/logits (then labels are class indices 0..C-1).
        labels: (N,) true labels; rows equal to ``ignore_index`` (e.g. -100 = unknown) are left out and counted.
        ks: top-k cut-offs (k > 1 needs scores).

    Returns:
        ``top1`` (``topk`` for every k), ``macro_acc`` (from top-1), ``num_samples``, ``num_ignored``.
    """
    lab = as_id_array(labels, "labels")
    if (
        isinstance(predictions, torch.Tensor)
        and predictions.dim() == 2
        or (isinstance(predictions, np.ndarray) and predictions.ndim == 2)
    ):
        scores = as_float_tensor(predictions, "predictions")
        if len(scores) != len(lab):
            raise ValueError(f"{len(scores)} predictions for {len(lab)} labels; pass one row per label.")
        keep = lab != ignore_index
        scores, lab = scores[torch.from_numpy(np.asarray(keep))], lab[keep]
        if len(lab) == 0:
            raise ValueError("no labelled rows: every label equals ignore_index.")
        lab_t = torch.as_tensor(np.asarray(lab, dtype=np.int64))
        if (lab_t < 0).any() or (lab_t >= scores.shape[1]).any():
            raise ValueError(f"labels must be class indices in [0, {scores.shape[1]}) when predictions are scores.")
        if max(ks) > scores.shape[1]:
            raise ValueError(f"top-{max(ks)} accuracy needs at least {max(ks)} classes, got {scores.shape[1]}.")
        top = torch.topk(scores, max(ks), dim=1).indices
        hit_at = {k: (top[:, :k] == lab_t[:, None]).any(dim=1).numpy() for k in ks}
        pred1 = top[:, 0].numpy()
        lab = lab_t.numpy()
    else:
        pred1 = as_id_array(predictions, "predictions", len(lab))
        if max(ks) > 1:
            raise ValueError("top-k accuracy with k > 1 needs (N, C) scores, not predicted labels.")
        keep = lab != ignore_index
        pred1, lab = pred1[keep], lab[keep]
        if len(lab) == 0:
            raise ValueError("no labelled rows: every label equals ignore_index.")
        hit_at = {1: pred1 == lab}
    out = {f"top{k}": float(np.mean(h) * 100) for k, h in hit_at.items()}
    correct = np.asarray(pred1 == lab)
    classes = list(dict.fromkeys(lab.tolist()))
    out["macro_acc"] = float(np.mean([correct[lab == c].mean() for c in classes]) * 100)
    out["num_samples"] = len(lab)
    out["num_ignored"] = int((~np.asarray(keep)).sum())
    return out


def _fit_logreg(x: torch.Tensor, y: torch.Tensor, num_classes: int, weight_decay: float, max_iter: int):
    w = torch.zeros(x.shape[1], num_classes, dtype=torch.float64, requires_grad=True)
    b = torch.zeros(num_classes, dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS([w, b], lr=1.0, max_iter=max_iter, history_size=20, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(x @ w + b, y) + 0.5 * weight_decay * (w * w).sum()
        loss.backward()
        return loss

    opt.step(closure)
    return w.detach(), b.detach()


def linear_probe(
    train_feats: Any,
    train_labels: Any,
    test_feats: Any,
    test_labels: Any,
    *,
    weight_decay: float | Sequence[float] = (1e-4, 1e-3, 1e-2, 1e-1),
    max_iter: int = 500,
    standardize: bool = True,
    ignore_index: Any = -100,
    seed: int = 0,
) -> dict[str, Any]:
    """Train a logistic-regression probe on frozen training features and report test accuracy.

    Args:
        train_feats, test_feats: (N, dim) frozen features (tensors or arrays).
        train_labels, test_labels: (N,) labels of any hashable type (strings fine); ``ignore_index`` rows are
            dropped. Test labels never seen in training can't be predicted: they count as errors and are reported
            as ``num_test_unseen_labels``.
        weight_decay: L2 penalty, or candidates chosen on a seeded 20% hold-out of the training rows.
        max_iter: L-BFGS iterations.
        standardize: z-score features with the training mean/std (makes one penalty scale fit all encoders).
        seed: seed of the hold-out split.

    Returns:
        ``top1``, ``macro_acc`` (percent), ``weight_decay`` (chosen), ``num_classes``, ``num_train``, ``num_test``,
        ``num_test_unseen_labels``.
    """
    xtr = as_float_tensor(train_feats, "train_feats").double()
    xte = as_float_tensor(test_feats, "test_feats").double()
    if xtr.shape[1] != xte.shape[1]:
        raise ValueError(f"train features have dim {xtr.shape[1]}, test features {xte.shape[1]}.")
    ytr = as_id_array(train_labels, "train_labels", len(xtr))
    yte = as_id_array(test_labels, "test_labels", len(xte))
    ktr, kte = ytr != ignore_index, yte != ignore_index
    xtr, ytr = xtr[torch.from_numpy(np.asarray(ktr))], ytr[ktr]
    xte, yte = xte[torch.from_numpy(np.asarray(kte))], yte[kte]
    classes = list(dict.fromkeys(ytr.tolist()))
    if len(classes) < 2:
        raise ValueError(f"linear probing needs at least 2 classes in the training labels, got {len(classes)}.")
    if len(yte) == 0:
        raise ValueError("no labelled test rows.")
    index = {c: i for i, c in enumerate(classes)}
    ytr_i = torch.tensor([index[c] for c in ytr.tolist()], dtype=torch.long)
    unseen: dict[Any, int] = {}  # each unseen class its own negative code, so macro accuracy keeps it separate
    yte_i = torch.tensor(
        [index[c] if c in index else -1 - unseen.setdefault(c, len(unseen)) for c in yte.tolist()], dtype=torch.long
    )
    if standardize:
        mean, std = xtr.mean(0), xtr.std(0, unbiased=False).clamp_min(1e-6)
        xtr, xte = (xtr - mean) / std, (xte - mean) / std

    candidates = [float(weight_decay)] if isinstance(weight_decay, (int, float)) else [float(w) for w in weight_decay]
    if not candidates:
        raise ValueError("weight_decay is an empty list.")
    chosen = candidates[0]
    if len(candidates) > 1:
        perm = np.random.default_rng(seed).permutation(len(xtr))
        n_val = max(1, len(xtr) // 5)
        val, fit = torch.from_numpy(perm[:n_val]), torch.from_numpy(perm[n_val:])
        best = -1.0
        for wd in candidates:
            w, b = _fit_logreg(xtr[fit], ytr_i[fit], len(classes), wd, max_iter)
            acc = ((xtr[val] @ w + b).argmax(1) == ytr_i[val]).double().mean().item()
            if acc > best:
                best, chosen = acc, wd
    w, b = _fit_logreg(xtr, ytr_i, len(classes), chosen, max_iter)
    pred = (xte @ w + b).argmax(1)
    acc = classification_accuracy(pred.numpy(), yte_i.numpy(), ignore_index=None)
    return {
        "top1": acc["top1"],
        "macro_acc": acc["macro_acc"],
        "weight_decay": chosen,
        "num_classes": len(classes),
        "num_train": len(xtr),
        "num_test": len(xte),
        "num_test_unseen_labels": int((yte_i < 0).sum()),
    }
