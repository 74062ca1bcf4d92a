"""Where a training step's time goes: the TensorFlow profiler on the recipe model.

    python benchmarks/profile_train_step.py [--batch 120] [--length 16] [--precision float32]

Trains the reference recipe's model (configs/multi30k_deen.yaml) on a fixed batch of
random ids (`--batch` sentences of `--length` tokens on both sides), times
`--steps` steps, then records `--profile-steps` more with `tf.profiler` and adds up the
op durations on TensorFlow's compute threads, by op type, by model component (from the
op names; "other" = ops outside any layer's name scope) and by op. The sums are
op-seconds: two ops running at once on the two cores both count, so they can exceed
the step's wall time. Writes `results/profile_train_step.{json,md}`.
"""

from __future__ import annotations

import argparse
import collections
import glob
import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
from common import recipe_model_on_random_ids, write_results  # noqa: E402


def op_seconds(logdir: str, steps: int):
    """`(by_type, by_op)` Counters of op-seconds per step from a profiler trace."""
    from tensorflow.tsl.profiler.protobuf import xplane_pb2

    space = xplane_pb2.XSpace()
    path = sorted(glob.glob(os.path.join(logdir, "**", "*.xplane.pb"), recursive=True))[-1]
    with open(path, "rb") as handle:
        space.ParseFromString(handle.read())
    host = next(plane for plane in space.planes if plane.name == "/host:CPU")
    by_type, by_op = collections.Counter(), collections.Counter()
    for line in host.lines:
        if not line.name.startswith("tf_Compute"):
            continue
        for event in line.events:
            name = host.event_metadata[event.metadata_id].name
            if ":" not in name or "::" in name:  # executor bookkeeping, not an op ("name:Type")
                continue
            seconds = event.duration_ps / 1e12 / steps
            by_type[name.rsplit(":", 1)[1]] += seconds
            by_op[name.rsplit(":", 1)[0]] += seconds
    return by_type, by_op


# Which part of the model an op belongs to, from its name (first match wins).
COMPONENTS = (("generator", ("generator",)), ("loss", ("compile_loss", "cross_entropy")),
              ("encoder", ("encoder",)), ("decoder", ("decoder", "while")),
              ("optimizer", ("adam", "clip", "optimizer", "assign")))


def component(op_name: str) -> str:
    name = op_name.lower()
    return next((part for part, keys in COMPONENTS if any(key in name for key in keys)), "other")


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=120)
    parser.add_argument("--length", type=int, default=16)
    parser.add_argument("--precision", default="float32")
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--profile-steps", type=int, default=3)
    parser.add_argument("--top", type=int, default=15)
    args = parser.parse_args()
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import numpy as np
    import tensorflow as tf

    model, random_batch, src_vocab, tgt_vocab = recipe_model_on_random_ids(args.precision)
    x, y = random_batch(np.random.default_rng(0), args.batch, args.length)
    for _ in range(3):  # trace and warm up
        model.train_on_batch(x, y)
    start = time.perf_counter()
    for _ in range(args.steps):
        model.train_on_batch(x, y)
    step = (time.perf_counter() - start) / args.steps
    with tempfile.TemporaryDirectory() as logdir:
        tf.profiler.experimental.start(logdir)
        for _ in range(args.profile_steps):
            model.train_on_batch(x, y)
        tf.profiler.experimental.stop()
        by_type, by_op = op_seconds(logdir, args.profile_steps)
    total = sum(by_type.values())
    by_component = collections.Counter()
    for name, seconds in by_op.items():
        by_component[component(name)] += seconds
    rows = [{"kind": kind, "name": name[-90:], "op-seconds per step": round(v, 4), "share": round(v / total, 3)}
            for kind, counter, top in (("op type", by_type, args.top), ("component", by_component, None),
                                       ("op", by_op, args.top))
            for name, v in counter.most_common(top)]
    write_results("profile_train_step", rows, {
        "setting": f"{args.precision}, batch {args.batch} x {args.length} target tokens, recipe model "
                   f"({src_vocab:,} / {tgt_vocab:,} pieces)",
        "step": f"{step:.3f} s wall per step ({args.batch * args.length / step:,.0f} target tok/s), "
                f"mean of {args.steps}; op-seconds per step summed over compute threads: {total:.3f}"})


if __name__ == "__main__":
    main()
