"""The machine's limit for our work: only the matrix products, nothing else.

Each limit is timed with more than one library's matrix products, and the limit is
the fastest of them: which library multiplies these shapes fastest depends on the CPU
and on the environment (on an AVX2 VM NumPy's OpenBLAS beat TensorFlow's MatMul; on
an AVX-512 VM whose environment set OPENBLAS_CORETYPE=Haswell, onnxruntime's MLAS did
the decoder's products 1.9x and TensorFlow the training step's 1.6x faster than
NumPy; with the variable unset, onnxruntime was still 1.2x faster on the decoder's
and NumPy level with TensorFlow on the training step's), and a limit some other
library beats is no limit. Decode: NumPy and onnxruntime (the deployment's own
runtime); training: NumPy and TensorFlow, and for bfloat16 TensorFlow alone (NumPy
has no bfloat16).

Decode limit: a loop doing the greedy decoder's per-step matrix products
(LSTM gates on [embedding; h̃; h], attention energy and context, W_c, generator) at
batch B for S steps, the same shapes as the reference model; and the same loop for
one sentence (batch 1, `--latency-steps` steps: test2016's mean output length with
EOS is 15 pieces), the floor under batch-1 latency. Training limit: the
matrix products of one teacher-forced training step (forward, plus the two backward
products per forward product) for a batch of B x T target tokens, scheduled as fast
as they can be (`training_shapes`): what does not depend on the recurrence (the
encoder's input projections, the attention keys, the decoder's embedding projection,
the generator, and every recurrent weight's gradient) as single products over all
positions, only the recurrences' forward and input-gradient products step by step.

    python benchmarks/bench_limit.py [--vocab 8000] [--batch 128] [--steps 16] [--src-len 16] \
        [--latency-steps 15] [--tf-threads 2,1 ...]

TensorFlow's training products are timed with the process's own thread pools
("tensorflow") and, each in a fresh process, with each `--tf-threads INTER,INTRA`
setting of its inter-op and intra-op pools ("tensorflow INTER,INTRA"; default 2,1:
one thread per op, two ops at once, which on the Intel VM of 2026-12-07 did the
recipe's small products 15-19 % faster than TensorFlow's default pools). A limit
some thread setting beats is no limit either. For the same reason the batched decode
limit is timed with onnxruntime both ways the `Translator` can run a batch: on one
session using every core ("onnxruntime"), and one single-threaded session run by one
thread per core, each thread running a batch at once ("onnxruntime per core", how the
`Translator`'s workers run several batches; its sentences/s count all the batches).
One sentence is timed on the all-cores session alone, which the `Translator` uses for a
single batch.

The onnxruntime decode graph is the NumPy loop unrolled (each step's input takes
the previous step's output, as in the loop, so no step can be merged with another);
the TensorFlow training products run in `tf.while_loop`s whose inputs change with the
step (so TensorFlow cannot hoist or merge repeated products). TensorFlow and
onnxruntime are imported only when their limit is asked for: the decode limits run
without TensorFlow, as a deployment does.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import sys
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from common import print_result, result_from_child, thread_pair, thread_text, write_results  # noqa: E402

# plain Python and NumPy at import: no TensorFlow, no onnxruntime
from keras_attn.runtime.translator import session_options, thread_count  # noqa: E402


def decoder_weights(rng, batch, src_len, emb, hidden, memory_dim, vocab) -> tuple[dict, np.ndarray]:
    """The decoder's weights and a memory's attention keys and values, random, and a
    first step input `x` = [embedding; h~; h]: what `decoder_loop` and `onnx_decoder` run."""
    shapes = {"w_gates": (emb + 2 * hidden, 4 * hidden), "w_combine": (memory_dim + hidden, hidden),
              "w_gen": (hidden, vocab), "keys_t": (batch, hidden, src_len), "memory": (batch, src_len, memory_dim)}
    # scaled by 1/sqrt(fan-in), so values keep their size from step to step at any shape
    weights = {name: rng.standard_normal(shape, dtype=np.float32) / np.float32(np.sqrt(shape[-2]))
               for name, shape in shapes.items()}
    return weights, rng.standard_normal((batch, emb + 2 * hidden), dtype=np.float32)


def decoder_loop(weights: dict, x: np.ndarray, steps: int, hidden: int) -> np.ndarray:
    """`steps` steps of the greedy decoder's matrix products, each step's input taking
    the previous step's output (in place in `x`, which it returns)."""
    for _ in range(steps):
        gates = x @ weights["w_gates"]
        h = gates[:, :hidden]
        energy = np.matmul(h[:, None, :], weights["keys_t"])
        # |energy| = (batch, 1, src_len)
        context = np.matmul(energy, weights["memory"])[:, 0]
        attentional = np.concatenate([context, h], 1) @ weights["w_combine"]
        logits = attentional @ weights["w_gen"]
        fed = min(hidden, logits.shape[1])  # a generator narrower than the state (toy vocabularies)
        x[:, :fed] = logits[:, :fed]
    return x


