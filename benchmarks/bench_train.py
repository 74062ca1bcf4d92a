"""Training throughput of `model.fit` on the Multi30k reference recipe.

    python benchmarks/bench_train.py [--data-dir ../shared/data/multi30k] [--steps 60]

Target tokens/s (real, non-pad) of `fit` on real bucketed Multi30k batches of the
recipe's `batch_tokens` (or `--batch-tokens`) target tokens and vocabularies, for
float32 and mixed bfloat16, with and without XLA (`jit_compile`), and the process's
peak memory. The `--warmup + --steps` batches are tokenized up
front and replayed (as the training run's cache replays them from its second epoch);
the clock runs from the start of the first step after the warm-up to the end of the
last, so tracing and `fit`'s start-up are not counted. The machine's limit for the
same work (`bench_limit.py`: a training step's matmuls alone, in NumPy and in
TensorFlow for float32, in TensorFlow for bfloat16; median of 3 passes) is measured
just before the clock starts and just after it stops; the row states each library's
mean, and the throughput as a percentage of the fastest. That limit is the brief's
fixed 128 x 16-token batch; the row also states the limit for the timed batches
themselves (`bench_limit.batches_limits`: their padded shapes, one pass before and
one after), which charges the padding and the small batches of long sentences that
real bucketed batches carry.

`--threads INTER,INTRA …` sets TensorFlow's inter-op and intra-op thread pools for
the timed process, one row per pair (0 = TensorFlow's own choice); the row states what
TensorFlow reports it runs with. The limit's TensorFlow products are timed in the same
process, with the same pools, and with each `--limit-threads` setting (default 2,1) in
a fresh process (`bench_limit.in_tf_threads`): the limit is the fastest of all.
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
from bench_limit import (  # noqa: E402
    TF_THREADS,
    batches_limits,
    describe,
    fastest,
    in_tf_threads,
    training_limits,
)
from common import (  # noqa: E402
    DEFAULT_DATA,
    RESULTS,
    machine,
    recipe_config,
    thread_pair,
    thread_text,
    write_results,
)


def step_clock(warmup: int, shapes, tokens: int, vocab: int, dtype: str, tf_threads=TF_THREADS):
    """A callback timing from the start of batch `warmup` to the end of training:
    the warm-up steps (tracing) and `fit`'s own start-up are not counted. The
    training limits in `dtype` (fixed shape; the timed batches' `shapes` holding
    `tokens`), both with the model's `vocab`-wide generator, are measured right
    before and right after the timed steps, TensorFlow's also with each of the
    `tf_threads` pools."""
    import keras

    def limits():
        # in this process, then TensorFlow's with each other thread setting (both limits in one process each)
        fixed, same = training_limits(vocab=vocab, dtype=dtype), batches_limits(shapes, tokens, vocab=vocab, dtype=dtype)
        asked = [("training_limits", dict(vocab=vocab, dtype=dtype)),
                 ("batches_limits", dict(shapes=shapes, tokens=tokens, vocab=vocab, dtype=dtype))]
        more_fixed, more_same = in_tf_threads(tf_threads, *asked)
        return {**fixed, **more_fixed}, {**same, **more_same}

    class StepClock(keras.callbacks.Callback):
        def on_train_batch_begin(self, batch, logs=None):
            if batch == warmup:
                self.limits = [limits()]
                self.start = time.perf_counter()

        def on_train_end(self, logs=None):
            self.seconds = time.perf_counter() - self.start
            self.limits.append(limits())

    return StepClock()


def recipe_batches(cfg, count: int):
    """The first `count` training batches of recipe `cfg` (its tokenizers trained on its
    training side) as NumPy `(x, y)` pairs, and the two vocabularies' sizes (the target's
    is the generator's width). Tokenized up front, as the training run's cache replays
    them from its second epoch on, so that the input pipeline's first pass is not timed."""
    from pipelines.dataset import make_dataset
    from pipelines.tokenizer import load_processor, train_sentencepiece
    from pipelines.train import batching_config, load_corpora, vocab_sizes

    train, _, _ = load_corpora(cfg)
    src_size, tgt_size = vocab_sizes(cfg)  # the recipe's
    src_model, tgt_model = train_sentencepiece(train.sources, src_size), train_sentencepiece(train.targets, tgt_size)
    ds = make_dataset(train, src_model, tgt_model, batching_config(cfg), training=True)
    batches = list(ds.repeat().take(count).as_numpy_iterator())
    return batches, load_processor(src_model).get_piece_size(), load_processor(tgt_model).get_piece_size()


