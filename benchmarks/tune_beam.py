"""Pick the beam length-penalty alpha on the *validation* set (never on test).

    python benchmarks/tune_beam.py --bundle exported/multi30k_deen [--data-dir DIR] [--beam 5] \
        [--name tune_beam]      # results/NAME.{json,md}
"""

from __future__ import annotations

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from common import DEFAULT_DATA, write_results  # noqa: E402


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bundle", required=True)
    parser.add_argument("--data-dir", default=str(DEFAULT_DATA))
    parser.add_argument("--beam", type=int, default=5)
    parser.add_argument("--alphas", type=float, nargs="+", default=[0.0, 0.4, 0.6, 0.8, 1.0, 1.2])
    parser.add_argument("--name", default="tune_beam", help="results file name (results/NAME.json, .md)")
    args = parser.parse_args()

    import sacrebleu

    from keras_attn.runtime import Translator
    from pipelines.corpus import read_lines

    sources = read_lines(os.path.join(args.data_dir, "val.de.gz"))
    refs = read_lines(os.path.join(args.data_dir, "val.en.gz"))
    translator = Translator.load(args.bundle)
    rows = [{"search": "greedy", "alpha": "-",
             "val BLEU": round(sacrebleu.corpus_bleu(translator.translate(sources), [refs]).score, 2)}]
    for alpha in args.alphas:
        hyps = translator.translate(sources, beam=args.beam, alpha=alpha)
        rows.append({"search": f"beam {args.beam}", "alpha": alpha,
                     "val BLEU": round(sacrebleu.corpus_bleu(hyps, [refs]).score, 2)})
        print(rows[-1], flush=True)
    best = max(rows[1:], key=lambda r: r["val BLEU"])
    write_results(args.name, rows, {"chosen alpha": best["alpha"], "set": f"Multi30k val ({len(sources):,} sentences)"})


if __name__ == "__main__":
    main()