def decoder_products(rng, batch, steps, src_len, emb, hidden, memory_dim, vocab):
    """Seconds of `decoder_loop` in NumPy."""
    weights, x = decoder_weights(rng, batch, src_len, emb, hidden, memory_dim, vocab)
    start = time.perf_counter()
    decoder_loop(weights, x, steps, hidden)
    return time.perf_counter() - start


def training_shapes(batch, steps, src_len, emb, enc_units, hidden, vocab):
    """The matrix products of one teacher-forced training step, as the fastest
    schedule for them does them (and as `keras_attn.rnn` / `teacher_forcing` do):

    `hoisted`: `(rows, in, out)` products over all positions at once, each costing
    three products (forward, input gradient, weight gradient);
    `loops`: `(count, [(in, out), ...])`: the recurrences, whose forward and
    input-gradient products must run step by step at `batch` rows (`count` steps,
    the products of one step in order), their weight gradients then one product
    over all `count x batch` rows each.
    """
    enc_tokens, tokens, memory_dim = batch * src_len, batch * steps, 2 * enc_units
    hoisted = [(enc_tokens, emb, 8 * enc_units),  # both directions' input projections
               (enc_tokens, memory_dim, hidden),  # attention keys
               (tokens, emb, 4 * hidden),  # the embedding part of the decoder's gates
               (tokens, hidden, vocab)]  # generator
    loops = [(src_len, [(enc_units, 4 * enc_units)] * 2),  # each direction's recurrent product
             (steps, [(2 * hidden, 4 * hidden),  # gates from [h~_{t-1}; h_{t-1}]
                      (memory_dim + hidden, hidden)])]  # W_c on [context; h_t]
    return hoisted, loops


def training_multiply_adds(batch, steps, src_len, emb, enc_units, hidden, vocab) -> int:
    """Multiply-adds of `training_shapes` (forward + backward)."""
    hoisted, loops = training_shapes(batch, steps, src_len, emb, enc_units, hidden, vocab)
    return (sum(3 * rows * k * n for rows, k, n in hoisted)
            + sum(3 * count * batch * k * n for count, products in loops for k, n in products))


def training_products(rng, batch, steps, src_len, emb, enc_units, hidden, vocab):
    """Seconds for the matmuls of one training step (`training_shapes`) in NumPy."""
    hoisted, loops = training_shapes(batch, steps, src_len, emb, enc_units, hidden, vocab)

    def matrix(*shape):
        return rng.standard_normal(shape, dtype=np.float32)

    big = [(matrix(rows, k), matrix(k, n)) for rows, k, n in hoisted]
    recurrent = [(count, [(matrix(batch, k), matrix(k, n), matrix(count * batch, k), matrix(count * batch, n))
                          for k, n in products]) for count, products in loops]
    start = time.perf_counter()
    for a, b in big:
        c = a @ b
        _ = c @ b.T
        _ = a.T @ c
    for count, products in recurrent:
        for _ in range(count):
            for a, b, _, _ in products:
                c = a @ b
                _ = c @ b.T
        for _, _, a_all, c_all in products:
            _ = a_all.T @ c_all
    return time.perf_counter() - start


# The reference model's shapes (configs/multi30k_deen.yaml); the vocabulary is an argument.
SHAPES = dict(emb=256, hidden=512)
DECODE_LIBRARIES = ("numpy", "onnxruntime")
# The batched decode limit also runs a single-threaded session on one thread per core at
# once, as the Translator's workers run several batches (one sentence only on the
# all-cores session, as the Translator runs a single batch)
PER_CORE = "onnxruntime per core"
TRAINING_LIBRARIES = {"float32": ("numpy", "tensorflow"), "bfloat16": ("tensorflow",)}
# TensorFlow's thread pools (inter-op, intra-op) the training limits also try, each in
# its own process: one thread per op, two ops at once
TF_THREADS = ((2, 1),)