def one_setting(data_dir, precision, jit, steps, warmup, batch_tokens, bucket_width, steps_per_execution=1,
                threads=(0, 0), limit_threads=TF_THREADS):
    """Run in a fresh process (precision policy, thread pools and memory are per process)."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import keras
    import tensorflow as tf

    # before any TensorFlow op: the pools are made with the first one
    tf.config.threading.set_inter_op_parallelism_threads(threads[0])
    tf.config.threading.set_intra_op_parallelism_threads(threads[1])

    from pipelines.train import build_model, model_config

    cfg = recipe_config(data_dir=data_dir, precision=precision, jit=jit, batch_tokens=batch_tokens,
                        **({"bucket_width": bucket_width} if bucket_width else {}))
    keras.mixed_precision.set_global_policy(precision)
    batches, src_vocab, tgt_vocab = recipe_batches(cfg, warmup + steps)
    model = build_model(cfg, model_config(cfg, src_vocab, tgt_vocab), steps_per_execution)
    tokens = sum(int((y != 0).sum()) for _, y in batches[warmup:])
    spec = ({"source": tf.TensorSpec([None, None], tf.int32), "target_in": tf.TensorSpec([None, None], tf.int32)},
            tf.TensorSpec([None, None], tf.int32))
    replay = tf.data.Dataset.from_generator(lambda: iter(batches), output_signature=spec).prefetch(2)
    # |source| = (batch, src_len), |target_in| = (batch, tgt_len): padded, as the step computes them
    shapes = [(*x["source"].shape, x["target_in"].shape[1]) for x, _ in batches[warmup:]]
    # mixed_bfloat16 multiplies in bfloat16: its limit is bfloat16 matmuls
    dtype = "bfloat16" if precision == "mixed_bfloat16" else "float32"
    # the process's own pools are timed in it: no other process for the same setting
    clock = step_clock(warmup, shapes, tokens, tgt_vocab, dtype, [t for t in limit_threads if t != threads])
    model.fit(replay, epochs=1, steps_per_epoch=len(batches), shuffle=False, verbose=0, callbacks=[clock])
    seconds = clock.seconds
    rate = tokens / seconds
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    facts = machine()
    return {"cpu simd": facts["simd"], "date": facts["date"], "precision": precision, "xla": jit,
            "batch tokens": batch_tokens, "target vocabulary": tgt_vocab, "bucket width": cfg.bucket_width,
            "warm-up": warmup, "steps": steps, "steps per execution": steps_per_execution,
            "TF threads inter-op, intra-op": thread_setting(tf),
            "target tokens": tokens,
            "seconds": round(seconds, 2), "target tokens/s": round(rate, 1),
            **limit_columns("limit", [fixed for fixed, _ in clock.limits], rate),
            **limit_columns("same-batches limit", [same for _, same in clock.limits], rate),
            "peak memory MB": round(peak_mb)}


def thread_setting(tf) -> str:
    """TensorFlow's inter-op and intra-op thread counts as it reports them (`thread_label`)."""
    return thread_label((tf.config.threading.get_inter_op_parallelism_threads(),
                         tf.config.threading.get_intra_op_parallelism_threads()))


def thread_label(counts) -> str:
    """"INTER, INTRA" for a row; 0 is "default", TensorFlow's own choice."""
    return ", ".join(str(count) if count else "default" for count in counts)


