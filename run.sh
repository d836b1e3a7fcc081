#!/usr/bin/env bash
# A smoke test of the whole flow on the built-in sample: ./run.sh [OUT_DIR]   (default runs/sample)
# Sets up .venv, then annotates the nine sample photos shipped in facekp/sample, writes the
# TFRecords, trains facekp/configs/tiny.py (a few CPU steps), evaluates, draws the pictures and exports.
# The model it trains only proves that every stage works; a real one: the README's "From a folder
# of photos to an exported model" (facekp/configs/few_faces.py on make_tfrecords output).
# A second run reuses each step's output while its inputs are unchanged.
set -euo pipefail
cd "$(dirname "$0")"
source tools/setup_env.sh
out=${1:-runs/sample}

# True when $1 exists and none of the files after it is newer.
up_to_date() {
  local target=$1
  shift
  [ -e "$target" ] && [ -z "$(find "$@" -newer "$target" -print -quit)" ]
}

if up_to_date "$out/data/dataset_info.json" facekp/sample; then
  echo "[1/3] dataset: $out/data is up to date"
else
  echo "[1/3] dataset: MediaPipe Face Mesh on facekp/sample -> $out/data"
  python -m tools.make_tfrecords --images=facekp/sample --align=128 --out="$out/data" \
      --split=0.6,0.2,0.2
fi
if up_to_date "$out/tiny/model.keras" "$out/data/dataset_info.json" facekp/configs/tiny.py \
    facekp/configs/default.py facekp/train/default_config.py; then
  echo "[2/3] training: $out/tiny/model.keras is up to date"
else
  echo "[2/3] training facekp/configs/tiny.py (evaluation runs at the end of training)"
  python -m facekp.main --config=tiny --workdir="$out/tiny" \
      --config.data_dir="$out/data"
fi
if up_to_date "$out/tiny/export/export_report.json" "$out/tiny/model.keras"; then
  echo "[3/3] export: $out/tiny/export is up to date"
else
  echo "[3/3] export: SavedModel and TFLite, each checked against the Keras model"
  python -m facekp.serve.export --workdir="$out/tiny"
fi

cat <<EOT

Done: every stage works. The model in $out/tiny is a smoke test (9 photos, a few CPU steps,
no better than the average face); do not use it on your own photos.
  metrics and pictures: $out/tiny/eval/
  model:                $out/tiny/model.keras, $out/tiny/export/ (SavedModel, TFLite)
A real model: README.md, "From a folder of photos to an exported model", e.g.
  python -m tools.make_tfrecords --images=YOUR_PHOTOS --align=128 --out=data/mine
  python -m facekp.main --config=few_faces --workdir=runs/mine --config.data_dir=data/mine
EOT
