"""The shared pieces every model composes: multi-positive ITC, negative mining, EMA, queues, masks."""

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from syncmask_hf.models import losses, masking, momentum


def test_clip_loss_without_product_ids_is_clips_loss():
    img = F.normalize(torch.randn(6, 8), dim=-1)
    txt = F.normalize(torch.randn(6, 8), dim=-1)
    scale = torch.tensor(math.log(10.0))
    logits = 10.0 * img @ txt.t()
    labels = torch.arange(6)
    expected = 0.5 * (F.cross_entropy(logits, labels) + F.cross_entropy(logits.t(), labels))
    got = losses.clip_contrastive_loss(img, txt, scale)
    torch.testing.assert_close(got, expected)


def test_clip_loss_with_text_ids_treats_identical_texts_of_other_products_as_positives():
    img = F.normalize(torch.randn(4, 8), dim=-1)
    txt = F.normalize(torch.randn(4, 8), dim=-1)
    scale = torch.tensor(math.log(10.0))
    products, texts = torch.tensor([1, 2, 3, 4]), torch.tensor([5, 5, 6, 7])  # items 0 and 1 share a text
    logits = 10.0 * img @ txt.t()
    targets = torch.tensor([[0.5, 0.5, 0, 0], [0.5, 0.5, 0, 0], [0, 0, 1.0, 0], [0, 0, 0, 1.0]])
    expected = 0.5 * (losses.soft_cross_entropy(logits, targets) + losses.soft_cross_entropy(logits.t(), targets))
    torch.testing.assert_close(losses.clip_contrastive_loss(img, txt, scale, products, texts), expected)
    assert not torch.allclose(losses.clip_contrastive_loss(img, txt, scale, products), expected)


def test_multi_positive_targets_never_treat_same_product_as_negative():
    ids = torch.tensor([7, 7, 3, 9])
    targets = losses.multi_positive_targets(ids, ids)
    torch.testing.assert_close(targets[0], torch.tensor([0.5, 0.5, 0.0, 0.0]))
    torch.testing.assert_close(targets[2], torch.tensor([0.0, 0.0, 1.0, 0.0]))
    torch.testing.assert_close(targets.sum(1), torch.ones(4))


def test_multi_positive_loss_does_not_push_same_product_items_apart():
    # Two images of one product sharing one text: a single-positive loss treats the sibling column as a negative
    # (positive gradient on its logit = push apart); the multi-positive loss leaves it alone at equilibrium.
    logits = torch.tensor([[20.0, 20.0, 0.0], [20.0, 20.0, 0.0], [0.0, 0.0, 20.0]], requires_grad=True)
    grads = {}
    for name, targets in {
        "single": torch.eye(3),
        "multi": losses.multi_positive_targets(torch.tensor([1, 1, 2]), torch.tensor([1, 1, 2])),
    }.items():
        logits.grad = None
        losses.contrastive_loss(logits, logits.t(), targets, targets).backward()
        grads[name] = logits.grad[0, 1].item()
    assert grads["single"] > 0.1
    assert abs(grads["multi"]) < 1e-4


def test_distillation_mixes_targets():
    logits = torch.randn(3, 3)
    hard = torch.eye(3)
    soft = torch.full((3, 3), 1 / 3)
    mixed = losses.contrastive_loss(logits, logits, hard, hard, soft, soft, alpha=0.4)
    expected = losses.soft_cross_entropy(logits, 0.4 * soft + 0.6 * hard)
    torch.testing.assert_close(mixed, expected)


def test_exclusion_mask_and_negative_sampling_never_pick_excluded():
    prod = torch.tensor([1, 1, 2, 3, 4])
    text = torch.tensor([10, 10, 20, 20, 40])  # items 2 and 3 share an identical text
    text_sim = torch.eye(5)
    text_sim[0, 4] = text_sim[4, 0] = 0.99  # near-duplicate descriptions
    excluded = losses.exclusion_mask(prod, prod, text, text, text_sim, near_duplicate_threshold=0.95)
    assert excluded[0, 1] and excluded[2, 3] and excluded[0, 4] and not excluded[0, 2]
    sim = torch.randn(5, 5) * 5
    for hardest in (False, True):
        for _ in range(20):
            idx, valid = losses.sample_negatives(sim, excluded, hardest=hardest)
            assert valid.all()
            assert not excluded[torch.arange(5), idx].any()


