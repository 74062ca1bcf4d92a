"""One table of every Multi30k recipe run and experiment, from the result files the
runs left under `benchmarks/results/` (nothing is re-run):

    python benchmarks/experiments.py            # results/experiments.{json,md}

Per run: the validation BLEU that chose it (greedy, and beam 5 at the alpha that
`tune_beam.py` picked on validation), the last epoch's validation loss and token
accuracy, and test2016 BLEU (reported, never used to choose) in float32 and int8.
A run whose files are missing is listed with empty cells, not skipped.
"""

from __future__ import annotations

import csv
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import RESULTS, write_results  # noqa: E402

# (label, what differs from the float32 recipe run, tune_beam name, evaluate prefix, last history csv)
RUNS = [
    ("bf16 run", "mixed bfloat16, 21 + 5 epochs, older code (2026-11-25)",
     "multi30k_deen_tune_beam", "evaluate_test2016_", "multi30k_deen_anneal_history.csv"),
    ("float32 run", "the recipe: dropout 0.3, label smoothing 0.1, 2,048-token batches, 25 + 5 epochs",
     "multi30k_fp32_tune_beam", "evaluate_test2016_fp32run_", "multi30k_fp32_anneal_history.csv"),
    ("dropout 0.4", "both stages", "multi30k_do4_tune_beam", "evaluate_test2016_do4run_",
     "multi30k_fp32_dropout0.4_anneal_history.csv"),
    ("subword regularization", "alpha 0.3, both stages, 11 + 3 epochs", "multi30k_sr_tune_beam",
     "evaluate_test2016_sr_", "multi30k_sr_anneal_history.csv"),
    ("stage 2 rerun", "float32 run's stage 1, then the same anneal on the current pipeline (whole-corpus "
     "and batch shuffle)", "multi30k_base_tune_beam", "evaluate_test2016_baserun_",
     "multi30k_fp32_base_history.csv"),
    ("stage 2: 10 epochs", "float32 run's stage 1, then the anneal over 10 epochs instead of 5",
     "multi30k_anneal10_tune_beam", "evaluate_test2016_anneal10run_", "multi30k_fp32_anneal10_history.csv"),
    ("stage 2: dropout 0.2", "float32 run's stage 1, then the anneal with dropout 0.2",
     "multi30k_do2_tune_beam", "evaluate_test2016_do2run_", "multi30k_fp32_do2_history.csv"),
    ("dropout 0.2", "both stages, current pipeline (whole-corpus and batch shuffle), 25 + 5 epochs",
     "multi30k_d2_tune_beam", "evaluate_test2016_d2run_", "multi30k_d2_anneal_history.csv"),
    ("word dropout 0.1", "whole-token dropout 0.1 on source and target embeddings (with dropout 0.3), both "
     "stages, current pipeline, 25 + 5 epochs", "multi30k_wd1_tune_beam", "evaluate_test2016_wd1run_",
     "multi30k_wd1_anneal_history.csv"),
    ("target vocabulary 4k", "SentencePiece target vocabulary 4,000 instead of 8,000 (source 8,000), both stages, "
     "25 + 5 epochs, AVX-512 VM (val loss not comparable: other target pieces)", "multi30k_v4k_tune_beam",
     "evaluate_test2016_v4krun_", "multi30k_v4k_anneal_history.csv"),
    ("target vocabulary 4k, bf16", "the same in mixed bfloat16 (bf16 hardware)", "multi30k_v4k_bf16_tune_beam",
     "evaluate_test2016_v4k_bf16run_", "multi30k_v4k_bf16_anneal_history.csv"),
    ("target vocabulary 4k, bf16, float32 generator bias", "the bf16 run again with the `Generator` layer "
     "(logits and bias add in float32; the bf16 bias gradient summed in bf16 before)",
     "multi30k_v4k_bf16fix_tune_beam", "evaluate_test2016_v4k_bf16fixrun_", "multi30k_v4k_bf16fix_anneal_history.csv"),
    ("target vocabulary 4k, 1,024-token batches", "the 4k float32 run with `--batch-tokens 1024` in both stages "
     "(twice the updates per epoch)", "multi30k_v4k_bt1k_tune_beam", "evaluate_test2016_v4k_bt1krun_",
     "multi30k_v4k_bt1k_anneal_history.csv"),
    ("512-token batches", "the 1,024-token run with `--batch-tokens 512` in both stages (the recipe "
     "from 2026-11-27 morning to evening)", "multi30k_bt512_tune_beam", "evaluate_test2016_bt512run_",
     "multi30k_bt512_anneal_history.csv"),
    ("label smoothing 0.2", "the 1,024-token run with `--label-smoothing 0.2` in both stages, stage 2 on 512-token "
     "batches by accident (val loss not comparable: it includes the smoothing)", "multi30k_ls02_tune_beam", "evaluate_test2016_ls02run_",
     "multi30k_ls02_anneal_history.csv"),
    ("512-token batches, label smoothing 0.2", "the 512-token recipe with `--label-smoothing 0.2` in both stages "
     "(val loss not comparable: it includes the smoothing)", "multi30k_bt512ls02_tune_beam",
     "evaluate_test2016_bt512ls02run_", "multi30k_bt512ls02_anneal_history.csv"),
    ("512-token batches, EMA 0.999", "the 512-token recipe with `--ema 0.999` in both stages (validation, kept "
     "checkpoint and export are the weights' moving average)", "multi30k_bt512ema_tune_beam",
     "evaluate_test2016_bt512emarun_", "multi30k_bt512ema_anneal_history.csv"),
    ("512-token batches, EMA 0.999, stage 1 only", "the EMA run's stage-1 model (best validation loss, epoch 17), "
     "exported without stage 2", "multi30k_bt512emas1_tune_beam", "evaluate_test2016_bt512emas1run_",
     "multi30k_bt512ema_history.csv"),
    ("1,024-token batches, stage 1 only", "the 1,024-token run's stage-1 model (best validation loss), exported "
     "without stage 2", "multi30k_v4k_bt1ks1_tune_beam", "evaluate_test2016_v4k_bt1ks1run_",
     "multi30k_v4k_bt1k_history.csv"),
    ("512-token batches, stage 1 only", "the 512-token recipe's stage-1 model (best validation loss, epoch 21), "
     "exported without stage 2", "multi30k_bt512s1_tune_beam", "evaluate_test2016_bt512s1run_",
     "multi30k_bt512_history.csv"),
    ("512-token batches, Adam 5e-4, stage 1 only", "the 512-token recipe's stage 1 with `--lr 0.0005` (1e-3 in the "
     "recipe), no stage 2; compare with the recipe's stage 1 alone", "multi30k_lr5e4_tune_beam",
     "evaluate_test2016_lr5e4run_", "multi30k_lr5e4_history.csv"),
    ("256-token batches, stage 1 only (the recipe)", "the 512-token recipe's stage 1 with `--batch-tokens 256`, "
     "no stage 2; compare with the 512-token stage 1 alone", "multi30k_bt256_tune_beam",
     "evaluate_test2016_bt256run_", "multi30k_bt256_history.csv"),
    ("256-token batches, stage 1 only, rerun", "the recipe's command again with `FusedAdam`, same seed: "
     "run-to-run variance", "multi30k_bt256f_tune_beam",
     "evaluate_test2016_bt256frun_", "multi30k_bt256f_history.csv"),
    ("512-token batches, stage 1 only, rerun", "the 512-token stage 1 again with `FusedAdam`, same seed, "
     "not interrupted: run-to-run variance", "multi30k_bt512f_tune_beam",
     "evaluate_test2016_bt512frun_", "multi30k_bt512f_history.csv"),
    ("256-token batches, stage 1 only, Keras Adam rerun", "the recipe's command a third time, with Keras's `Adam` "
     "(as the first run), same seed, not interrupted: run-to-run variance", "multi30k_bt256k_tune_beam",
     "evaluate_test2016_bt256krun_", "multi30k_bt256k_history.csv"),
    ("256-token batches, stage 1 only, fourth run", "the recipe's command a fourth time, `FusedAdam`, same seed, "
     "every dropout seeded from `--seed` (1de3f71); killed after epoch 17 and resumed with a fresh draw "
     "(before exact resume): run-to-run variance", "multi30k_bt256s_tune_beam",
     "evaluate_test2016_bt256srun_", "multi30k_bt256s_history.csv"),
    ("256-token batches, stage 1 only, seed 1", "the recipe's command with `--seed 1` (every other run: seed 0), "
     "`FusedAdam`, not interrupted: run-to-run variance across seeds", "multi30k_bt256seed1_tune_beam",
     "evaluate_test2016_bt256seed1run_", "multi30k_bt256seed1_history.csv"),
    ("256-token batches, stage 1 only, sixth run", "the recipe's command from a fresh clone of b317a7c (the "
     "code of 2026-11-27 evening), seed 0, not interrupted: run-to-run variance on the code users get; "
     "alpha chosen by `keras-attn tune-alpha --write`", "multi30k_bt256head_tune_beam",
     "evaluate_test2016_bt256headrun_", "multi30k_bt256head_history.csv"),
    ("256-token batches, stage 1 only, seventh run", "the recipe's command on the code of 2026-11-28 (68ecc24), "
     "seed 0, not interrupted, on another CPU (the Intel VM of 2026-12-05, with AMX): run-to-run variance "
     "across machines", "multi30k_bt256xeon_tune_beam", "evaluate_test2016_bt256xeonrun_",
     "multi30k_bt256xeon_history.csv"),
    ("256-token batches, stage 1 only, eighth run", "the seventh run again on the code of 2026-12-06 (06d2cfe, "
     "after the refactors of train, export, search and the backward loop), seed 0, same VM class: the same "
     "losses and validation BLEU at every epoch", "multi30k_bt256e8_tune_beam", "evaluate_test2016_bt256e8run_",
     "multi30k_bt256e8_history.csv"),
    ("1,024-token batches, Adam 2e-3, stage 1 only", "the recipe's command with `--batch-tokens 1024 --lr 0.002`, "
     "no stage 2, on the Intel VM (2026-12-05); compare with the 1,024-token stage 1 alone (Adam 1e-3, AMD VM)",
     "multi30k_bt1k_lr2_xeon_tune_beam", "evaluate_test2016_bt1klr2xeonrun_", "multi30k_bt1k_lr2_xeon_history.csv"),
    ("1,024-token batches, 35 epochs, stage 1 only", "the recipe's command with `--batch-tokens 1024 --epochs 35`, "
     "Adam 1e-3, no stage 2, on the Intel VM (2026-12-06; killed after epoch 18 and resumed from its backup); compare with "
     "the 1,024-token stage 1 alone (25 epochs, AMD VM)",
     "multi30k_bt1k_e35_xeon_tune_beam", "evaluate_test2016_bt1ke35xeonrun_", "multi30k_bt1k_e35_xeon_history.csv"),
]