@functools.lru_cache(maxsize=4)
def onnx_decoder(batch, steps, src_len, emb, hidden, memory_dim, vocab, threads=None):
    """An onnxruntime session running `decoder_loop` unrolled on `decoder_weights`
    drawn from seed 0, with the `Translator`'s session options for `threads` intra-op
    threads (None: one per core), and its feed (that `x`)."""
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper

    weights, x0 = decoder_weights(np.random.default_rng(0), batch, src_len, emb, hidden, memory_dim, vocab)
    init = [numpy_helper.from_array(value, name) for name, value in weights.items()]
    init += [numpy_helper.from_array(np.array([v], np.int64), name)
             for name, v in {"zero": 0, "h": hidden, "fed": min(hidden, vocab), "one": 1, "end": 1 << 30}.items()]
    node, nodes, x = helper.make_node, [], "x"
    for t in range(steps):
        def n(name, t=t):
            return f"s{t}_{name}"
        nodes += [node("MatMul", [x, "w_gates"], [n("gates")]),
                  node("Slice", [n("gates"), "zero", "h", "one"], [n("h")]),
                  node("Unsqueeze", [n("h"), "one"], [n("query")]),
                  node("MatMul", [n("query"), "keys_t"], [n("energy")]),      # (batch, 1, src_len)
                  node("MatMul", [n("energy"), "memory"], [n("context3")]),   # (batch, 1, memory_dim)
                  node("Squeeze", [n("context3"), "one"], [n("context")]),
                  node("Concat", [n("context"), n("h")], [n("combined")], axis=1),
                  node("MatMul", [n("combined"), "w_combine"], [n("attentional")]),
                  node("MatMul", [n("attentional"), "w_gen"], [n("logits")]),
                  # as decoder_loop's x[:, :fed] = logits[:, :fed]: step t+1 needs step t
                  node("Slice", [n("logits"), "zero", "fed", "one"], [n("fed")]),
                  node("Slice", [x, "fed", "end", "one"], [n("rest")]),
                  node("Concat", [n("fed"), n("rest")], [n("x")], axis=1)]
        x = n("x")
    graph = helper.make_graph(
        nodes, "decoder_products", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [batch, emb + 2 * hidden])],
        [helper.make_tensor_value_info(x, TensorProto.FLOAT, None)], init)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    session = ort.InferenceSession(model.SerializeToString(), session_options(threads),
                                   providers=["CPUExecutionProvider"])
    feed = {"x": x0}
    session.run(None, feed)  # the first run allocates
    return session, feed


def onnx_decoder_products(batch, steps, src_len, emb, hidden, memory_dim, vocab, workers=0):
    """Seconds per batch of the onnxruntime decode graph: one run on a session using
    every core, or (`workers` > 0) `workers` runs at once on one single-threaded
    session, as the `Translator`'s workers run their batches (one thread per core),
    their wall time divided by `workers`."""
    session, feed = onnx_decoder(batch, steps, src_len, emb, hidden, memory_dim, vocab, threads=1 if workers else None)
    start = time.perf_counter()
    if workers:
        list(worker_pool(workers).map(lambda _: session.run(None, feed), range(workers)))
    else:
        session.run(None, feed)
    return (time.perf_counter() - start) / max(1, workers)


@functools.lru_cache(maxsize=2)
def worker_pool(workers: int) -> ThreadPoolExecutor:
    """Threads kept for the limit's runs (onnxruntime lets go of the GIL while it runs),
    so that a timed pass does not start threads."""
    return ThreadPoolExecutor(workers)


@functools.lru_cache(maxsize=2)
def tf_training_step(dtype: str):
    """A traced TensorFlow function doing `training_shapes`' matmuls in `dtype`:
    inputs `(a, b)` per hoisted product, `(a, b, a_all, c_all)` per recurrent product
    of the encoder (2) and decoder (2) loops, then the two loops' step counts."""
    import tensorflow as tf

    def first(x):  # one element of a product, so that it is computed but not returned
        return tf.reduce_sum(x[:1, :1])

    def recurrent(products, count):
        total = tf.zeros([], dtype)
        for i in tf.range(count):
            shift = tf.cast(i, dtype)  # changes with the step, so no step's products can be hoisted or merged
            for a, b, _, _ in products:
                c = tf.matmul(a + shift, b)
                total += first(tf.matmul(c, b, transpose_b=True))
        return total + sum(first(tf.matmul(a_all, c_all, transpose_a=True)) for _, _, a_all, c_all in products)

    matrix, count = tf.TensorSpec([None, None], dtype), tf.TensorSpec([], tf.int32)

    @tf.function(input_signature=[matrix] * (2 * 4 + 4 * 4) + [count] * 2)
    def step(*args):
        big, (encoder, decoder), (src_len, steps) = args[:8], (args[8:16], args[16:24]), args[24:]
        total = tf.zeros([], dtype)
        for a, b in zip(big[::2], big[1::2]):
            c = tf.matmul(a, b)
            total += first(tf.matmul(c, b, transpose_b=True)) + first(tf.matmul(a, c, transpose_a=True))
        return (total + recurrent([encoder[:4], encoder[4:]], src_len)
                + recurrent([decoder[:4], decoder[4:]], steps))

    return step


