#!/usr/bin/env bash
# Downloads and unpacks the TAP-Vid evaluation sets DAVIS and RGB-Stacking from the public TAP-Net bucket.
#
#   bash scripts/download_tapvid.sh [TARGET_DIR]      # default: ./tapvid
#
# Gives TARGET_DIR/tapvid_davis/tapvid_davis.pkl and TARGET_DIR/tapvid_rgb_stacking/tapvid_rgb_stacking.pkl.
#
# TAP-Vid Kinetics is not downloadable as one file: its annotations are at
#   https://storage.googleapis.com/dm-tapnet/tapvid_kinetics.zip
# but the videos must be fetched from YouTube yourself (the Kinetics-700-2020 validation clips) and then
# combined with the annotations by the official TAP-Vid script (tapnet/tapvid/generate_tapvid.py, see the
# TAP-Vid README in google-deepmind/tapnet). Not automated here.
set -euo pipefail

TARGET_DIR="${1:-tapvid}"
BASE_URL="https://storage.googleapis.com/dm-tapnet"
mkdir -p "${TARGET_DIR}"

for name in tapvid_davis tapvid_rgb_stacking; do
  if [[ -d "${TARGET_DIR}/${name}" ]]; then
    echo "have ${TARGET_DIR}/${name}"
    continue
  fi
  echo "downloading ${name}.zip"
  if command -v curl >/dev/null; then
    curl --fail --location --output "${TARGET_DIR}/${name}.zip.part" "${BASE_URL}/${name}.zip"
  else
    wget --output-document "${TARGET_DIR}/${name}.zip.part" "${BASE_URL}/${name}.zip"
  fi
  mv "${TARGET_DIR}/${name}.zip.part" "${TARGET_DIR}/${name}.zip"
  unzip -q -o "${TARGET_DIR}/${name}.zip" -d "${TARGET_DIR}"
  rm "${TARGET_DIR}/${name}.zip"
done
echo "TAP-Vid data in ${TARGET_DIR}"
