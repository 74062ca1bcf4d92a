#!/usr/bin/env bash
# Score a finished Multi30k training run the way every run in RESULTS.md was scored:
#
#   benchmarks/score_run.sh RUN NAME LABEL BASELINE [BASELINE ...]
#
#   RUN       the folder `keras-attn train --out RUN` wrote
#   NAME      names the bundle, exported/NAME (relative to the current folder), and the
#             result files below
#   LABEL     the run's name in the significance table and its saved validation outputs
#   BASELINE  labels of earlier systems whose validation outputs are saved
#             (results/hypotheses/val/); the first is the one p-values are against
#
# In order: export with int8 graphs; choose the beam's length penalty alpha on validation
# (tune_beam.py --write, which also stores it in the bundle); score test2016 greedy and
# beam 5, float32 and int8 (reported, never used to choose); paired bootstrap on
# validation against the baselines. Writes, under benchmarks/results/ (or
# $KERAS_ATTN_RESULTS):
#   multi30k_NAME_history.csv                 the run's history.csv
#   multi30k_NAME_tune_beam.{json,md}         validation BLEU at each alpha
#   evaluate_test2016_NAMErun_beam{1,5}_{fp32,int8}.json
#   significance_NAME_val.{json,md}           and hypotheses/val/LABEL.{greedy,beam5}.txt
# Data: $DATA_DIR (default ../shared/data/multi30k beside the project). Python: $PYTHON
# (default `python`, the active environment's, with keras-attn installed).
set -euo pipefail

if [ $# -lt 4 ]; then
  sed -n '4,11p' "$0" | sed 's/^# \{0,1\}//' >&2
  echo "score_run.sh: expected RUN NAME LABEL BASELINE [BASELINE ...], got $# argument(s)" >&2
  exit 2
fi
run=$1 name=$2 label=$3
shift 3
here=$(cd "$(dirname "$0")" && pwd)
data=${DATA_DIR:-$(dirname "$(dirname "$here")")/shared/data/multi30k}
export KERAS_ATTN_RESULTS=${KERAS_ATTN_RESULTS:-$here/results}  # the Python scripts' results folder too
results=$KERAS_ATTN_RESULTS
python=${PYTHON:-python}
bundle=exported/$name
for path in "$run/history.csv" "$data/val.de.gz" "$data/test_2016_flickr.de.gz"; do
  [ -f "$path" ] || { echo "score_run.sh: no $path" >&2; exit 2; }
done
[ ! -e "$bundle" ] || { echo "score_run.sh: $bundle exists; move it away or choose another NAME" >&2; exit 2; }
baselines=()
for baseline in "$@"; do
  saved=$results/hypotheses/val/${baseline//[ \/]/_}.greedy.txt  # significance.py's hypotheses_path
  [ -f "$saved" ] || { echo "score_run.sh: BASELINE $baseline: no saved outputs $saved" >&2; exit 2; }
  baselines+=(--system "$baseline=saved")
done
keras_attn() { "$python" -m pipelines.cli "$@"; }
test2016() {  # BEAM PRECISION [--int8]: evaluate the bundle on test2016 at the bundle's alpha
  keras_attn evaluate "$bundle" --src "$data/test_2016_flickr.de.gz" --ref "$data/test_2016_flickr.en.gz" \
      --beam "$1" "${@:3}" --json "$results/evaluate_test2016_${name}run_beam$1_$2.json"
}

set -x
keras_attn export "$run" --out "$bundle" --quantize int8
mkdir -p "$results"
cp "$run/history.csv" "$results/multi30k_${name}_history.csv"
"$python" "$here/tune_beam.py" --bundle "$bundle" --data-dir "$data" \
    --name "multi30k_${name}_tune_beam" --write
alpha=$("$python" -c 'import json, sys; print(json.load(open(sys.argv[1]))["alpha"])' "$bundle/config.json")
for beam in 1 5; do
  test2016 "$beam" fp32
  test2016 "$beam" int8 --int8
done
"$python" "$here/significance.py" --split val --data-dir "$data" "${baselines[@]}" \
    --system "$label=$bundle:$alpha" --name "significance_${name}_val"
