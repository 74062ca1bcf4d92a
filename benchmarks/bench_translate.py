"""Translation speed on Multi30k test2016: Keras step loop, tf.function, onnxruntime.

    python benchmarks/bench_translate.py --train-dir runs/multi30k_deen \
        --bundle exported/multi30k_deen [--data-dir ../shared/data/multi30k]

Batched greedy and beam-5 sentences/s (end to end: tokenize, batch, decode,
detokenize), BLEU of each output, and batch-1 latency p50/p95 on single sentences.
Each system translates the test set once to warm up, then `--repeats` more times;
the table gives the median and the range (this VM's speed drifts by up to 20 %).
The onnxruntime rows run in a child process that never imports TensorFlow, as a
deployment would (a TensorFlow runtime in the same process slows onnxruntime down).
onnxruntime runs as the `Translator` runs by default (one batch per core, each thread
running a single-threaded session; batch 1 on a session using every core); TensorFlow
with its defaults. Float32 greedy rows also get a percentage of the machine's limit
(`bench_limit.py`: the decoder's matmuls alone, in NumPy and in onnxruntime, the latter
both on one session using every core and on a single-threaded one run by one thread per
core; its generator as wide as the bundle's target vocabulary; the limit is the fastest), measured
interleaved: the limit (median of 3 passes per library) right after each timed pass,
so both see the same minute of this drifting VM; the percentage is the median of the
per-pass ratios. Batch-1 latency: the one-sentence limit right before and right
after the sentences; percentage = its milliseconds over p50.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from bench_limit import decode_limits, describe, fastest, latency_limits_ms  # noqa: E402
from common import DEFAULT_DATA, batch1_millis, print_result, result_from_child, write_results  # noqa: E402


def keras_step_loop(model, sources, src_sp, tgt_sp, max_len, batch_size=128):
    """Plain Python loop over `decoder.step`, eager: the baseline without graphs."""
    import tensorflow as tf

    from keras_attn.runtime.translator import decode_limit, length_sorted_batches, pre_pad, strip_special

    encoded = [src_sp.encode(s)[:max_len] for s in sources]
    out = [""] * len(sources)
    decoder = model.decoder
    for batch in length_sorted_batches([len(e) for e in encoded], batch_size):
        source = tf.constant(pre_pad([encoded[i] for i in batch]))
        memory, mask, states = model.encoder(source)
        keys, weights = decoder.attention.memory_keys(memory), decoder.step_weights()
        state = decoder.initial_state(states, len(batch))
        token = tf.fill([len(batch)], model.config.bos_id)
        rows, caps = [], decode_limit([len(encoded[i]) for i in batch], max_len)  # one cap per sentence
        for _ in range(caps.max()):
            logits, _, state = decoder.step(token, state, keys, memory, mask, weights)
            token = tf.argmax(logits, -1, output_type=tf.int32)
            rows.append(token.numpy())
            if all((np.stack(rows) == model.config.eos_id).any(0)):
                break
        ids = np.stack(rows, 1)
        for i, row, cap in zip(batch, ids, caps):
            out[i] = tgt_sp.decode(strip_special(row[:cap]))
    return out


def greedy_limit(vocab: int):
    """A function measuring the decode limits now for a `vocab`-word generator:
    sentences/s per library, median of 3 passes each."""
    return lambda: decode_limits(vocab=vocab)


def bundle_vocab(bundle: str) -> int:
    """The bundle's target vocabulary: the generator's width, which the limit must share."""
    with open(os.path.join(bundle, "config.json"), encoding="utf-8") as handle:
        return int(json.load(handle)["tokenizers"]["tgt"]["vocab_size"])


def timed_runs(run, repeats: int, limit=None):
    """`run()` returns hypotheses; returns the last ones, the seconds of each timed run
    and, with a `limit()` (sentences/s per library), the limits measured right after each run."""
    run()  # warm-up: tracing, session initialization, arena growth
    times, limits = [], []
    for _ in range(repeats):
        start = time.perf_counter()
        hyps = run()
        times.append(time.perf_counter() - start)
        if limit:
            limits.append(limit())
    return hyps, times, limits


def speed_row(system, beam, n_sentences, times, hyps, refs, limits=()):
    """Median and range of sentences/s, BLEU, and with `limits` (one per timed run,
    sentences/s per library) each library's median, the fastest library's median as
    the limit, and the median of the per-run percentages of the fastest."""
    import sacrebleu

    rates = [n_sentences / t for t in times]
    row = {"system": system, "search": "greedy" if beam == 1 else f"beam {beam}",
           "sentences/s": round(statistics.median(rates), 1),
           "range": f"{min(rates):.0f}-{max(rates):.0f}" if len(rates) > 1 else "",
           "BLEU": round(sacrebleu.corpus_bleu(hyps, [refs]).score, 2)}
    if limits:
        medians = {lib: statistics.median(run[lib] for run in limits) for lib in limits[0]}
        row["limit"] = round(fastest(medians)[1], 1)
        row["limit by library"] = describe(medians)
        row["% of limit"] = round(statistics.median(100 * r / fastest(run)[1]
                                                    for r, run in zip(rates, limits, strict=True)), 1)
    print(row, flush=True)
    return row


def latency_row(system, translator, sentences, limit_vocab: int | None):
    """Batch-1 p50/p95 over `sentences`; with `limit_vocab`, the one-sentence limits
    for that generator width (median of 25 passes per library) right before and right
    after, averaged, the fastest library's being the limit (the limit is float32
    arithmetic: fp32 rows only). Not after every
    sentence: BLAS threads still spinning after a limit pass would slow the next
    sentence down."""
    with_limit = limit_vocab is not None

    def limit():
        return latency_limits_ms(vocab=limit_vocab)

    before = limit() if with_limit else None
    millis = batch1_millis(translator, sentences)
    row = {"system": system, "search": "greedy, batch 1",
           "latency p50 ms": round(float(np.percentile(millis, 50)), 2),
           "latency p95 ms": round(float(np.percentile(millis, 95)), 2)}
    if with_limit:
        after = limit()
        means = {lib: (before[lib] + after[lib]) / 2 for lib in before}
        row["limit"] = round(fastest(means, lower_is_faster=True)[1], 2)
        row["limit by library"] = describe(means, digits=2)
        row["% of limit"] = round(100 * row["limit"] / row["latency p50 ms"], 1)
    print(row, flush=True)
    return row


def runtime_rows(args, sources, refs):
    """The onnxruntime measurements (run in the child process, without TensorFlow)."""
    from keras_attn.runtime import Translator

    assert "tensorflow" not in sys.modules
    fp32, int8 = Translator.load(args.bundle), Translator.load(args.bundle, int8=True)
    rows = []
    for name, translator in (("onnxruntime fp32", fp32), ("onnxruntime int8", int8)):
        for beam in (1, 5):
            # the limit is fp32 arithmetic
            limit = greedy_limit(args.vocab) if beam == 1 and name.endswith("fp32") else None
            hyps, times, limits = timed_runs(lambda t=translator, b=beam: t.translate(sources, beam=b),
                                             args.repeats, limit)
            rows.append(speed_row(name, beam, len(sources), times, hyps, refs, limits))
    for name, translator in (("onnxruntime fp32", fp32), ("onnxruntime int8", int8)):
        rows.append(latency_row(name, translator, sources[: args.latency_sentences],
                                args.vocab if name.endswith("fp32") else None))
    assert "tensorflow" not in sys.modules
    return rows, fp32.config["alpha"]


def tensorflow_rows(args, sources, refs, alpha):
    from keras_attn.search import InferenceModel
    from pipelines.decode import translate_tf
    from pipelines.export import load_training_run
    from pipelines.tokenizer import load_processor

    model, run_config, src_model, tgt_model = load_training_run(args.train_dir)
    src_sp, tgt_sp = load_processor(src_model), load_processor(tgt_model)
    inference = InferenceModel(model)
    max_len = int(run_config["train"]["max_len"])
    rows = []
    if not args.skip_keras_loop:  # slow: one timed pass after the warm-up
        hyps, times, limits = timed_runs(lambda: keras_step_loop(model, sources, src_sp, tgt_sp, max_len), 1,
                                         greedy_limit(args.vocab))
        rows.append(speed_row("keras step loop (eager)", 1, len(sources), times, hyps, refs, limits))
    for beam in (1, 5):
        hyps, times, limits = timed_runs(
            lambda b=beam: translate_tf(inference, sources, src_sp, tgt_sp, max_len, 128, b, alpha), args.repeats,
            greedy_limit(args.vocab) if beam == 1 else None)
        rows.append(speed_row("tf.function", beam, len(sources), times, hyps, refs, limits))
    return rows


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--train-dir", required=True)
    parser.add_argument("--bundle", required=True)
    parser.add_argument("--data-dir", default=str(DEFAULT_DATA))
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--latency-sentences", type=int, default=200)
    parser.add_argument("--skip-keras-loop", action="store_true")
    parser.add_argument("--runtime-child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()

    from pipelines.corpus import read_lines

    args.vocab = bundle_vocab(args.bundle)
    sources = read_lines(os.path.join(args.data_dir, "test_2016_flickr.de.gz"))
    refs = read_lines(os.path.join(args.data_dir, "test_2016_flickr.en.gz"))
    if args.runtime_child:
        rows, alpha = runtime_rows(args, sources, refs)
        print_result({"rows": rows, "alpha": alpha})
        return
    result = result_from_child(__file__, "--runtime-child", sys.argv[1:])
    rows = tensorflow_rows(args, sources, refs, result["alpha"]) + result["rows"]
    write_results("bench_translate", rows, {
        "test set": f"Multi30k test2016 ({len(sources)} sentences), sorted by length",
        "batching": "onnxruntime: Translator defaults (batches of 64, one batch per core, each on a "
                    "single-threaded session; batch 1 on an all-core session); TensorFlow: batches of 128",
        "timing": f"median of {args.repeats} passes after a warm-up pass (keras step loop: 1 pass); "
                  "range = slowest-fastest pass",
        "limit": f"bench_limit.py: the decoder's matmuls alone in NumPy and onnxruntime (one session on all "
                 "cores, and a single-threaded one run by one thread per core), the fastest (generator width "
                 f"{args.vocab}, the bundle's target vocabulary; batch 128 x 16 steps; one "
                 "sentence of 15 steps for batch 1), after each timed pass (median of 3 passes); for batch 1 "
                 "before and after the sentences (median of 25 passes each, averaged); "
                 "column 'limit' = its median (sentences/s; ms), '% of limit' = median of per-pass ratios",
        "beam length penalty alpha": result["alpha"],
        "threads": "onnxruntime: the Translator's (above), inter-op 1, in a process without TensorFlow; "
                   "TensorFlow defaults"})


if __name__ == "__main__":
    main()
