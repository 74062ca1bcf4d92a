"""Are two models' BLEU scores different beyond the noise of a 1,000-sentence test set?

    python benchmarks/significance.py --split val \
        --system "float32 run=exported/m30k_fp32:0.4" --system "rerun=exported/m30k_base:0.6" ...

Each `--system LABEL=BUNDLE:ALPHA` translates the split with onnxruntime (float32),
greedy and beam 5 with its length penalty ALPHA (the one `tune_beam.py` chose on
validation). sacreBLEU's paired bootstrap resampling (1,000 resamples, its fixed seed)
then gives every system's mean BLEU with a 95 % confidence interval and, for each
system after the first (the baseline), the p-value of its difference from the
baseline. Writes results/NAME.{json,md}, and every translated system's outputs to
results/hypotheses/SPLIT/LABEL.{greedy,beam5}.txt: `--system LABEL=saved` compares
those saved outputs again, after the bundle that made them is gone (bundles are not
committed; a new machine does not have them). `opennmt_baseline.py` and
`joeynmt_baseline.py` save the other framework's test2016 outputs the same way, under
their results name: `--split test2016 --system joeynmt_baseline=saved`.
"""

from __future__ import annotations

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import common  # noqa: E402
from common import DEFAULT_DATA, write_results  # noqa: E402

SPLITS = {"val": "val", "test2016": "test_2016_flickr"}
SEARCHES = {"greedy": "greedy", "beam 5": "beam5"}  # search -> file suffix


def parse_system(text: str) -> tuple[str, str | None, float | None]:
    """LABEL=BUNDLE:ALPHA, or LABEL=saved (bundle and alpha None)."""
    label, _, rest = text.partition("=")
    if label and rest == "saved":
        return label, None, None
    bundle, _, alpha = rest.rpartition(":")
    if not (label and bundle and alpha):
        raise SystemExit(f"--system {text!r}: expected LABEL=BUNDLE:ALPHA or LABEL=saved")
    return label, bundle, float(alpha)


def hypotheses_path(split: str, label: str, search: str):
    return common.RESULTS / "hypotheses" / split / f"{label.replace(' ', '_').replace('/', '_')}.{SEARCHES[search]}.txt"


def save_hypotheses(split: str, label: str, search: str, hypotheses: list[str]) -> None:
    """Write one system's outputs where `--system LABEL=saved` reads them."""
    path = hypotheses_path(split, label, search)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(f"{h}\n" for h in hypotheses), encoding="utf-8")


def system_outputs(split, label, bundle, alpha, sources) -> dict[str, list[str]]:
    """The system's greedy and beam-5 outputs: translated (and saved), or read back."""
    if bundle is None:
        outputs = {}
        for search in SEARCHES:
            path = hypotheses_path(split, label, search)
            if not path.is_file():
                raise SystemExit(f"--system {label}=saved: no saved outputs {path}")
            outputs[search] = path.read_text(encoding="utf-8").split("\n")[:-1]
        return outputs
    from keras_attn.runtime import Translator

    translator = Translator.load(bundle)
    outputs = {"greedy": translator.translate(sources), "beam 5": translator.translate(sources, beam=5, alpha=alpha)}
    for search, hyps in outputs.items():
        save_hypotheses(split, label, search, hyps)
    return outputs


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
    parser.add_argument("--system", action="append", required=True, help="LABEL=BUNDLE:ALPHA or LABEL=saved (first = baseline)")
    parser.add_argument("--split", choices=sorted(SPLITS), default="val")
    parser.add_argument("--data-dir", default=str(DEFAULT_DATA))
    parser.add_argument("--name", default=None, help="results file name (default significance_SPLIT)")
    args = parser.parse_args()
    systems = [parse_system(s) for s in args.system]

    from pipelines.corpus import read_lines

    prefix = os.path.join(args.data_dir, SPLITS[args.split])
    sources, refs = read_lines(f"{prefix}.de.gz"), read_lines(f"{prefix}.en.gz")
    outputs = {search: [] for search in SEARCHES}
    for label, bundle, alpha in systems:
        for search, hyps in system_outputs(args.split, label, bundle, alpha, sources).items():
            if len(hyps) != len(refs):
                raise SystemExit(f"{label}: {len(hyps)} {search} outputs for {len(refs)} references")
            outputs[search].append((label, hyps))
        print(f"{args.split}: {label} ({'saved outputs' if bundle is None else 'translated'})", flush=True)
    rows = [{"search": search, **row} for search, named in outputs.items() for row in paired_bootstrap(named, refs)]
    write_results(args.name or f"significance_{args.split}", rows, {
        "set": f"Multi30k {args.split} ({len(sources):,} sentences)",
        "systems": "; ".join(f"{label} = {bundle}, beam alpha {alpha}" if bundle else f"{label} = saved outputs"
                             for label, bundle, alpha in systems),
        "test": "sacreBLEU paired bootstrap resampling, 1,000 resamples, seed 12345 (SACREBLEU_SEED)"})


if __name__ == "__main__":
    main()
