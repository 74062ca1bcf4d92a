"""A/B speed of export bundles of the same model: interleaved passes on test2016.

    python benchmarks/compare_bundles.py --bundle A=exported/old --bundle B=exported/new \
        [--beam 1] [--passes 8] [--latency-sentences 400] [--name compare_bundles]

For graph changes whose effect (a few percent) is smaller than this VM's drift
between minutes: every pass runs all bundles back to back, so drift hits each alike.
Per bundle, fp32 and int8: batched sentences/s over test2016 through
`Translator.translate` (its defaults: batches of 64, one per core; greedy, or beam
search with `--beam K` and the bundle's length penalty), median and range of
`--passes` passes after a warm-up; batch-1 p50 / p95 latency over the first
`--latency-sentences` sentences (0: none), one at a time, in `--passes // 4`
interleaved rounds.
It also counts the sentences each bundle translates differently from the first one
(same model: a graph change should leave fp32 output alone; int8 may move).
No TensorFlow import: the deployment runtime alone.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from common import DEFAULT_DATA, batch1_millis, write_results  # noqa: E402


def batched(translators: dict, sources: list[str], passes: int, beam: int) -> tuple[dict, dict]:
    """Seconds per pass of each translator over `sources`, interleaved; and outputs."""
    outputs = {name: t.translate(sources, beam=beam) for name, t in translators.items()}  # warm-up
    seconds = {name: [] for name in translators}
    for _ in range(passes):
        for name, translator in translators.items():
            start = time.perf_counter()
            translator.translate(sources, beam=beam)
            seconds[name].append(time.perf_counter() - start)
    return seconds, outputs


def latency(translators: dict, sources: list[str], rounds: int, beam: int) -> dict:
    """Milliseconds per single-sentence `translate`, each round interleaved."""
    millis = {name: [] for name in translators}
    for translator in translators.values():
        translator.translate(sources[:20], beam=beam)
    for _ in range(rounds):
        for name, translator in translators.items():
            millis[name] += batch1_millis(translator, sources, beam)
    return millis


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bundle", action="append", required=True, metavar="NAME=PATH",
                        help="a bundle to compare (give two or more)")
    parser.add_argument("--data-dir", default=str(DEFAULT_DATA))
    parser.add_argument("--beam", type=int, default=1, help="beam size (1: greedy)")
    parser.add_argument("--passes", type=int, default=8)
    parser.add_argument("--latency-sentences", type=int, default=400)
    parser.add_argument("--name", default="compare_bundles")
    args = parser.parse_args()
    pairs = [b.partition("=")[::2] for b in args.bundle]
    bundles = dict(pairs)
    if len(bundles) < 2 or len(bundles) != len(pairs) or not all(name and path for name, path in pairs):
        parser.error(f"give two or more --bundle NAME=PATH with distinct names, got {args.bundle}")

    from keras_attn.runtime import Translator
    from pipelines.corpus import read_lines

    sources = read_lines(os.path.join(args.data_dir, "test_2016_flickr.de.gz"))
    search = "greedy" if args.beam == 1 else f"beam {args.beam}"
    rows, notes = [], {}
    for precision, int8 in (("fp32", False), ("int8", True)):
        translators = {name: Translator.load(path, int8=int8) for name, path in bundles.items()}
        seconds, outputs = batched(translators, sources, args.passes, args.beam)
        millis = latency(translators, sources[: args.latency_sentences], max(1, args.passes // 4), args.beam)
        first = next(iter(outputs.values()))
        for name in bundles:
            rates = [len(sources) / s for s in seconds[name]]
            rows.append({"bundle": name, "precision": precision, f"{search} sentences/s": float(np.median(rates)),
                         "range": f"{min(rates):.0f}-{max(rates):.0f}",
                         "batch-1 p50 ms": round(float(np.median(millis[name])), 2) if millis[name] else "",
                         "batch-1 p95 ms": round(float(np.percentile(millis[name], 95)), 2) if millis[name] else "",
                         f"outputs unlike {next(iter(bundles))}": sum(a != b for a, b in zip(first, outputs[name],
                                                                                             strict=True))})
    notes.update({"bundles": ", ".join(f"{n} = {p}" for n, p in bundles.items()),
                  "test set": f"Multi30k test2016 ({len(sources)} sentences)",
                  "timing": f"median and range of {args.passes} interleaved passes after a warm-up" + (
                      f"; batch 1: {max(1, args.passes // 4)} interleaved rounds of {args.latency_sentences} sentences"
                      if args.latency_sentences else "")})
    write_results(args.name, rows, notes)


if __name__ == "__main__":
    main()
