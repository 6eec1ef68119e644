"""Evaluation for fashion vision-language models: retrieval, text-guided retrieval, classification, captioning.

* Cross-modal retrieval: :func:`retrieval_recall` (full gallery) and :func:`sample100_recall` (Kaleido/FashionBERT
  sample-100), I2T/T2I R@1/5/10 and SumR with several images per product; :func:`recall_at_k` on any score matrix;
  :class:`EmbeddingIndex` (FAISS) for large galleries; :class:`RetrievalEvaluator` embeds a held-out set with any
  model that has CLIP's ``get_image_features`` / ``get_text_features``.
* Text-guided image retrieval: :func:`tgir_recall` (FashionIQ R@10/R@50, reference image excluded).
* Classification: :func:`classification_accuracy`, :func:`linear_probe`.
* Captioning: :func:`caption_metrics` (BLEU-1..4, CIDEr-D, ROUGE-L as coco-caption computes them; METEOR by its
  Java jar when available).
* Reporting: :func:`format_results_markdown`, :func:`save_results`.
* ``RECALL_AT_K_PATH``: a local ``evaluate`` module, ``evaluate.load(RECALL_AT_K_PATH)``.

Never imported by modeling files (Hub copies of models stay self-contained).
"""

from pathlib import Path

from ..tgir import tgir_recall  # the metric lives with the rest of text-guided retrieval
from .caption_metrics import (
    bleu4,
    caption_metrics,
    cider_d,
    corpus_bleu,
    meteor_available,
    meteor_score,
    rouge_l,
    tokenize,
)
from .classification import classification_accuracy, linear_probe
from .evaluator import RetrievalEmbeddings, RetrievalEvaluator, embedding_spread, mean_pairwise_cosine
from .faiss_index import EmbeddingIndex
from .report import format_results_markdown, save_results
from .retrieval import deduplicate_texts, recall_at_k, retrieval_recall, sample100_recall

RECALL_AT_K_PATH = str(Path(__file__).resolve().parent / "recall_at_k")
"""Folder of the recall@K ``evaluate`` module: ``evaluate.load(RECALL_AT_K_PATH)`` works offline."""

__all__ = [
    "RECALL_AT_K_PATH",
    "EmbeddingIndex",
    "RetrievalEmbeddings",
    "RetrievalEvaluator",
    "bleu4",
    "caption_metrics",
    "meteor_available",
    "meteor_score",
    "cider_d",
    "classification_accuracy",
    "corpus_bleu",
    "deduplicate_texts",
    "embedding_spread",
    "format_results_markdown",
    "linear_probe",
    "mean_pairwise_cosine",
    "recall_at_k",
    "retrieval_recall",
    "rouge_l",
    "sample100_recall",
    "save_results",
    "tgir_recall",
    "tokenize",
]