def tf_training_products(rng, batch, steps, src_len, emb, enc_units, hidden, vocab, dtype="float32"):
    """Seconds for the matmuls of one training step (`training_shapes`) in TensorFlow."""
    import tensorflow as tf

    hoisted, loops = training_shapes(batch, steps, src_len, emb, enc_units, hidden, vocab)

    def matrix(*shape):
        return tf.cast(rng.standard_normal(shape, dtype=np.float32), dtype)

    inputs = [m for rows, k, n in hoisted for m in (matrix(rows, k), matrix(k, n))]
    inputs += [matrix(*shape) for count, products in loops for k, n in products
               for shape in ((batch, k), (k, n), (count * batch, k), (count * batch, n))]
    step = tf_training_step(dtype)
    start = time.perf_counter()
    step(*inputs, tf.constant(src_len), tf.constant(steps)).numpy()
    return time.perf_counter() - start


def decoder_seconds(library, batch, steps, src_len, vocab, rng=None):
    """Seconds per batch of the decoder's products with `library` (a `DECODE_LIBRARIES`
    name or `PER_CORE`)."""
    shape = dict(batch=batch, steps=steps, src_len=src_len, memory_dim=512, vocab=vocab, **SHAPES)
    if library == PER_CORE:
        return onnx_decoder_products(**shape, workers=thread_count(None))
    if library == "onnxruntime":
        return onnx_decoder_products(**shape)
    return decoder_products(rng or np.random.default_rng(0), **shape)


def training_seconds(library, batch, steps, src_len, vocab, dtype="float32", rng=None):
    rng = rng or np.random.default_rng(0)
    shape = dict(batch=batch, steps=steps, src_len=src_len, enc_units=256, vocab=vocab, **SHAPES)
    if library == "tensorflow":
        return tf_training_products(rng, dtype=dtype, **shape)
    if dtype != "float32":
        raise ValueError(f"{library} has no {dtype} matmuls")
    return training_products(rng, **shape)


def decode_limits(batch=128, steps=16, src_len=16, vocab=8000, passes=3) -> dict[str, float]:
    """Sentences/s of the greedy decoder's matmuls (batch x steps), per library and for
    onnxruntime also `PER_CORE` (median of `passes`)."""
    return {lib: median_of(lambda lib=lib: batch / decoder_seconds(lib, batch, steps, src_len, vocab), passes)
            for lib in (*DECODE_LIBRARIES, PER_CORE)}


def latency_limits_ms(steps=15, vocab=8000, passes=25) -> dict[str, float]:
    """Milliseconds of the decoder's matmuls for one sentence of `steps` steps, per library."""
    return {lib: median_of(lambda lib=lib: 1000 * decoder_seconds(lib, 1, steps, steps, vocab), passes)
            for lib in DECODE_LIBRARIES}


def training_limits(batch=128, steps=16, src_len=16, vocab=8000, dtype="float32", passes=3,
                    libraries=None) -> dict[str, float]:
    """Target tokens/s of a training step's matmuls (batch x steps tokens), per library
    (in this process; `in_tf_threads` for TensorFlow with other thread pools)."""
    return {lib: median_of(lambda lib=lib: batch * steps / training_seconds(lib, batch, steps, src_len, vocab, dtype),
                           passes)
            for lib in libraries or TRAINING_LIBRARIES[dtype]}


def batches_limits(shapes, tokens, vocab=8000, dtype="float32", libraries=None) -> dict[str, float]:
    """Real target tokens/s of a training step's matmuls over the padded shapes
    `(batch, src_len, tgt_len)` of given batches holding `tokens` real target tokens,
    per library: the limit for exactly the batches a benchmark times, padding and
    small batches of long sentences included (the fixed B x T shape of
    `training_limits` has neither)."""
    return {lib: tokens / sum(training_seconds(lib, batch, tgt_len, src_len, vocab, dtype)
                              for batch, src_len, tgt_len in shapes)
            for lib in libraries or TRAINING_LIBRARIES[dtype]}


def in_tf_threads(settings, *calls) -> list[dict[str, float]]:
    """For each of `calls` (a limit function's name, its keyword arguments), its
    TensorFlow limit with each of `settings` (inter-op, intra-op) as TensorFlow's thread
    pools, keyed "tensorflow INTER,INTRA". Each setting runs in a fresh process (a
    process's pools are made with its first TensorFlow op, once), all calls in one."""
    limits = [{} for _ in calls]
    for threads in settings:
        asked = json.dumps({"threads": threads, "calls": calls})
        for limit, value in zip(limits, result_from_child(os.path.abspath(__file__), "--tf-child", [asked]),
                                strict=True):
            limit[f"tensorflow {thread_text(threads)}"] = value
    return limits


