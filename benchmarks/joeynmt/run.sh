#!/usr/bin/env bash
# JoeyNMT 2.3.0 trained on Multi30k De→En with the keras-attn recipe, for
# benchmarks/joeynmt_baseline.py (benchmarks/RESULTS.md, "Against JoeyNMT, same recipe").
# Needs PyTorch (a separate venv, about 3 GB with the CUDA libraries PyPI's Linux wheel
# brings); the tests run this script with stand-ins for pip and JoeyNMT.
#
#   bash benchmarks/joeynmt/run.sh [DATA_DIR] [BUNDLE] [OUT] [MINUTES] [SEED]
#
# DATA_DIR: Multi30k (default ../shared/data/multi30k); BUNDLE: the keras-attn bundle
# whose SentencePiece models it uses (default exported/m30k_bt256head); OUT: default
# runs/joeynmt; MINUTES: the training's wall time (default 82, the recipe's sixth run's);
# SEED: JoeyNMT's random seed (default 0).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
. "$here/../baseline_prologue.sh"
# JoeyNMT 2.3.0 imports importlib_metadata without requiring it, and calls
# SentencePieceProcessor.SetVocabulary, which sentencepiece 0.2.3 (OpenNMT-py's) no longer has
"$out/venv/bin/pip" install -q "joeynmt==2.3.0" "torch>=2.0.1,<2.3" "numpy<2" importlib-metadata "sentencepiece==0.2.0"
sed -e "s|DATA/|$out/data/|" -e "s|BUNDLE/|$bundle/|" -e "s|OUT/|$out/|" \
    -e "s|^random_seed: .*|random_seed: $seed|" "$here/multi30k_deen.yaml" > "$out/config.yaml"
# stopped at the time budget; the best checkpoint (validation perplexity) is kept as best.ckpt
timeout "${minutes}m" "$out/venv/bin/python" -m joeynmt train "$out/config.yaml" --skip-test \
    > "$out/train.log" 2>&1 || [ $? -eq 124 ]
echo "trained: $out/model/train.log; now: python benchmarks/joeynmt_baseline.py --run $out --bundle $bundle"
