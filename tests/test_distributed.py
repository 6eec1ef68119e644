"""Several processes through `pretrain.py`'s own path (`torchrun --nproc_per_node 2`, gloo): every rank holds the
same weights at the end of each E2 stage, each epoch and the run (`training.check_replicas` gathers a checksum of
every tensor from all ranks and fails the run naming the tensors that differ), and the semi-hard sampler gives every
rank the same batch size at every step on the real catalogues."""

from __future__ import annotations

import json

import pytest
from test_pretrain import torchrun
from transformers import CLIPConfig, CLIPModel

import syncmask_hf
from syncmask_hf import training
from syncmask_hf.data import text_id

COMMON = [
    "--dataset",
    "synthetic:64",
    "--batch_size",
    "4",
    "--report_to",
    "none",
    "--checkpoint_every",
    "0",
    "--test_products",
    "0.25",
    "--val_products",
    "0.0",
]


def checksums(output_dir):
    results = json.loads((output_dir / "final" / "eval_results.json").read_text())
    assert results["training"]["num_processes"] == 2
    return results["training"]["weight_checksums"]


@pytest.mark.slow
def test_e2_two_stages_keep_every_rank_identical(tmp_path):
    """Stage 1 trains only E2's new parameters, stage 2 everything. The towers were frozen before DDP wrapped the
    model, so DDP never all-reduced their gradients in stage 2 and the ranks drifted apart."""
    clip = tmp_path / "clip"
    text = dict(vocab_size=30522, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4)
    text.update(max_position_embeddings=77, eos_token_id=102, pad_token_id=0, bos_token_id=101)
    vision = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4, image_size=32)
    CLIPModel(
        CLIPConfig(text_config=text, vision_config=dict(vision, patch_size=8), projection_dim=16)
    ).save_pretrained(clip)
    out = tmp_path / "run"
    args = ["--model", "e2", "--vision_pretrained", str(clip), "--e2_stage", "both", "--max_steps", "5"]
    proc = torchrun([*args, *COMMON, "--output_dir", str(out)], timeout=240)
    sums = checksums(out)
    # one check at the switch to stage 2 (after the first fifth of the steps) and one at the end of the run
    assert [k for k in sums if k.startswith("stage1_end")] == ["stage1_end_step1"], sums
    assert "run_end" in sums
    assert "equal on all 2 process(es)" in proc.stderr


@pytest.mark.slow
def test_syncmask_semi_hard_two_epochs_keep_every_rank_identical(tmp_path):
    out = tmp_path / "run"
    args = ["--model", "syncmask", "--config", "syncmask-tiny", "--sampler", "semi_hard", "--num_epochs", "2"]
    torchrun([*args, *COMMON, "--output_dir", str(out)], timeout=240)
    sums = checksums(out)
    # checked at the end of the first epoch (where the sampler's shares are rebuilt) and at the run's end (the
    # second epoch's last step)
    assert {"epoch1_end", "run_end"} <= set(sums), sums
    assert sums["epoch1_end"] != sums["run_end"]  # the second epoch trained


def batch_sizes(train, batch_size: int, replicas: int):
    """The semi-hard sampler as `pretrain.py` builds it, per rank: the size of every batch of one epoch."""
    groups = [sub or cat for sub, cat in zip(train["subcategory"], train["category"])]
    texts = [text_id(t) for t in train["text"]]
    per_rank = []
    for rank in range(replicas):
        sampler = syncmask_hf.GroupedSemiHardBatchSampler(
            train["product_id"], batch_size, group_keys=groups, text_ids=texts, num_replicas=replicas, rank=rank,
            seed=42, drop_last=True,
        )  # fmt: skip
        sampler.set_epoch(1)
        per_rank.append([len(b) for b in sampler])
    return per_rank, sampler.dropped_items


@pytest.mark.shared_data
@pytest.mark.parametrize("source", ["hm", "myntra"])
def test_semi_hard_sampler_gives_every_rank_equal_batches_on_real_catalogues(shared_data, source):
    splits = training.load_catalog_splits([f"{source}:{shared_data / source}"], 0.15, 0.1, 42)
    train = splits["train"]
    for replicas in (2, 3):
        per_rank, dropped = batch_sizes(train, 32, replicas)
        assert len({len(sizes) for sizes in per_rank}) == 1  # every rank takes the same number of steps
        assert {size for sizes in per_rank for size in sizes} == {32}, replicas  # and full batches only
        # every item but the dropped tail is used
        assert sum(map(len, per_rank)) * 32 + dropped == len(train)
        assert dropped < 32 * replicas * 4
