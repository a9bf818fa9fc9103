#!/usr/bin/env bash
# Downloads the released TAPIR checkpoints (official .npy format) from the public TAP-Net bucket.
#
#   bash scripts/download_checkpoints.sh [TARGET_DIR]      # default: ./checkpoints
#
# preset             checkpoint
# tapir              tapir_checkpoint_panning.npy
# bootstapir         bootstapir_checkpoint_v2.npy
# causal_tapir       causal_tapir_checkpoint.npy         (--online)
# causal_bootstapir  causal_bootstapir_checkpoint.npy    (--online)
# TAP-Net baseline   tapnet_checkpoint.npy               (bucket name: checkpoint.npy; tapir.models.tapnet)
set -euo pipefail

TARGET_DIR="${1:-checkpoints}"
BASE_URL="https://storage.googleapis.com/dm-tapnet"
FILES=(
  tapir_checkpoint_panning.npy
  bootstapir_checkpoint_v2.npy
  causal_tapir_checkpoint.npy
  causal_bootstapir_checkpoint.npy
  checkpoint.npy:tapnet_checkpoint.npy  # remote:local, the TAP-Net baseline
)

mkdir -p "${TARGET_DIR}"
for entry in "${FILES[@]}"; do
  remote="${entry%%:*}"
  name="${entry#*:}"
  if [[ -s "${TARGET_DIR}/${name}" ]]; then
    echo "have ${TARGET_DIR}/${name}"
    continue
  fi
  echo "downloading ${name}"
  # Download to a temporary name so an interrupted transfer never looks like a checkpoint.
  if command -v curl >/dev/null; then
    curl --fail --location --output "${TARGET_DIR}/${name}.part" "${BASE_URL}/${remote}"
  else
    wget --output-document "${TARGET_DIR}/${name}.part" "${BASE_URL}/${remote}"
  fi
  mv "${TARGET_DIR}/${name}.part" "${TARGET_DIR}/${name}"
done
echo "checkpoints in ${TARGET_DIR}"
