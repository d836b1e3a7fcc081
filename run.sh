#!/usr/bin/env bash
# The main job on the built-in sample: ./run.sh [OUT_DIR]   (default runs/sample)
# Sets up .venv, then annotates the sample photos shipped in facekp/sample (FFHQ-style crops),
# writes the TFRecords, trains configs/tiny.py, evaluates, draws the pictures and exports.
# Each step reuses what an earlier run finished, so a second run is quick.
set -euo pipefail
cd "$(dirname "$0")"
source tools/setup_env.sh
out=${1:-runs/sample}

echo "[1/3] dataset: MediaPipe Face Mesh on facekp/sample -> $out/data"
python -m tools.make_tfrecords --images=facekp/sample --align=128 --out="$out/data" \
    --split=0.6,0.2,0.2
echo "[2/3] training configs/tiny.py (evaluation runs at the end of training)"
python -m facekp.main --config=configs/tiny.py --workdir="$out/tiny" \
    --config.data_dir="$out/data"
echo "[3/3] export: SavedModel and TFLite, each checked against the Keras model"
python -m facekp.export --workdir="$out/tiny"

cat <<EOT

Done.
  metrics:  $out/tiny/metrics.json
  pictures: $out/tiny/pictures/
  model:    $out/tiny/model.keras, $out/tiny/export/ (SavedModel, TFLite)
Predict on your own photos:
  .venv/bin/python -m facekp.predict --model=$out/tiny --images=PHOTO_OR_DIR --out=$out/predictions
EOT
