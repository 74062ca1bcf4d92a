"""Issue 6's targets, graded from benchmark result files.

    python benchmarks/targets.py benchmarks/results/bench_translate_bt256xeon.json \
        benchmarks/results/bench_train_xeon.json [--name targets_xeon]

Reads result files of `bench_translate.py` (test2016 BLEU, decode speed, batch-1
latency, int8 loss) and `bench_train.py` (training speed, one grade per row), and
prints one row per target: the file, what was measured, the bound, and whether it is
met. With `--name`, also writes `results/NAME.{json,md}`. The bounds are the issue's,
for its 2-core machine; the result files record which machine measured them. BLEU is
the one `bench_translate.py` scored, at the bundle's beam length penalty.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import markdown_table, write_results  # noqa: E402

# (target, (system, search), column, bound, at_least): read from bench_translate rows
TRANSLATE_TARGETS = (
    ("test2016 BLEU, beam 5", ("onnxruntime fp32", "beam 5"), "BLEU", 40.0, True),
    ("test2016 BLEU, greedy", ("onnxruntime fp32", "greedy"), "BLEU", 38.5, True),
    ("fp32 greedy sentences/s", ("onnxruntime fp32", "greedy"), "sentences/s", 550.0, True),
    ("fp32 greedy % of the limit", ("onnxruntime fp32", "greedy"), "% of limit", 85.0, True),
    ("int8 greedy sentences/s", ("onnxruntime int8", "greedy"), "sentences/s", 1000.0, True),
    ("batch-1 p50 ms, fp32", ("onnxruntime fp32", "greedy, batch 1"), "latency p50 ms", 10.0, False),
    ("batch-1 p50 ms, int8", ("onnxruntime int8", "greedy, batch 1"), "latency p50 ms", 5.0, False),
)
INT8_BLEU_LOSS = 0.5
TRAINING_TOKENS_PER_SECOND = 2800.0


def grade(source: str, target: str, value: float, bound: float, at_least: bool = True) -> dict:
    met = value >= bound if at_least else value <= bound
    return {"file": source, "target": target, "measured": value,
            "bound": f"{'≥' if at_least else '≤'} {bound:,g}", "met": "yes" if met else "no"}


def translate_grades(source: str, rows: list[dict]) -> list[dict]:
    """The decode and quality targets from one `bench_translate.py` result's rows."""
    by_key = {(row["system"], row["search"]): row for row in rows}

    def value(key, column):
        if key not in by_key or column not in by_key[key]:
            raise ValueError(f"{source}: no {column!r} for {' / '.join(key)}: not a complete bench_translate "
                             f"result")
        return float(by_key[key][column])

    grades = [grade(source, target, value(key, column), bound, at_least)
              for target, key, column, bound, at_least in TRANSLATE_TARGETS]
    for search in ("greedy", "beam 5"):
        loss = value(("onnxruntime fp32", search), "BLEU") - value(("onnxruntime int8", search), "BLEU")
        grades.append(grade(source, f"int8 BLEU loss, {search}", round(loss, 2), INT8_BLEU_LOSS, at_least=False))
    return grades


def train_grades(source: str, rows: list[dict]) -> list[dict]:
    """One training-speed grade per measured `bench_train.py` row (rows that failed are
    skipped: they carry an "error"). The label names the row's CPU flags and date where
    the row has them (the oldest rows do not)."""
    def label(row):
        where = "; ".join(row[key] for key in ("cpu simd", "date") if key in row)
        return (f"training target tok/s, {row['precision']}, {row['batch tokens']}-token batches"
                f"{', XLA' if row['xla'] else ''}" + (f" ({where})" if where else ""))

    return [grade(source, label(row), float(row["target tokens/s"]), TRAINING_TOKENS_PER_SECOND)
            for row in rows if "error" not in row]


def grades_of(path: Path) -> list[dict]:
    """Grades from one result file, by the kind of rows it holds."""
    try:
        rows = json.loads(path.read_text(encoding="utf-8"))["rows"]
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise ValueError(f"{path}: not a benchmark result file ({error})") from None
    if rows and all("target tokens/s" in row or "error" in row for row in rows):
        return train_grades(path.name, rows)
    if rows and all("system" in row and "search" in row for row in rows):
        return translate_grades(path.name, rows)
    raise ValueError(f"{path}: neither a bench_translate nor a bench_train result")


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("results", nargs="+", type=Path, help="bench_translate / bench_train JSON result files")
    parser.add_argument("--name", help="also write results/NAME.{json,md}")
    args = parser.parse_args()
    try:
        rows = [row for path in args.results for row in grades_of(path)]
    except ValueError as error:
        parser.error(str(error))
    if args.name:
        write_results(args.name, rows, {"graded": ", ".join(str(path) for path in args.results),
                                        "machine": "the Machine line names where the grading ran; each graded "
                                                   "file records the machine that measured it"})
        return
    print("\n".join(markdown_table(rows)))


if __name__ == "__main__":
    main()
