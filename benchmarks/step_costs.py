"""How a training step's wall time grows with its batch's shape.

    python benchmarks/step_costs.py [--fit 4x8 4x32 ...] [--check 8x24 24x12] [--rounds 3]

Times `train_on_batch` of the reference recipe's model (configs/multi30k_deen.yaml) on
fixed batches of random ids, `B` sentences of `L` tokens on both sides, and fits by
least squares on the `--fit` shapes

    step seconds = fixed + per_position * L + per_token * B * L

- `fixed`: paid once per step whatever the shape: the optimizer's update of every
  weight, the clipping norms, the step's call;
- `per_position`: paid once per time step of the recurrent loops whatever the batch:
  the loops' small ops, each with its launch cost (encoder and decoder, forward and
  backward);
- `per_token`: the work that grows with the tokens: the matrix products, the
  elementwise ops on them, the generator and the loss.

The `--check` shapes are timed but not fitted: the row states how far the fit's
prediction is from each of their measured steps. With `--data-dir`, the fit also
predicts the recipe's own batches, the `--recipe-steps` after `--recipe-warmup` that
`bench_train.py` times with the same two flags: their mean step split into the three
costs, and their real target tokens/s, to set beside `bench_train.py`'s measurement.
A batch's `L` there is the mean of its padded source and target lengths (the fit's
shapes have equal ones). Each shape's step is the median over
`--rounds` rounds of `--steps` steps; the rounds go through all shapes in turn, so that
drift in the machine's speed spreads over all of them. Writes
`results/step_costs.{json,md}`.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
from common import recipe_config, recipe_model_on_random_ids, write_results  # noqa: E402

TERMS = ("fixed", "per_position", "per_token")


def shape(text: str) -> tuple[int, int]:
    """'16x32' -> (16, 32): sentences x tokens."""
    try:
        batch, length = (int(part) for part in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"shape {text!r}: expected BATCHxLENGTH, e.g. 16x32") from None
    if batch < 1 or length < 1:
        raise argparse.ArgumentTypeError(f"shape {text!r}: batch and length must be >= 1")
    return batch, length


def multipliers(batch: float, length: float) -> tuple[float, float, float]:
    """What each of `TERMS` is multiplied by in a step of `batch` x `length`: the model
    `step = fixed + per_position * L + per_token * B * L`, written once."""
    return 1.0, length, batch * length


def fit_costs(shapes: list[tuple[int, int]], seconds: list[float]) -> dict[str, float]:
    """Least-squares `fixed`, `per_position`, `per_token` (seconds) of the model over
    `shapes` [(B, L)]."""
    design = np.array([multipliers(batch, length) for batch, length in shapes])
    if np.linalg.matrix_rank(design) < len(TERMS):
        raise ValueError(f"shapes {shapes} cannot separate the three costs (fixed, per position, per "
                         f"token): give three or more that vary the length and the batch size independently, "
                         f"e.g. 4x8 4x32 16x8")
    coefficients, *_ = np.linalg.lstsq(design, np.asarray(seconds, dtype=float), rcond=None)
    return dict(zip(TERMS, (float(c) for c in coefficients)))


def cost_parts(costs: dict[str, float], batch: float, length: float) -> list[float]:
    """Seconds of each of `TERMS` in a step of `batch` x `length`."""
    return [costs[term] * factor for term, factor in zip(TERMS, multipliers(batch, length), strict=True)]


def predict(costs: dict[str, float], batch: int, length: int) -> float:
    return sum(cost_parts(costs, batch, length))


def recipe_prediction(costs: dict[str, float], batches) -> dict[str, str]:
    """The fit's mean step over recipe `batches` [(x, y)], split into its three costs,
    and the real (non-pad) target tokens/s it implies."""
    parts = np.array([cost_parts(costs, len(y), (x["source"].shape[1] + y.shape[1]) / 2) for x, y in batches])
    # |parts| = (batches, 3): seconds of each cost in each batch's step
    mean = parts.mean(axis=0)
    real = sum(int((y != 0).sum()) for _, y in batches)
    mean_shape = np.mean([[len(y), x["source"].shape[1], y.shape[1]] for x, y in batches], axis=0)
    return {"recipe batches": f"{len(batches)}, mean {mean_shape[0]:.1f} sentences x {mean_shape[1]:.1f} "
                              f"source / {mean_shape[2]:.1f} target positions, "
                              f"{real / len(batches):.1f} real target tokens",
            "recipe step (predicted)": f"{1000 * mean.sum():.1f} ms = " + " + ".join(
                f"{name} {1000 * ms:.1f} ({100 * ms / mean.sum():.0f} %)" for name, ms in zip(TERMS, mean)),
            "recipe target tok/s (predicted)": f"{real / parts.sum():,.0f}"}


def step_timer(model, random_batch, batch: int, length: int, steps: int):
    """A function timing `steps` `train_on_batch` calls on one fixed random batch
    (traced and warmed up here); returns their mean seconds."""
    x, y = random_batch(np.random.default_rng(batch * 1000 + length), batch, length)
    for _ in range(3):  # trace this shape and warm up
        model.train_on_batch(x, y)

    def timed() -> float:
        start = time.perf_counter()
        for _ in range(steps):
            model.train_on_batch(x, y)
        return (time.perf_counter() - start) / steps

    return timed


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--fit", type=shape, nargs="+",
                        default=[shape(s) for s in ("4x8", "4x16", "4x32", "16x8", "16x16", "16x32", "32x8", "32x16")])
    parser.add_argument("--check", type=shape, nargs="*", default=[shape(s) for s in ("8x24", "24x12", "12x20")])
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--precision", default="float32")
    parser.add_argument("--data-dir", help="Multi30k: also predict the recipe's batches")
    parser.add_argument("--recipe-warmup", type=int, default=20, help="batches skipped, as bench_train's --warmup")
    parser.add_argument("--recipe-steps", type=int, default=120, help="batches predicted, as bench_train's --steps")
    args = parser.parse_args()
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    model, random_batch, src_vocab, tgt_vocab = recipe_model_on_random_ids(args.precision)
    shapes = list(dict.fromkeys([*args.fit, *args.check]))
    timers = {s: step_timer(model, random_batch, *s, args.steps) for s in shapes}
    times = {s: [] for s in shapes}
    for round_ in range(args.rounds):
        for s in shapes:
            times[s].append(timers[s]())
        print(f"round {round_ + 1}/{args.rounds} done", file=sys.stderr, flush=True)
    step = {s: statistics.median(times[s]) for s in shapes}
    costs = fit_costs(args.fit, [step[s] for s in args.fit])
    rows = [{"shape": f"{b}x{n}", "role": "fit" if (b, n) in args.fit else "check", "target tokens": b * n,
             "step ms": round(1000 * step[(b, n)], 1), "predicted ms": round(1000 * predict(costs, b, n), 1),
             "error %": round(100 * (predict(costs, b, n) / step[(b, n)] - 1), 1),
             "target tok/s": round(b * n / step[(b, n)])} for b, n in shapes]
    notes = {"setting": f"{args.precision}, recipe model ({src_vocab:,} / {tgt_vocab:,} pieces), random ids, "
                        f"source length = target length; median of {args.rounds} rounds of {args.steps} steps",
             "fit": f"step = {1000 * costs['fixed']:.1f} ms + {1000 * costs['per_position']:.2f} ms x L "
                    f"+ {1000 * costs['per_token']:.3f} ms x B x L"}
    if args.data_dir:
        from bench_train import recipe_batches

        batches, _, _ = recipe_batches(recipe_config(data_dir=args.data_dir), args.recipe_warmup + args.recipe_steps)
        notes.update(recipe_prediction(costs, batches[args.recipe_warmup:]))
    write_results("step_costs", rows, notes)


if __name__ == "__main__":
    main()