def limit_columns(name: str, before_after: list[dict[str, float]], rate: float) -> dict:
    """Each library's limit (mean of before and after), the fastest with its before and
    after values, and `rate` as a percentage of it."""
    means = {lib: statistics.mean(limits[lib] for limits in before_after) for lib in before_after[0]}
    library, limit = fastest(means)
    before, after = (limits[library] for limits in before_after)
    return {f"{name} tokens/s by library": describe(means),
            f"{name} tokens/s (before, after)": f"{limit:.0f} ({before:.0f}, {after:.0f}) {library}",
            f"% of {name}": round(100 * rate / limit, 1)}


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", default=str(DEFAULT_DATA))
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--batch-tokens", type=int, nargs="+", default=None, help="default: the recipe's")
    parser.add_argument("--bucket-width", type=int, default=None, help="default: the recipe's")
    parser.add_argument("--precisions", nargs="+", default=["float32", "mixed_bfloat16"])
    parser.add_argument("--xla", nargs="+", default=["0", "1"], help="0 = off, 1 = jit_compile")
    parser.add_argument("--steps-per-execution", type=int, default=1,
                        help="`compile(steps_per_execution=...)`: steps per call of the compiled train function "
                             "(--warmup must be a multiple of it)")
    parser.add_argument("--threads", type=thread_pair, nargs="+", default=[(0, 0)], metavar="INTER,INTRA",
                        help="TensorFlow's inter-op and intra-op threads, one setting per pair (0 = its default)")
    parser.add_argument("--limit-threads", type=thread_pair, nargs="*", default=list(TF_THREADS),
                        metavar="INTER,INTRA", help="TensorFlow thread pools the limits also try, each in its own "
                                                    "process (default 2,1; none: only the timed process's own)")
    parser.add_argument("--append", action="store_true", help="add rows to results/bench_train.json")
    parser.add_argument("--one", nargs=2, metavar=("PRECISION", "JIT"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    args.batch_tokens = args.batch_tokens or [recipe_config().batch_tokens]
    if args.steps_per_execution < 1 or args.warmup % args.steps_per_execution:
        parser.error(f"--steps-per-execution {args.steps_per_execution}: must be >= 1 and divide --warmup "
                     f"({args.warmup}), as the clock starts on a call's first step")
    if args.one:
        import json

        print(json.dumps(one_setting(args.data_dir, args.one[0], args.one[1] == "1", args.steps, args.warmup,
                                     args.batch_tokens[0], args.bucket_width, args.steps_per_execution,
                                     args.threads[0], args.limit_threads)))
        return
    import json

    rows = []
    previous = RESULTS / "bench_train.json"
    if args.append and previous.is_file():
        rows = json.loads(previous.read_text())["rows"]
    settings = [(p, j, b, t) for t in args.threads for b in args.batch_tokens for p in args.precisions
                for j in args.xla]
    width = ["--bucket-width", str(args.bucket_width)] if args.bucket_width else []
    for precision, jit, batch_tokens, threads in settings:
        result = subprocess.run([sys.executable, __file__, "--data-dir", args.data_dir, "--steps",
                                 str(args.steps), "--warmup", str(args.warmup), "--batch-tokens",
                                 str(batch_tokens), *width, "--steps-per-execution", str(args.steps_per_execution),
                                 "--threads", thread_text(threads), "--limit-threads",
                                 *map(thread_text, args.limit_threads), "--one", precision, jit],
                                capture_output=True, text=True)
        if result.returncode == 0:
            rows.append(json.loads(result.stdout.strip().splitlines()[-1]))
        else:
            last = [line for line in result.stderr.splitlines() if line.strip()][-1:]
            rows.append({"precision": precision, "xla": jit == "1", "batch tokens": batch_tokens,
                         "TF threads inter-op, intra-op": thread_label(threads),
                         "error": (last[0] if last else "failed")[:160]})
        print(rows[-1], flush=True)
    write_results("bench_train", rows, {"recipe": "configs/multi30k_deen.yaml, batch tokens as listed",
                                        "timing": "steps and warm-up steps as listed"})


if __name__ == "__main__":
    main()
