"""Pick the beam length-penalty alpha on the *validation* set (never on test).

    python benchmarks/tune_beam.py --bundle exported/multi30k_deen [--data-dir DIR] [--beam 5] \
        [--name tune_beam] [--write]     # results/NAME.{json,md}

`--write` also makes the chosen alpha the bundle's default, as `keras-attn tune-alpha
--write` does, so that `evaluate` and `translate` need no `--alpha`.
"""

from __future__ import annotations

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from common import DEFAULT_DATA, write_results  # noqa: E402

from pipelines.evaluate import (  # noqa: E402
    ALPHAS,
    best_row,
    check_tuning_beam,
    read_test_set,
    score,
    tune_alpha,
    write_bundle_alpha,
)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bundle", required=True)
    parser.add_argument("--data-dir", default=str(DEFAULT_DATA))
    parser.add_argument("--beam", type=int, default=5)
    parser.add_argument("--alphas", type=float, nargs="+", default=list(ALPHAS))
    parser.add_argument("--name", default="tune_beam", help="results file name (results/NAME.json, .md)")
    parser.add_argument("--write", action="store_true", help="make the chosen alpha the bundle's default")
    args = parser.parse_args()
    try:
        check_tuning_beam(args.beam)
    except ValueError as error:
        parser.error(str(error))

    from keras_attn.runtime import Translator

    val_src = os.path.join(args.data_dir, "val.de.gz")
    sources, refs = read_test_set(val_src, os.path.join(args.data_dir, "val.en.gz"))
    translator = Translator.load(args.bundle)
    beams = tune_alpha(translator, sources, refs, args.beam, args.alphas, progress=lambda row: print(row, flush=True))
    greedy = {"search": "greedy", "alpha": "-", "val BLEU": score(translator.translate(sources), refs)["bleu"]}
    rows = [greedy] + [{"search": f"beam {args.beam}", "alpha": row["alpha"], "val BLEU": row["bleu"]} for row in beams]
    best = best_row(beams)
    write_results(args.name, rows, {"chosen alpha": best["alpha"], "set": f"Multi30k val ({len(sources):,} sentences)"})
    if args.write:
        path = write_bundle_alpha(args.bundle, best, val_src, args.beam)
        print(f"the bundle's default alpha is now {best['alpha']} ({path})")


if __name__ == "__main__":
    main()
