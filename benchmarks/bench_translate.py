"""Translation speed on Multi30k test2016: Keras step loop, tf.function, onnxruntime.

    python benchmarks/bench_translate.py --train-dir runs/multi30k_deen \
        --bundle exported/multi30k_deen [--data-dir ../shared/data/multi30k]

Batched greedy and beam-5 sentences/s (end to end: tokenize, batch, decode,
detokenize), BLEU of each output, and batch-1 latency p50/p95 on single sentences.
onnxruntime uses its default intra-op threads (all cores); TensorFlow its defaults.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from common import DEFAULT_DATA, write_results  # noqa: E402


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
        rows = []
        for _ in range(decode_limit(source.shape[1], max_len)):
            logits, _, state = decoder.step(token, state, keys, memory, mask, weights)
            token = tf.argmax(logits, -1, output_type=tf.int32)
            rows.append(token.numpy())
            if all((np.stack(rows) == model.config.eos_id).any(0)):
                break
        ids = np.stack(rows, 1)
        for i, row in zip(batch, ids):
            out[i] = tgt_sp.decode(strip_special(row))
    return out


def timed(fn):
    start = time.perf_counter()
    result = fn()
    return result, time.perf_counter() - start


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--train-dir", required=True)
    parser.add_argument("--bundle", required=True)
    parser.add_argument("--data-dir", default=str(DEFAULT_DATA))
    parser.add_argument("--latency-sentences", type=int, default=200)
    parser.add_argument("--skip-keras-loop", action="store_true")
    args = parser.parse_args()

    import sacrebleu

    from keras_attn.runtime import Translator
    from keras_attn.search import InferenceModel
    from pipelines.corpus import read_lines
    from pipelines.decode import translate_tf
    from pipelines.export import load_training_run
    from pipelines.tokenizer import load_processor

    sources = read_lines(os.path.join(args.data_dir, "test_2016_flickr.de.gz"))
    refs = read_lines(os.path.join(args.data_dir, "test_2016_flickr.en.gz"))
    model, run_config, src_model, tgt_model = load_training_run(args.train_dir)
    src_sp, tgt_sp = load_processor(src_model), load_processor(tgt_model)
    inference = InferenceModel(model)
    max_len = int(run_config["train"]["max_len"])
    fp32, int8 = Translator.load(args.bundle), Translator.load(args.bundle, int8=True)
    systems = {
        "tf.function": lambda beam: translate_tf(inference, sources, src_sp, tgt_sp, max_len, 128, beam,
                                                 fp32.config["alpha"]),
        "onnxruntime fp32": lambda beam: fp32.translate(sources, beam=beam),
        "onnxruntime int8": lambda beam: int8.translate(sources, beam=beam),
    }
    if not args.skip_keras_loop:
        systems = {"keras step loop (eager)": None, **systems}
    rows = []
    for name, run in systems.items():
        for beam in (1, 5):
            if run is None and beam > 1:
                continue
            if run is None:
                hyps, seconds = timed(lambda: keras_step_loop(model, sources, src_sp, tgt_sp, max_len))
            else:
                run(beam)  # warm-up: tracing / session initialization
                hyps, seconds = timed(lambda run=run, beam=beam: run(beam))
            rows.append({"system": name, "search": "greedy" if beam == 1 else f"beam {beam}",
                         "sentences/s": round(len(sources) / seconds, 1),
                         "BLEU": round(sacrebleu.corpus_bleu(hyps, [refs]).score, 2)})
            print(rows[-1], flush=True)
    singles = sources[: args.latency_sentences]
    for name, translator in (("onnxruntime fp32", fp32), ("onnxruntime int8", int8)):
        times = []
        for sentence in singles:
            start = time.perf_counter()
            translator.translate([sentence])
            times.append(time.perf_counter() - start)
        rows.append({"system": name, "search": "greedy, batch 1",
                     "latency p50 ms": round(1000 * float(np.percentile(times, 50)), 2),
                     "latency p95 ms": round(1000 * float(np.percentile(times, 95)), 2)})
        print(rows[-1], flush=True)
    write_results("bench_translate", rows, {
        "test set": f"Multi30k test2016 ({len(sources)} sentences), batches of 128 sorted by length",
        "beam length penalty alpha": fp32.config["alpha"],
        "threads": "onnxruntime intra-op = all cores, inter-op 1; TensorFlow defaults"})


if __name__ == "__main__":
    main()