def test_sample_negatives_reports_rows_without_candidates():
    excluded = torch.ones(2, 2, dtype=torch.bool)
    excluded[1, 0] = False
    idx, valid = losses.sample_negatives(torch.zeros(2, 2), excluded)
    assert valid.tolist() == [False, True] and idx[1] == 0


def test_hardest_negative_is_the_argmax_among_eligible():
    sim = torch.tensor([[9.0, 5.0, 1.0], [5.0, 9.0, 7.0], [0.0, 3.0, 9.0]])
    excluded = torch.eye(3, dtype=torch.bool)
    idx, _ = losses.sample_negatives(sim, excluded, hardest=True)
    assert idx.tolist() == [1, 2, 1]


def test_masked_lm_loss_with_nothing_masked_is_zero_with_graph():
    logits = torch.randn(2, 3, 5, requires_grad=True)
    loss = losses.masked_lm_loss(logits, torch.full((2, 3), -100))
    loss.backward()
    assert loss.item() == 0.0 and logits.grad is not None


def test_ema_update_arithmetic_is_exact():
    student = nn.Linear(4, 3)
    teacher = momentum.make_teacher(student)
    assert all(not p.requires_grad for p in teacher.parameters())
    with torch.no_grad():
        for p in student.parameters():
            p.add_(1.0)
    before = [p.clone() for p in teacher.parameters()]
    momentum.ema_update(teacher, student, 0.995)
    for t0, t, s in zip(before, teacher.parameters(), student.parameters()):
        torch.testing.assert_close(t, t0.lerp(s, 0.005), rtol=0, atol=0)
        torch.testing.assert_close(t, 0.995 * t0 + 0.005 * s)
    momentum.ema_update(teacher, student, 0.0)
    for t, s in zip(teacher.parameters(), student.parameters()):
        assert torch.equal(t, s)


def test_feature_queue_is_fifo_and_tracks_ids():
    queue = momentum.FeatureQueue(5, {"image": 2})
    assert queue.get("image").shape == (0, 2)
    queue.enqueue(torch.tensor([1, 2, 3]), image=torch.ones(3, 2))
    queue.enqueue(torch.tensor([4, 5, 6]), image=torch.full((3, 2), 2.0))
    assert queue.ids().tolist() == [6, 2, 3, 4, 5]
    assert queue.get("image")[0].tolist() == [2.0, 2.0]
    assert int(queue.filled) == 5 and int(queue.ptr) == 1
    assert "image_queue" not in queue.state_dict()


def test_top_scored_mask_takes_exactly_the_top_eligible():
    scores = torch.tensor([[0.9, 0.1, 0.8, 0.7, 0.95, 0.2]])
    eligible = torch.tensor([[False, True, True, True, True, False]])
    mask = masking.top_scored_mask(scores, eligible, ratio=0.5)
    assert mask.tolist() == [[False, False, True, False, True, False]]


def test_random_mask_same_count_as_top_scored_and_only_eligible():
    g = torch.Generator().manual_seed(0)
    eligible = torch.rand(8, 20, generator=g) > 0.3
    scores = torch.rand(8, 20, generator=g)
    a = masking.top_scored_mask(scores, eligible, 0.15)
    b = masking.random_mask(eligible, 0.15, generator=g)
    assert torch.equal(a.sum(1), b.sum(1))
    assert not (b & ~eligible).any()
    assert torch.equal(a.sum(1), masking.num_to_mask(eligible, 0.15))


def test_apply_token_mask_labels_and_corruption():
    ids = torch.randint(1000, 2000, (4, 50))
    mask = torch.zeros_like(ids, dtype=torch.bool)
    mask[:, ::2] = True
    masked, labels = masking.apply_token_mask(ids, mask, mask_token_id=103, vocab_size=30522)
    assert torch.equal(labels[mask], ids[mask]) and (labels[~mask] == -100).all()
    assert torch.equal(masked[~mask], ids[~mask])
    share_mask_token = (masked[mask] == 103).float().mean().item()
    assert 0.6 < share_mask_token < 0.95


def test_eligible_tokens_excludes_specials_and_padding():
    ids = torch.tensor([[101, 5, 6, 102, 0]])
    att = torch.tensor([[1, 1, 1, 1, 0]])
    assert masking.eligible_tokens(ids, att, [101, 102, 0]).tolist() == [[False, True, True, False, False]]


@pytest.mark.parametrize("count", [1, 8, 20])
def test_block_mask_has_exact_count(count):
    g = torch.Generator().manual_seed(1)
    m = masking.block_mask(7, count, 3, generator=g)
    assert m.shape == (3, 49) and (m.sum(1) == count).all()
