# Sourced by benchmarks/{joeynmt,opennmt}/run.sh after they set `here` (their folder, whose
# name is OUT's default), with their five arguments:
#   DATA_DIR BUNDLE OUT MINUTES SEED   (defaults: ../shared/data/multi30k,
#   exported/m30k_bt256head, runs/<framework>, 82, 0)
# It sets data, bundle, out, minutes and seed, makes OUT's venv (once) and writes
# Multi30k's gzip files to OUT/data as the plain text both frameworks read.
data=$(realpath "${1:-../shared/data/multi30k}")
bundle=$(realpath "${2:-exported/m30k_bt256head}")
out=$(realpath -m "${3:-runs/$(basename "$here")}")
minutes=${4:-82}
seed=${5:-0}
mkdir -p "$out/data"
[ -x "$out/venv/bin/pip" ] || python3 -m venv "$out/venv"
for split in train val test_2016_flickr; do
    for lang in de en; do zcat "$data/$split.$lang.gz" > "$out/data/$split.$lang"; done
done
