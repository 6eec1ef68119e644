#!/usr/bin/env bash
# The CPU "real run" of examples/README.md: each model pretrained on H&M + Myntra (product-disjoint split, seed 42)
# for a fixed budget of 10 minutes of training, with the ablations each paper reports at the same budget and seed.
# Runs go two at a time, one CPU thread each, so the two sides of every comparison share the machine equally.
# Then the DeCap captioner is trained over E2 and over its CLIP-FT baseline (issue: E2 vs plain CLIP captions).
#
#   bash examples/real_runs.sh [DATA_DIR] [OUT_DIR]      # defaults: ../shared/data, outputs/real_runs
#
# A killed run resumes where it stopped when the script is started again (--resume_from_checkpoint latest).
set -euo pipefail
cd "$(dirname "$0")/.."
DATA="${1:-../shared/data}"
OUT="${2:-outputs/real_runs}"
MINUTES="${MINUTES:-10}"
mkdir -p "$OUT"
export OMP_NUM_THREADS=1 TOKENIZERS_PARALLELISM=false HF_HUB_OFFLINE=1

COMMON=(--dataset "hm:$DATA/hm" --dataset "myntra:$DATA/myntra" --seed 42 --batch_size 32
        --max_train_minutes "$MINUTES" --checkpoint_every 100 --report_to none --resume_from_checkpoint latest)
# --max_train_minutes alone: pretrain.py runs each cosine schedule over the budget's time (not over a guessed
# number of steps), so every run ends its schedule when its 10 minutes end, at whatever speed this machine gives.
SYNC=(--model syncmask --config syncmask-small)
E2=(--model e2 --config e2-tiny)
FAE=(--model fashionfae --config fashionfae-tiny)
CLIP_FT='{"use_selection_tokens": false, "use_fusion_blocks": false, "use_regional_loss": false, "global_loss_weight": 1.0}'

run() {  # run NAME ARGS...: one pretraining run, log in $OUT/NAME.log
    local name="$1"; shift
    if [[ -f "$OUT/$name/final/eval_results.json" ]]; then echo "$name: done already"; return; fi
    echo "$name: python examples/pretrain.py $* --output_dir $OUT/$name"
    python examples/pretrain.py "$@" "${COMMON[@]}" --output_dir "$OUT/$name" > "$OUT/$name.log" 2>&1
}

caption() {  # caption NAME: the captioner over the encoder of run NAME, evaluated on H&M's held-out products
    local name="$1"
    if [[ -f "$OUT/captioner_$name/caption_results.json" ]]; then echo "captioner_$name: done already"; return; fi
    echo "captioner_$name: python examples/train_captioner.py --model_path $OUT/$name/final ..."
    python examples/train_captioner.py --model_path "$OUT/$name/final" --dataset "hm:$DATA/hm" --seed 42 \
        --epochs 8 --max_length 32 --decoder_width 128 --no_repeat_ngram_size 3 --max_eval_images 300 --output_dir "$OUT/captioner_$name" > "$OUT/captioner_$name.log" 2>&1
}

run syncmask_sync_semihard "${SYNC[@]}" &
run syncmask_random_semihard "${SYNC[@]}" --config_override '{"masking_strategy": "random"}' &
wait
run e2 "${E2[@]}" &
run e2_clip_ft "${E2[@]}" --config_override "$CLIP_FT" &
wait
run fashionfae_aetp_apir "${FAE[@]}" &
run fashionfae_plain_mlm_mim "${FAE[@]}" --config_override '{"aetp": false, "apir": false}' &
wait
# The third SyncMask run goes side by side with SyncMask on the offline MiniLM text tower (pretrained text, vision
# from scratch; ALBEF's 1e-4), so it shares the machine as the first two did.
run syncmask_sync_plain "${SYNC[@]}" --sampler random &
run syncmask_minilm_text "${SYNC[@]}" --text_pretrained minilm --learning_rate 1e-4 &
wait
# FashionFAE's ablation again with the pretrained MiniLM as its fusion BERT (vision from scratch; 1e-4), closer to
# the paper's start from BERT-base.
run fashionfae_minilm_text "${FAE[@]}" --text_pretrained minilm --learning_rate 1e-4 &
run fashionfae_minilm_text_plain "${FAE[@]}" --text_pretrained minilm --learning_rate 1e-4 --config_override '{"aetp": false, "apir": false}' &
wait
caption e2 &
caption e2_clip_ft &
wait

python examples/summarize_runs.py "$OUT"
