"""Evaluation metrics on worked examples whose answers are known by hand."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn
from transformers.modeling_outputs import BaseModelOutputWithPooling

from syncmask_hf.evaluation import (
    RECALL_AT_K_PATH,
    EmbeddingIndex,
    RetrievalEvaluator,
    bleu4,
    caption_metrics,
    cider_d,
    classification_accuracy,
    corpus_bleu,
    deduplicate_texts,
    format_results_markdown,
    linear_probe,
    recall_at_k,
    retrieval_recall,
    rouge_l,
    sample100_recall,
    save_results,
    tgir_recall,
    tokenize,
)

# ---------------------------------------------------------------------------------------------------------------
# Full-gallery protocol
# ---------------------------------------------------------------------------------------------------------------
# Products A (2 images), B, C. The text of A is repeated for both of its images (as pair datasets do).
TEXTS = torch.tensor([[1.0, 0, 0], [1.0, 0, 0], [0, 1.0, 0], [0, 0, 1.0]])  # tA, tA, tB, tC
TEXT_PIDS = ["A", "A", "B", "C"]
IMAGES = torch.tensor(
    [
        [1.0, 0.5, 0.0],  # A: scores A 1,   B .5, C 0   -> rank 0
        [0.2, 0.9, 0.1],  # A: scores A .2,  B .9, C .1  -> rank 1
        [0.5, 0.3, 0.0],  # B: scores A .5,  B .3, C 0   -> rank 1 (rank 2 if A's two copies both counted)
        [0.1, 0.2, 0.7],  # C: scores A .1,  B .2, C .7  -> rank 0
    ]
)
IMAGE_PIDS = ["A", "A", "B", "C"]
# T2I (distinct texts tA, tB, tC over the 4 images):
#   tA: img0 1 (pos) best -> rank 0;  tB: pos img2 .3 < img0 .5, img1 .9 -> rank 2;  tC: img3 .7 best -> rank 0


def test_full_protocol_worked_example_with_several_images_per_product():
    r = retrieval_recall(IMAGES, TEXTS, IMAGE_PIDS, TEXT_PIDS, ks=(1, 2, 3), normalize=False, use_faiss=False)
    assert r["i2t_R@1"] == pytest.approx(50.0)
    assert r["i2t_R@2"] == pytest.approx(100.0)
    assert r["t2i_R@1"] == pytest.approx(200 / 3)
    assert r["t2i_R@2"] == pytest.approx(200 / 3)
    assert r["t2i_R@3"] == pytest.approx(100.0)
    assert r["sumR"] == pytest.approx(50 + 100 + 100 + 200 / 3 + 200 / 3 + 100)
    assert (r["num_image_queries"], r["num_text_queries"], r["num_text_gallery"], r["num_duplicate_texts"]) == (
        4,
        3,
        3,
        1,
    )
    assert r["backend"] == "dense"


def test_text_dedup_by_text_ids_matches_embedding_dedup_and_without_it_counts_double():
    by_ids = retrieval_recall(
        IMAGES, TEXTS, IMAGE_PIDS, TEXT_PIDS, ks=(1, 2, 3), text_ids=[7, 7, 8, 9], normalize=False
    )
    by_emb = retrieval_recall(IMAGES, TEXTS, IMAGE_PIDS, TEXT_PIDS, ks=(1, 2, 3), normalize=False)
    assert by_ids == by_emb
    # Declaring the two A texts different keeps both copies: image 2 (B) then sees A twice above B -> rank 2.
    distinct = retrieval_recall(
        IMAGES, TEXTS, IMAGE_PIDS, TEXT_PIDS, ks=(1, 2, 3), text_ids=[0, 1, 2, 3], normalize=False
    )
    assert distinct["i2t_R@2"] == pytest.approx(75.0)
    assert distinct["num_text_queries"] == 4
    assert deduplicate_texts(TEXTS, TEXT_PIDS).tolist() == [0, 2, 3]


def test_text_query_is_correct_if_any_image_of_its_product_is_in_top_k():
    # Product A's first image is far from its text, the second is the best match: still a hit at 1.
    images = torch.tensor([[0.0, 1.0], [1.0, 0.0], [0.6, 0.4]])
    texts = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    r = retrieval_recall(images, texts, [0, 0, 1], [0, 1], ks=(1,), normalize=False)
    assert r["t2i_R@1"] == 50.0  # text A -> img1 (A) first: hit; text B -> img0 (A, 1.0) above img2 (B, .4): miss
    assert r["i2t_R@1"] == pytest.approx(100 / 3)  # img0 (A) -> tB first: miss; img1 -> tA: hit; img2 (B) -> tA .6


def test_ties_go_to_the_query_even_at_the_top_k_boundary():
    # Image of A: D scores 1, and A, B, C all score 0. Rank = items strictly above the positive = 1, whichever of
    # the tied texts top-k happens to keep.
    images = torch.tensor([[1.0, 0.0]] * 4)
    texts = torch.tensor([[0.0, 1.0], [0.0, 1.0], [0.0, 1.0], [1.0, 0.0]])
    for use_faiss in (False, True):
        r = retrieval_recall(
            images, texts, list("ABCD"), list("ABCD"), ks=(1, 2), normalize=False, use_faiss=use_faiss
        )
        assert r["i2t_R@1"] == 25.0 and r["i2t_R@2"] == 100.0  # A, B, C rank 1; D rank 0


def test_rerank_callback_gets_original_rows_and_reorders_top_k():
    calls = []

    def rerank_t2i(query_idx, candidate_idx):
        calls.append((query_idx, candidate_idx.tolist()))
        pid = TEXT_PIDS[query_idx]
        return torch.tensor([1.0 if IMAGE_PIDS[c] == pid else 0.0 for c in candidate_idx.tolist()])

    def rerank_i2t(query_idx, candidate_idx):
        assert set(candidate_idx.tolist()) <= {0, 2, 3}  # de-duplicated text rows, original numbering
        return [float(TEXT_PIDS[c] == IMAGE_PIDS[query_idx]) for c in candidate_idx.tolist()]

    r = retrieval_recall(
        IMAGES,
        TEXTS,
        IMAGE_PIDS,
        TEXT_PIDS,
        ks=(1,),
        normalize=False,
        rerank_t2i=rerank_t2i,
        rerank_i2t=rerank_i2t,
        rerank_k=3,
    )
    assert r["t2i_R@1"] == 100.0 and r["i2t_R@1"] == 100.0
    assert sorted(q for q, _ in calls) == [0, 2, 3]  # one call per distinct text, original text rows
    assert all(len(c) == 3 and set(c) <= {0, 1, 2, 3} for _, c in calls)


def test_recall_at_k_on_a_score_matrix():
    scores = torch.tensor([[0.9, 0.1, 0.3], [0.2, 0.8, 0.5], [0.7, 0.6, 0.65]])
    r = recall_at_k(scores, ["x", "z", "z"], ["x", "y", "z"], ks=(1, 2))
    # q0: x at 0.9 first; q1: z (0.5) after 0.8 -> rank 1; q2: z best 0.65 < 0.7 -> rank 1
    assert r == {"R@1": pytest.approx(100 / 3), "R@2": pytest.approx(100.0)}


# ---------------------------------------------------------------------------------------------------------------
# FAISS
# ---------------------------------------------------------------------------------------------------------------
def _random_catalogue(n_products=60, images_per_product=3, dim=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    proto = torch.randn(n_products, dim, generator=g)
    pids = np.repeat(np.arange(n_products), images_per_product)
    images = proto[pids] + 0.9 * torch.randn(len(pids), dim, generator=g)
    texts = (proto + 0.9 * torch.randn(n_products, dim, generator=g))[pids]  # one text per product, repeated
    subcats = pids % 3
    return images, texts, pids, subcats


def test_faiss_path_equals_dense_path():
    images, texts, pids, _ = _random_catalogue()
    dense = retrieval_recall(images, texts, pids, pids, use_faiss=False)
    flat = retrieval_recall(images, texts, pids, pids, use_faiss=True)
    auto = retrieval_recall(images, texts, pids, pids, use_faiss="auto", faiss_threshold=10)
    assert flat["backend"] == auto["backend"] == "faiss" and dense["backend"] == "dense"
    for key in dense:
        if key != "backend":
            assert dense[key] == flat[key] == auto[key], key
    assert 0 < dense["t2i_R@1"] < 100  # a non-trivial case


def test_embedding_index_search_save_load_and_ivf(tmp_path):
    g = torch.Generator().manual_seed(1)
    gallery = torch.nn.functional.normalize(torch.randn(400, 8, generator=g), dim=-1)
    queries = torch.randn(5, 8, generator=g)
    ids = np.arange(400) * 10 + 3
    flat = EmbeddingIndex.from_embeddings(gallery, ids=ids)
    scores, found = flat.search(queries, 4)
    sim = queries @ gallery.T
    top = torch.topk(sim, 4, dim=1)
    assert np.array_equal(found, ids[top.indices.numpy()])
    assert np.allclose(scores, top.values.numpy(), atol=1e-5)
    flat.save(tmp_path / "flat")
    again = EmbeddingIndex.load(tmp_path / "flat")
    assert len(again) == 400 and np.array_equal(again.search(queries, 4)[1], found)
    ivf = EmbeddingIndex.from_embeddings(gallery, ids=ids, index_type="ivf", nlist=4, nprobe=4)  # all cells: exact
    assert ivf.resolved_type == "ivf"
    assert np.array_equal(ivf.search(queries, 4)[1], found)
    ivf.save(tmp_path / "ivf")
    assert np.array_equal(EmbeddingIndex.load(tmp_path / "ivf").search(queries, 4)[1], found)
    with pytest.raises(ValueError, match="between 1 and the index size"):
        flat.search(queries, 401)
    with pytest.raises(ValueError, match="empty"):
        EmbeddingIndex(8).search(queries, 1)
    with pytest.raises(ValueError, match="dim"):
        flat.search(torch.randn(2, 5), 1)


# ---------------------------------------------------------------------------------------------------------------
# Sample-100 protocol
# ---------------------------------------------------------------------------------------------------------------
def _sub_block_scores():
    """8 products (1 image, 1 text each) in sub-categories {0..3} and {4..7}. image_i . text_j = W[i, j]:
    diagonal 1, 5 across sub-categories (would break any wrongly drawn negative), within a sub-category below."""
    block = torch.tensor(
        [
            [1.0, 2.0, 2.0, 0.0],  # img0: two negatives above -> rank 2
            [0.0, 1.0, 0.0, 0.0],  # rank 0
            [0.0, 0.0, 1.0, 3.0],  # rank 1
            [0.0, 0.0, 0.0, 1.0],  # rank 0
        ]
    )  # columns (T2I): text0 rank 0, text1 rank 1 (2 > 1), text2 rank 1, text3 rank 1
    w = torch.full((8, 8), 5.0)
    w[:4, :4] = block
    w[4:, 4:] = block
    return w, torch.eye(8), np.arange(8), np.array(["tops"] * 4 + ["skirts"] * 4)


def test_sample100_negatives_come_from_the_query_subcategory():
    images, texts, pids, subs = _sub_block_scores()
    r = sample100_recall(
        images,
        texts,
        pids,
        pids,
        ks=(1, 2, 3),
        image_subcategories=subs,
        num_negatives=3,
        num_queries=1000,
        num_draws=3,
        normalize=False,
    )
    assert r["i2t_R@1"] == pytest.approx(50.0) and r["i2t_R@2"] == pytest.approx(75.0)
    assert r["i2t_R@3"] == pytest.approx(100.0)
    assert r["t2i_R@1"] == pytest.approx(25.0) and r["t2i_R@2"] == pytest.approx(100.0)
    assert r["i2t_R@1_std"] == 0.0
    assert r["num_queries_per_draw_i2t"] == 8 and r["i2t_fallback_queries"] == 0
    assert r["subcategory_constrained"] == 1


def test_sample100_falls_back_outside_a_too_small_subcategory_and_counts_it():
    images, texts, pids, subs = _sub_block_scores()
    # 4 negatives: 3 from the sub-category + 1 from the other one, which scores 5 and pushes every rank up by one.
    r = sample100_recall(
        images, texts, pids, pids, ks=(1, 2, 3, 4), text_subcategories=subs, num_negatives=4, num_draws=2,
        normalize=False,
    )  # fmt: skip
    assert r["i2t_R@1"] == 0.0 and r["i2t_R@2"] == pytest.approx(50.0) and r["i2t_R@3"] == pytest.approx(75.0)
    assert r["t2i_R@1"] == 0.0 and r["t2i_R@2"] == pytest.approx(25.0) and r["t2i_R@3"] == pytest.approx(100.0)
    assert r["i2t_fallback_queries"] == 16 and r["t2i_fallback_queries"] == 16  # 8 queries x 2 draws


def test_sample100_never_draws_a_negative_of_the_query_product():
    # Two images per product, both exactly on the product's text direction but of different norms: if the other
    # image of the queried product were drawn as a negative, it could outrank the positive.
    pids = np.repeat(np.arange(30), 2)
    images = torch.eye(30)[pids] * torch.tensor([1.0, 2.0]).repeat(30)[:, None]
    texts = torch.eye(30)[pids]
    r = sample100_recall(images, texts, pids, pids, num_negatives=20, num_queries=40, normalize=False, seed=3)
    assert r["t2i_R@1"] == 100.0 and r["i2t_R@1"] == 100.0
    assert r["num_queries_per_draw_t2i"] == 30  # distinct texts only


def test_sample100_without_subcategories_and_all_negatives_equals_full_gallery():
    images, texts, pids, _ = _random_catalogue(n_products=12, images_per_product=1)
    full = retrieval_recall(images, texts, pids, pids, ks=(1, 5))
    s = sample100_recall(images, texts, pids, pids, ks=(1, 5), num_negatives=11, num_draws=2)
    assert s["subcategory_constrained"] == 0
    for key in ("i2t_R@1", "i2t_R@5", "t2i_R@1", "t2i_R@5"):
        assert s[key] == pytest.approx(full[key])


def test_sample100_rerank_rescoring_all_candidates():
    images, texts, pids, subs = _sub_block_scores()
    seen = []

    def oracle(query_idx, candidate_idx):  # ITM-like scores that know the answer
        seen.append(len(candidate_idx))
        return (torch.as_tensor(candidate_idx) == query_idx).float()

    r = sample100_recall(
        images, texts, pids, pids, ks=(1,), image_subcategories=subs, num_negatives=3, num_draws=1,
        normalize=False, rerank_i2t=oracle, rerank_t2i=oracle,
    )  # fmt: skip
    assert r["i2t_R@1"] == 100.0 and r["t2i_R@1"] == 100.0
    assert seen == [4] * 16  # 8 queries per direction, all 1 + 3 candidates re-scored
    with pytest.raises(ValueError, match="rerank_k"):
        sample100_recall(images, texts, pids, pids, ks=(1, 3), num_negatives=3, rerank_i2t=oracle, rerank_k=2)


def test_sample100_is_seeded():
    images, texts, pids, subs = _random_catalogue()
    kw = dict(image_subcategories=subs, num_negatives=30, num_queries=50)
    a = sample100_recall(images, texts, pids, pids, seed=1, **kw)
    b = sample100_recall(images, texts, pids, pids, seed=1, **kw)
    c = sample100_recall(images, texts, pids, pids, seed=2, **kw)
    assert a == b and a != c


# ---------------------------------------------------------------------------------------------------------------
# Bad inputs
# ---------------------------------------------------------------------------------------------------------------
def test_retrieval_bad_inputs_give_clear_errors():
    with pytest.raises(ValueError, match="one id per row"):
        retrieval_recall(IMAGES, TEXTS, IMAGE_PIDS[:3], TEXT_PIDS)
    with pytest.raises(ValueError, match="empty"):
        retrieval_recall(torch.zeros(0, 3), TEXTS, [], TEXT_PIDS)
    with pytest.raises(ValueError, match="larger than"):
        retrieval_recall(IMAGES, TEXTS, IMAGE_PIDS, TEXT_PIDS, ks=(1, 5))  # 3 distinct texts
    with pytest.raises(ValueError, match="dim"):
        retrieval_recall(IMAGES, TEXTS[:, :2], IMAGE_PIDS, TEXT_PIDS)
    with pytest.raises(ValueError, match="NaN"):
        retrieval_recall(IMAGES * float("nan"), TEXTS, IMAGE_PIDS, TEXT_PIDS)
    with pytest.raises(ValueError, match="on_missing_positive='skip'"):
        retrieval_recall(IMAGES, TEXTS, ["A", "A", "B", "D"], TEXT_PIDS, ks=(1,))
    skipped = retrieval_recall(IMAGES, TEXTS, ["A", "A", "B", "D"], TEXT_PIDS, ks=(1,), on_missing_positive="skip")
    assert skipped["i2t_skipped_queries"] == 1 and skipped["t2i_skipped_queries"] == 1
    with pytest.raises(ValueError, match="lower num_negatives"):
        sample100_recall(IMAGES, TEXTS, IMAGE_PIDS, TEXT_PIDS, ks=(1,))
    with pytest.raises(ValueError, match="larger than"):
        sample100_recall(IMAGES, TEXTS, IMAGE_PIDS, TEXT_PIDS, ks=(5,), num_negatives=1)


# ---------------------------------------------------------------------------------------------------------------
# Text-guided image retrieval
# ---------------------------------------------------------------------------------------------------------------
def test_tgir_excludes_the_reference_image_and_reports_per_category():
    gallery = torch.eye(4)
    queries = torch.tensor([[0.9, 0.5, 0.1, 0.0], [0.2, 0.3, 0.8, 0.1]])
    # q0: reference 0 removed -> target 1 (.5) first; q1: reference 2 removed -> target 3 (.1) after .3, .2 -> rank 2
    r = tgir_recall(queries, gallery, [1, 3], [0, 2], ks=(1, 2, 3), categories=["dress", "shirt"], normalize=False)
    assert r["R@1"] == 50.0 and r["R@2"] == 50.0 and r["R@3"] == 100.0
    assert r["dress_R@1"] == 100.0 and r["shirt_R@1"] == 0.0 and r["avg_R@1"] == 50.0
    # Without exclusion the reference outranks the target: q0 rank 1, q1 rank 3.
    plain = tgir_recall(queries, gallery, [1, 3], ks=(1, 2, 4), normalize=False)
    assert plain["R@1"] == 0.0 and plain["R@2"] == 50.0 and plain["R@4"] == 100.0
    # A target that is its own reference stays in the gallery, and is counted.
    same = tgir_recall(queries, gallery, [0, 3], [0, 2], ks=(1,), normalize=False)
    assert same["R@1"] == 50.0 and same["num_target_is_reference"] == 1


def test_tgir_per_category_gallery_and_errors():
    gallery = torch.eye(4)
    queries = torch.tensor([[0.0, 0.9, 1.0, 0.0]])  # target 1; image 2 (other category) would outrank it
    r = tgir_recall(
        queries, gallery, [1], ks=(1,), categories=["dress"], gallery_categories=["dress", "dress", "shirt", "shirt"],
        normalize=False,
    )  # fmt: skip
    assert r["R@1"] == 100.0
    with pytest.raises(ValueError, match="target_indices"):
        tgir_recall(queries, gallery, [4])
    with pytest.raises(ValueError, match="larger than"):
        tgir_recall(queries, gallery, [1], [0], ks=(10,))
    with pytest.raises(ValueError, match="one id per row"):
        tgir_recall(queries, gallery, [1, 2])


# ---------------------------------------------------------------------------------------------------------------
# Classification and linear probing
# ---------------------------------------------------------------------------------------------------------------
def test_classification_accuracy_top1_top2_macro_and_ignore_index():
    logits = torch.tensor([[3.0, 1, 0], [0, 2, 1], [0, 2, 1], [0, 1, 2], [5, 0, 0]])
    labels = torch.tensor([0, 1, 2, 2, -100])
    r = classification_accuracy(logits, labels, ks=(1, 2))
    assert r["top1"] == 75.0  # predictions 0, 1, 1, 2
    assert r["top2"] == 100.0
    assert r["macro_acc"] == pytest.approx((1 + 1 + 0.5) / 3 * 100)
    assert r["num_ignored"] == 1 and r["num_samples"] == 4
    assert classification_accuracy(["a", "b", "b"], ["a", "b", "c"], ignore_index="")["top1"] == pytest.approx(200 / 3)
    with pytest.raises(ValueError, match="one row per label"):
        classification_accuracy(logits, labels[:3])


def test_linear_probe_separable_blobs_is_exact_and_deterministic():
    g = torch.Generator().manual_seed(0)
    centers = torch.tensor([[4.0, 0, 0, 0], [0, 4.0, 0, 0], [0, 0, 4.0, 0]])
    names = np.array(["brand_a", "brand_b", "brand_c"])
    ytr, yte = np.arange(60) % 3, np.arange(30) % 3
    xtr = centers[ytr] + 0.3 * torch.randn(60, 4, generator=g)
    xte = centers[yte] + 0.3 * torch.randn(30, 4, generator=g)
    kw = dict(weight_decay=(1e-2, 1.0), max_iter=50)
    a = linear_probe(xtr, names[ytr], xte, names[yte], **kw)
    b = linear_probe(xtr, names[ytr], xte, names[yte], **kw)
    assert a == b
    assert a["top1"] == 100.0 and a["num_classes"] == 3 and a["weight_decay"] in (1e-2, 1.0)
    # Labels the features don't carry: chance-level, not perfect.
    shuffled = linear_probe(xtr, names[np.arange(60) // 20], xte, names[yte], weight_decay=1e-1, max_iter=50)
    assert shuffled["top1"] < 70.0
    unseen = linear_probe(
        xtr, names[ytr], xte[:4], ["brand_a", "brand_b", "brand_c", "brand_z"], weight_decay=1e-2, max_iter=50
    )
    assert unseen["num_test_unseen_labels"] == 1 and unseen["top1"] == 75.0


# ---------------------------------------------------------------------------------------------------------------
# Captioning metrics
# ---------------------------------------------------------------------------------------------------------------
HYP1 = "A red silk dress, with long sleeves."
REFS1 = ["a red dress with long sleeves", "red silk dress"]


def test_tokenize_lowercases_and_drops_punctuation():
    assert tokenize(HYP1) == ["a", "red", "silk", "dress", "with", "long", "sleeves"]
    assert tokenize("T-shirt & co.") == ["t-shirt", "co"]


def test_bleu_hand_computed():
    # 1-grams 7/7, 2-grams 6/6, 3-grams 3/5 (red silk dress, dress with long, with long sleeves),
    # 4-grams 1/4 (dress with long sleeves); c = 7 > closest r = 6 -> no brevity penalty.
    assert bleu4([HYP1], [REFS1]) == pytest.approx((1 * 1 * 3 / 5 * 1 / 4) ** 0.25)
    # Corpus with a short second caption: "black coat" vs "a black wool coat" adds 1-grams 2/2, 2-grams 0/1;
    # c = 9 < r = 6 + 4 -> BP = exp(1 - 10/9).
    bleu = corpus_bleu([HYP1, "black coat"], [REFS1, ["a black wool coat"]])
    bp = math.exp(1 - 10 / 9)
    assert bleu[0] == pytest.approx(bp * 1.0)
    assert bleu[1] == pytest.approx(bp * (1 * 6 / 7) ** 0.5)
    assert bleu[3] == pytest.approx(bp * (1 * 6 / 7 * 3 / 5 * 1 / 4) ** 0.25)
    assert bleu4(["a dress"], [["black coat"]]) == 0.0


def test_bleu_matches_nltk_corpus_bleu():
    nltk_bleu = pytest.importorskip("nltk.translate.bleu_score")
    hyps = [HYP1, "black wool coat with a hood", "white cotton t-shirt with print", "blue denim jacket with pockets"]
    refs = [
        REFS1,
        ["black coat with hood", "a wool coat in black with a hood"],
        ["white t-shirt in cotton with a print", "printed white tee"],
        ["denim jacket", "a blue jacket in denim with two pockets"],
    ]
    ours = bleu4(hyps, refs)
    theirs = nltk_bleu.corpus_bleu([[tokenize(r) for r in rs] for rs in refs], [tokenize(h) for h in hyps])
    assert 0 < ours < 1 and ours == pytest.approx(theirs, abs=1e-12)


def test_rouge_l_hand_computed():
    # LCS with ref 1 = 6 (a red dress with long sleeves), with ref 2 = 3: P = max(6/7, 3/7), R = max(6/6, 3/3).
    p, r, beta2 = 6 / 7, 1.0, 1.2**2
    assert rouge_l([HYP1], [REFS1]) == pytest.approx((1 + beta2) * p * r / (r + beta2 * p))
    assert rouge_l(["blue coat", "a"], [["red dress"], ["a"]]) == pytest.approx(0.5)


def test_cider_d_hand_computed():
    # Two images -> idf = log(2) - log(1) = L for every n-gram (df from the references; unseen n-grams df 1).
    # Image 1: "red red dress" vs "red dress": 1-grams hyp (2L, L), ref (L, L): clipped dot 2L^2 / (sqrt5 L sqrt2 L);
    # 2-grams hyp {red red, red dress}, ref {red dress}: 1/sqrt2; 3,4-grams 0; bigram-count length penalty
    # exp(-(2 - 1)^2 / 72). Image 2: "blue coat" vs "black coat": 1-grams 1/2, rest 0.
    s1 = 10 * math.exp(-1 / 72) * (2 / math.sqrt(10) + 1 / math.sqrt(2)) / 4
    s2 = 10 * 0.5 / 4
    score, per_image = cider_d(["red red dress", "blue coat"], [["red dress"], ["black coat"]], return_per_image=True)
    assert per_image == pytest.approx([s1, s2])
    assert score == pytest.approx((s1 + s2) / 2)
    # Identical caption: 1- and 2-gram cosines 1, no 3/4-grams -> 10 * 2/4.
    assert cider_d(["red dress", "blue coat"], [["red dress"], ["black coat"]], return_per_image=True)[1][
        0
    ] == pytest.approx(5.0)


def test_caption_metrics_scales_and_errors():
    m = caption_metrics([HYP1], [REFS1])
    assert m["BLEU-4"] == pytest.approx(100 * (0.15**0.25))
    assert set(m) == {"BLEU-1", "BLEU-2", "BLEU-3", "BLEU-4", "CIDEr-D", "ROUGE-L", "num_images"}
    with pytest.raises(ValueError, match="one per image"):
        caption_metrics([HYP1, HYP1], [REFS1])
    with pytest.raises(ValueError, match="no reference"):
        caption_metrics([HYP1], [[]])
    with pytest.raises(TypeError, match="list of captions"):
        bleu4(HYP1, [REFS1])


# ---------------------------------------------------------------------------------------------------------------
# The evaluate module, the reports
# ---------------------------------------------------------------------------------------------------------------
def test_recall_at_k_evaluate_module_loads_offline_and_matches(monkeypatch):
    evaluate = pytest.importorskip("evaluate")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    metric = evaluate.load(RECALL_AT_K_PATH)
    images, texts, pids, _ = _random_catalogue(n_products=20, images_per_product=2)
    scores = torch.nn.functional.normalize(texts[::2], dim=-1) @ torch.nn.functional.normalize(images, dim=-1).T
    relevant = [np.flatnonzero(pids == p).tolist() for p in pids[::2]]
    ours = recall_at_k(scores, pids[::2], pids, ks=(1, 5, 10))
    theirs = metric.compute(predictions=scores.tolist(), references=relevant, k=[1, 5, 10])
    assert theirs["num_queries"] == 20
    assert {k: theirs[k] for k in ours} == pytest.approx(ours)
    ranked = torch.argsort(scores, dim=1, descending=True)[:, :10].tolist()
    by_rank = metric.compute(predictions=ranked, references=relevant, k=[1, 5, 10], predictions_are="rankings")
    assert {k: by_rank[k] for k in ours} == pytest.approx(ours)
    assert metric.compute(predictions=[[0.9, 0.1, 0.3], [0.2, 0.8, 0.5]], references=[[0], [2]], k=[1, 2]) == {
        "R@1": 50.0,
        "R@2": 100.0,
        "num_queries": 2,
    }


def test_recall_module_is_package_data():
    setup_cfg = (Path(__file__).resolve().parents[1] / "setup.cfg").read_text()
    assert "evaluation/recall_at_k/*.py" in setup_cfg
    assert (Path(RECALL_AT_K_PATH) / "recall_at_k.py").is_file()


def test_markdown_table_and_save_results(tmp_path):
    results = {
        "full": {"i2t_R@1": 50.0, "t2i_R@1": 66.6667, "num_text_queries": 3},
        "sample100": {"i2t_R@1": 75.5, "i2t_fallback_queries": 2},
        "model": "tiny",
    }
    md = format_results_markdown(results)
    lines = md.splitlines()
    assert lines[0] == "| | i2t_R@1 | t2i_R@1 | num_text_queries | i2t_fallback_queries |"
    assert lines[2] == "| full | 50.00 | 66.67 | 3 |  |"
    assert lines[3] == "| sample100 | 75.50 |  |  | 2 |"
    assert "| model | tiny |" in md
    flat = format_results_markdown({"R@10": np.float32(31.25), "n": np.int64(4)}, digits=1)
    assert "| R@10 | 31.2 |" in flat and "| n | 4 |" in flat
    path = save_results(results, tmp_path / "out" / "retrieval")
    assert path.name == "retrieval.json"
    assert json.loads(path.read_text()) == results
    assert path.with_suffix(".md").read_text() == md


# ---------------------------------------------------------------------------------------------------------------
# Evaluator with a fake CLIP-style model
# ---------------------------------------------------------------------------------------------------------------
class FakeDualEncoder(nn.Module):
    """Image embedding = the first row of channel 0; text embedding = one-hot of token 1 shifted by ``shift``."""

    def __init__(self, dim: int, shift: int = 0):
        super().__init__()
        self.dim, self.shift = dim, shift
        self.scale = nn.Parameter(torch.ones(()))

    # CLIP's (transformers 5) contract: a ModelOutput whose `pooler_output` is the joint-space embedding
    def get_image_features(self, pixel_values):
        return BaseModelOutputWithPooling(pooler_output=pixel_values[:, 0, 0, : self.dim] * self.scale)

    def get_text_features(self, input_ids, attention_mask):
        one_hot = nn.functional.one_hot((input_ids[:, 1] + self.shift) % self.dim, self.dim).float()
        return BaseModelOutputWithPooling(pooler_output=one_hot * self.scale)


def _fake_batches(n_products=6, images_per_product=2, batch_size=4, dim=8):
    pids = np.repeat(np.arange(n_products), images_per_product)
    pixel = torch.zeros(len(pids), 3, 8, 8)
    pixel[torch.arange(len(pids)), 0, 0, torch.from_numpy(pids)] = 1.0
    pixel[:, 0, 0, dim - 1] = 0.01 * torch.arange(len(pids))  # images of one product differ slightly
    ids = torch.stack([torch.full((len(pids),), 101), torch.from_numpy(pids), torch.full((len(pids),), 102)], 1)
    subs = ["tops" if p % 2 else "skirts" for p in pids]
    return [
        {
            "pixel_values": pixel[s : s + batch_size],
            "input_ids": ids[s : s + batch_size],
            "attention_mask": torch.ones_like(ids[s : s + batch_size]),
            "product_ids": torch.from_numpy(pids[s : s + batch_size]),
            "subcategory": subs[s : s + batch_size],
        }
        for s in range(0, len(pids), batch_size)
    ]


def test_evaluator_perfect_model_gets_full_recall():
    model = FakeDualEncoder(dim=8).train()
    evaluator = RetrievalEvaluator(model, show_progress=False)
    emb = evaluator.extract(_fake_batches())
    assert model.training and not emb.image_embeds.requires_grad
    assert emb.image_embeds.shape == (12, 8) and emb.subcategories.tolist()[:2] == ["skirts", "skirts"]
    results = evaluator.evaluate(embeddings=emb, ks=(1, 2), sample100_kwargs=dict(num_negatives=2, num_draws=2))
    for proto in ("full", "sample100"):
        for key in ("i2t_R@1", "t2i_R@1"):
            assert results[proto][key] == 100.0, (proto, key)
    assert results["full"]["num_text_queries"] == 6 and results["full"]["num_duplicate_texts"] == 6
    assert results["sample100"]["i2t_fallback_queries"] == 0  # 3 products per sub-category: 2 negatives fit


def test_evaluator_shifted_text_model_has_known_recall():
    # Texts embed as the next product: image p is closest to product p-1's text (rank 1); text p matches the two
    # images of product p+1 (rank 2).
    evaluator = RetrievalEvaluator(FakeDualEncoder(dim=6, shift=1), show_progress=False)
    batches = _fake_batches(dim=6)
    for b in batches:  # drop the per-image perturbation so the ranks are exact
        b["pixel_values"][:, 0, 0, 5] = (b["product_ids"] == 5).float()
    r = evaluator.evaluate(batches, protocols=("full",), ks=(1, 2, 3))["full"]
    assert r["i2t_R@1"] == 0.0 and r["i2t_R@2"] == 100.0
    assert r["t2i_R@1"] == 0.0 and r["t2i_R@2"] == 0.0 and r["t2i_R@3"] == 100.0
    with pytest.raises(KeyError, match="product_ids"):
        evaluator.extract([{k: v for k, v in batches[0].items() if k != "product_ids"}])
    with pytest.raises(TypeError, match="CLIP's interface"):
        RetrievalEvaluator(nn.Linear(2, 2))
    with pytest.raises(ValueError, match="unknown protocols"):
        evaluator.evaluate(batches, protocols=("fashioniq",))


def test_caption_metrics_equal_the_coco_caption_toolkit():
    """BLEU-1..4, CIDEr-D and ROUGE-L equal pycocoevalcap's scorers (the COCO caption toolkit the papers report) on
    the same tokens, for unrelated captions (BLEU-3/4 at 0) and for near copies of a reference."""
    pytest.importorskip("pycocoevalcap")
    import random

    from pycocoevalcap.bleu.bleu import Bleu
    from pycocoevalcap.cider.cider import Cider
    from pycocoevalcap.rouge.rouge import Rouge

    from syncmask_hf.evaluation.caption_metrics import tokenize

    rng = random.Random(0)
    vocab = "a red black white striped cotton dress shirt jersey top with long short sleeves in soft denim".split()
    refs = [
        [" ".join(rng.choice(vocab) for _ in range(rng.randint(4, 14))) for _ in range(rng.randint(1, 3))]
        for _ in range(150)
    ]
    unrelated = [" ".join(rng.choice(vocab) for _ in range(rng.randint(4, 12))) for _ in refs]
    near = []
    for rs in refs:
        words = [w if rng.random() > 0.25 else rng.choice(vocab) for w in rs[0].split()]
        near.append(" ".join(words[: rng.randint(3, len(words))]))
    for hyps in (unrelated, near):
        ours = caption_metrics(hyps, refs)
        gts = {i: [" ".join(tokenize(r)) for r in rs] for i, rs in enumerate(refs)}
        res = {i: [" ".join(tokenize(h))] for i, h in enumerate(hyps)}
        bleu, _ = Bleu(4).compute_score(gts, res, verbose=0)
        for n in range(4):
            assert ours[f"BLEU-{n + 1}"] == pytest.approx(100 * bleu[n], abs=0.02), n
        assert ours["CIDEr-D"] == pytest.approx(100 * Cider().compute_score(gts, res)[0], abs=1e-6)
        assert ours["ROUGE-L"] == pytest.approx(100 * Rouge().compute_score(gts, res)[0], abs=1e-6)
    assert ours["BLEU-4"] > 10  # the near copies share 4-grams: the comparison is not only of zeros


def test_meteor_by_the_coco_toolkit_when_java_is_there():
    from syncmask_hf.evaluation import meteor_available, meteor_score

    if not meteor_available():
        assert meteor_score(["a red dress"], [["a red dress"]]) is None
        assert "METEOR" not in caption_metrics(["a red dress"], [["a red dress"]], meteor=True)
        pytest.skip("METEOR needs pycocoevalcap and java (apt-get install default-jre-headless)")
    refs = [["a red cotton dress with long sleeves"], ["black denim trousers with a zip fly"]]
    same = caption_metrics([r[0] for r in refs], refs, meteor=True)
    other = caption_metrics(["blue leather boots", "a white wool scarf"], refs, meteor=True)
    assert same["METEOR"] > 90 and other["METEOR"] < 20, (same["METEOR"], other["METEOR"])
