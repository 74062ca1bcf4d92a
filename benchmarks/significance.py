"""Are two models' BLEU scores different beyond the noise of a 1,000-sentence test set?

    python benchmarks/significance.py --split val \
        --system "float32 run=exported/m30k_fp32:0.4" --system "rerun=exported/m30k_base:0.6" ...

Each `--system LABEL=BUNDLE:ALPHA` translates the split with onnxruntime (float32),
greedy and beam 5 with its length penalty ALPHA (the one `tune_beam.py` chose on
validation). sacreBLEU's paired bootstrap resampling (1,000 resamples, its fixed seed)
then gives every system's mean BLEU with a 95 % confidence interval and, for each
system after the first (the baseline), the p-value of its difference from the
baseline. Writes results/NAME.{json,md}.
"""

from __future__ import annotations

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from common import DEFAULT_DATA, write_results  # noqa: E402

SPLITS = {"val": "val", "test2016": "test_2016_flickr"}


def parse_system(text: str) -> tuple[str, str, float]:
    label, _, rest = text.partition("=")
    bundle, _, alpha = rest.rpartition(":")
    if not (label and bundle and alpha):
        raise SystemExit(f"--system {text!r}: expected LABEL=BUNDLE:ALPHA")
    return label, bundle, float(alpha)


def paired_bootstrap(named_hyps: list[tuple[str, list[str]]], refs: list[str]) -> list[dict]:
    from sacrebleu.metrics import BLEU
    from sacrebleu.significance import PairedTest

    _, scores = PairedTest(named_hyps, {"BLEU": BLEU()}, [refs], test_type="bs", n_samples=1000)()
    rows = []
    for name, result in zip(scores["System"], scores["BLEU"], strict=True):
        rows.append({"system": name, "BLEU": f"{result.score:.2f}",
                     "mean ± 95 % CI": f"{result.mean:.2f} ± {result.ci:.2f}",
                     "p vs first": "" if result.p_value is None else f"{result.p_value:.4f}"})
    return rows


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--system", action="append", required=True, help="LABEL=BUNDLE:ALPHA (first = baseline)")
    parser.add_argument("--split", choices=sorted(SPLITS), default="val")
    parser.add_argument("--data-dir", default=str(DEFAULT_DATA))
    parser.add_argument("--name", default=None, help="results file name (default significance_SPLIT)")
    args = parser.parse_args()
    systems = [parse_system(s) for s in args.system]

    from keras_attn.runtime import Translator
    from pipelines.corpus import read_lines

    prefix = os.path.join(args.data_dir, SPLITS[args.split])
    sources, refs = read_lines(f"{prefix}.de.gz"), read_lines(f"{prefix}.en.gz")
    outputs = {"greedy": [], "beam 5": []}
    for label, bundle, alpha in systems:
        translator = Translator.load(bundle)
        outputs["greedy"].append((label, translator.translate(sources)))
        outputs["beam 5"].append((label, translator.translate(sources, beam=5, alpha=alpha)))
        print(f"translated {args.split} with {label}", flush=True)
    rows = [{"search": search, **row} for search, named in outputs.items() for row in paired_bootstrap(named, refs)]
    write_results(args.name or f"significance_{args.split}", rows, {
        "set": f"Multi30k {args.split} ({len(sources):,} sentences)",
        "systems": "; ".join(f"{label} = {bundle}, beam alpha {alpha}" for label, bundle, alpha in systems),
        "test": "sacreBLEU paired bootstrap resampling, 1,000 resamples, seed 12345 (SACREBLEU_SEED)"})


if __name__ == "__main__":
    main()
