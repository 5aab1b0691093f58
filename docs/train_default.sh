#!/usr/bin/env bash
# Reproduces the embedded default model (see docs/MODEL_CARD.md). Run from the repository root;
# SHARED points at the folder holding data/nuclei (gbm40 and monuseg_train).
set -euo pipefail
SHARED=${SHARED:-../shared}
napari-hoverfast -v train "$SHARED/data/nuclei/gbm40" "$SHARED/data/nuclei/monuseg_train" \
  -o runs/default.pth --depth 3 --wf 4 --steps 20000 --batch-size 8 --patch-size 256 --lr 1e-3 \
  --eval-every 100 --seed 0 --precision auto --max-minutes 100 \
  --val gbm_03 gbm_17 gbm_31 TCGA-E2-A1B5-01Z-00-DX1 \
  --exclude gbm_06 gbm_13 gbm_20 gbm_27 gbm_34 gbm_40 \
            TCGA-21-5786-01Z-00-DX1 TCGA-AR-A1AS-01Z-00-DX1 TCGA-B0-5711-01Z-00-DX1