def tf_child(request: str) -> None:
    """`--tf-child`: the asked limit functions' TensorFlow limits with the asked thread
    pools, printed as JSON (`in_tf_threads`)."""
    import tensorflow as tf

    asked = json.loads(request)
    tf.config.threading.set_inter_op_parallelism_threads(asked["threads"][0])
    tf.config.threading.set_intra_op_parallelism_threads(asked["threads"][1])
    functions = {"training_limits": training_limits, "batches_limits": batches_limits}
    print_result([functions[name](**kwargs, libraries=("tensorflow",))["tensorflow"]
                  for name, kwargs in asked["calls"]])


def fastest(limits: dict[str, float], lower_is_faster=False) -> tuple[str, float]:
    """The library with the best of `limits`, and its value."""
    pick = min if lower_is_faster else max
    return pick(limits.items(), key=lambda item: item[1])


def describe(limits: dict[str, float], digits=0) -> str:
    """'numpy 4,512 / onnxruntime 7,136': each library's limit, for a results table."""
    return " / ".join(f"{lib} {value:,.{digits}f}" for lib, value in limits.items())


def median_of(limit, passes: int = 3) -> float:
    """Median of `passes` calls of a limit function: the first pass after other work
    runs cold (caches, BLAS threads waking up)."""
    return float(np.median([limit() for _ in range(passes)]))


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--vocab", type=int, default=8000)
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--steps", type=int, default=16)
    parser.add_argument("--src-len", type=int, default=16)
    parser.add_argument("--latency-steps", type=int, default=15)
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--tf-threads", type=thread_pair, nargs="*", default=list(TF_THREADS), metavar="INTER,INTRA",
                        help="TensorFlow thread pools the training limits also try, each in its own process "
                             "(default 2,1; none: only this process's own)")
    parser.add_argument("--tf-child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.tf_child:
        tf_child(args.tf_child)
        return
    shape = dict(batch=args.batch, steps=args.steps, vocab=args.vocab)
    fixed = f"batch {args.batch} x {args.steps}"
    measured = [
        ("greedy decode, decoder matmuls only", f"{fixed} steps", "float32", "sentences/s",
         decode_limits(src_len=args.src_len, passes=args.repeats, **shape)),
        ("greedy decode of one sentence, decoder matmuls only", f"batch 1 x {args.latency_steps} steps", "float32",
         "ms per sentence", latency_limits_ms(args.latency_steps, args.vocab, passes=5 * args.repeats)),
    ]
    training = [dict(src_len=args.src_len, dtype=dtype, passes=args.repeats, **shape) for dtype in TRAINING_LIBRARIES]
    more = in_tf_threads(args.tf_threads, *[("training_limits", asked) for asked in training])
    measured += [("training step, forward+backward matmuls only", f"{fixed} target tokens", asked["dtype"],
                  "target tokens/s", {**training_limits(**asked), **other})
                 for asked, other in zip(training, more, strict=True)]
    libraries = list(dict.fromkeys(lib for *_, limits in measured for lib in limits))
    rows = []
    for limit, shape_text, dtype, unit, limits in measured:
        digits = 2 if unit.startswith("ms") else 1
        library, value = fastest(limits, lower_is_faster=unit.startswith("ms"))
        rows.append({"limit": limit, "shape": shape_text, "dtype": dtype,
                     **{lib: round(limits[lib], digits) if lib in limits else "-" for lib in libraries},
                     "limit (fastest)": round(value, digits), "fastest library": library, "unit": unit})
    macs = training_multiply_adds(src_len=args.src_len, enc_units=256, **shape, **SHAPES)
    write_results("bench_limit", rows, {"numpy": np.__version__, "generator width": args.vocab,
                                        "training multiply-adds per target token (forward + backward)":
                                            f"{macs / (args.batch * args.steps) / 1e6:.1f} M",
                                        "timing": f"median of {args.repeats} passes ({5 * args.repeats} "
                                                  "for one sentence)",
                                        "tensorflow": "this process's thread pools (TensorFlow's choice)",
                                        "tensorflow INTER,INTRA": "inter-op and intra-op threads as given, "
                                                                  "in a process of its own",
                                        PER_CORE: "one single-threaded session, run by one thread per core, "
                                                  "each running a batch at once"})


if __name__ == "__main__":
    main()
