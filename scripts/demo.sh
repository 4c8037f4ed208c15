#!/usr/bin/env bash
# The demo: make the embedded synthetic video dataset, prepare it into records, pretrain VCLR
# on it (configs/demo.py) and evaluate the encoder (linear SVM and retrieval on frozen
# features). A few minutes on 2 CPU cores.
# Rerunning continues where it stopped: preparation keeps finished shards, training resumes.
set -euo pipefail
cd "$(dirname "$0")/.."
DATA=${DATA:-data}
RUN=${RUN:-runs/demo}
export TF_CPP_MIN_LOG_LEVEL=${TF_CPP_MIN_LOG_LEVEL:-2}

# The demo's videos (docs/data.md, section 5): 12 classes of 50 videos, half of each class held
# out for the evaluation (300 test videos: one video is a third of a point).
VIDEOS_PER_CLASS=50
TEST_FRACTION=0.5
VARIANT=wide_stage
# The generator writes generator.json last: without it, or with other settings, the folder is
# unfinished or holds an earlier dataset (records made from it would be kept by a rerun).
SETTINGS="\"videos_per_class\": $VIDEOS_PER_CLASS, \"test_fraction\": $TEST_FRACTION, \"variant\": \"$VARIANT\""
if ! grep -qsF "$SETTINGS" "$DATA/synthetic/generator.json"; then
  if [ -e "$DATA/synthetic" ] || [ -e "$DATA/synthetic_records" ]; then
    echo "$DATA/synthetic is unfinished or holds an earlier synthetic dataset: making it again."
    rm -rf "$DATA/synthetic" "$DATA/synthetic_records"
  fi
  python -m input_pipeline.synthetic --out="$DATA/synthetic" --variant=$VARIANT \
      --videos_per_class=$VIDEOS_PER_CLASS --test_fraction=$TEST_FRACTION
fi
python -m input_pipeline.prepare --source=list --root="$DATA/synthetic" --splits=train,test \
    --out="$DATA/synthetic_records"
python -m vclr_jax.main --config=configs/demo.py --workdir="$RUN" \
    --config.data.records_dir="$DATA/synthetic_records"
# Frozen features of the pretrained encoder: linear SVM, then retrieval (with its picture).
for protocol in linear retrieval; do
  python -m vclr_jax.evaluate --config=configs/eval_synthetic.py --workdir="$RUN" \
      --eval=$protocol --config.data.records_dir="$DATA/synthetic_records"
done
echo "Results: $RUN/eval/results.md, retrieval picture: $RUN/eval/retrieval_test_step*.png"
echo "Training curves: $RUN/curves.png"
