#!/usr/bin/env bash
# OpenNMT-py 3.5.1 trained on Multi30k De→En with the keras-attn recipe, for
# benchmarks/opennmt_baseline.py (benchmarks/RESULTS.md, "Against OpenNMT-py"). Needs
# PyTorch (a separate venv, about 3 GB with the CUDA libraries PyPI's Linux wheel brings);
# the tests run this script with stand-ins for pip and OpenNMT-py's programs.
#
#   bash benchmarks/opennmt/run.sh [DATA_DIR] [BUNDLE] [OUT] [MINUTES] [SEED]
#
# DATA_DIR: Multi30k (default ../shared/data/multi30k); BUNDLE: the keras-attn bundle
# whose SentencePiece models it uses (default exported/m30k_bt256head); OUT: default
# runs/opennmt; MINUTES: the training's wall time (default 82, the recipe's sixth run's);
# SEED: OpenNMT-py's random seed (default 0, the configuration's).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
. "$here/../baseline_prologue.sh"
# OpenNMT-py does not require sentencepiece, but its sentencepiece transform imports it
"$out/venv/bin/pip" install -q "opennmt-py==3.5.1" "torch>=2.0.1,<2.3" "numpy<2" "sentencepiece==0.2.3"
{
    sed "s|DATA/|$out/data/|" "$here/multi30k_deen.yaml"
    printf 'save_data: %s\nsrc_vocab: %s\ntgt_vocab: %s\nsave_model: %s\n' \
        "$out" "$out/vocab.src" "$out/vocab.tgt" "$out/model"
    printf 'src_subword_model: %s\ntgt_subword_model: %s\n' "$bundle/src.spm.model" "$bundle/tgt.spm.model"
} > "$out/config.yaml"
"$out/venv/bin/onmt_build_vocab" -config "$out/config.yaml" -n_sample -1
# stopped at the time budget; a checkpoint is saved after each validation (about one per epoch)
timeout "${minutes}m" "$out/venv/bin/onmt_train" -config "$out/config.yaml" -seed "$seed" > "$out/train.log" 2>&1 || [ $? -eq 124 ]
echo "trained: $out/train.log; now: python benchmarks/opennmt_baseline.py --run $out --bundle $bundle"