def load_json(name: str) -> dict | None:
    path = RESULTS / name
    return json.loads(path.read_text(encoding="utf-8")) if path.exists() else None


def validation(tune_name: str) -> dict:
    tune = load_json(f"{tune_name}.json")
    if tune is None:
        return {}
    alpha = tune["notes"]["chosen alpha"]
    greedy = next(r["val BLEU"] for r in tune["rows"] if r["search"] == "greedy")
    beam = next(r["val BLEU"] for r in tune["rows"] if r["search"] != "greedy" and r["alpha"] == alpha)
    return {"val greedy": f"{greedy:.2f}", "val beam 5": f"{beam:.2f}", "alpha": alpha}


def last_epoch(history: str) -> dict:
    path = RESULTS / history
    if not path.exists():
        return {}
    with path.open(encoding="utf-8") as f:
        last = list(csv.DictReader(f))[-1]
    return {"val loss": f"{float(last['val_loss']):.4f}", "val acc": f"{float(last['val_token_accuracy']):.4f}"}


def test2016(prefix: str) -> dict:
    cells = {}
    for beam, search in ((1, "greedy"), (5, "beam 5")):
        for precision in ("fp32", "int8"):
            report = load_json(f"{prefix}beam{beam}_{precision}.json")
            cells[f"test {search} {precision}"] = f"{report['bleu']:.2f}" if report else ""
    return cells


def main():
    rows = [{"run": label, **validation(tune), **last_epoch(history), **test2016(prefix), "differs by": what}
            for label, what, tune, prefix, history in RUNS]
    write_results("experiments", rows, {
        "chosen by": "validation BLEU only (val greedy, val beam 5 at the alpha tune_beam.py chose on val)",
        "val loss / val acc": "last epoch of the run's final stage (label-smoothed loss, except with smoothing 0)",
        "test": "test2016 sacreBLEU, reported, never used to choose"})


if __name__ == "__main__":
    main()
