"""Does forbidding a repeated subword n-gram help greedy decoding? (validation set only)

    python benchmarks/ngram_blocking.py --train-dir runs/m30k_fp32_anneal [--data-dir DIR] [--n 2 3 4]

An eager step loop over a training run's Keras model: greedy decoding, optionally with
every token that would repeat an n-gram already in the hypothesis forbidden. Without
blocking it reproduces the exported greedy decoder's validation BLEU, so the rows
compare like with like. Writes `results/ngram_blocking.{json,md}`.
"""

from __future__ import annotations

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from common import DEFAULT_DATA, write_results  # noqa: E402


def banned(history: list[int], n: int) -> set[int]:
    """Tokens that would complete an n-gram already in `history`."""
    if len(history) < n - 1:
        return set()
    prefix = tuple(history[len(history) - n + 1:])
    return {history[i + n - 1] for i in range(len(history) - n + 1) if tuple(history[i:i + n - 1]) == prefix}


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--train-dir", required=True)
    parser.add_argument("--data-dir", default=str(DEFAULT_DATA))
    parser.add_argument("--n", type=int, nargs="+", default=[2, 3, 4])
    parser.add_argument("--max-len", type=int, default=60, help="the bundle's max_tgt_len")
    args = parser.parse_args()
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import numpy as np
    import sacrebleu
    import tensorflow as tf

    from keras_attn.runtime.translator import decode_limit, pre_pad, strip_special
    from keras_attn.saving import load_model
    from pipelines.corpus import read_lines
    from pipelines.tokenizer import load_processor

    model = load_model(os.path.join(args.train_dir, "model.keras"))
    src_sp = load_processor(os.path.join(args.train_dir, "src.spm.model"))
    tgt_sp = load_processor(os.path.join(args.train_dir, "tgt.spm.model"))
    sources = read_lines(os.path.join(args.data_dir, "val.de.gz"))
    refs = read_lines(os.path.join(args.data_dir, "val.en.gz"))
    encoder, decoder, cfg = model.encoder, model.decoder, model.config

    @tf.function
    def encode(source):
        memory, mask, states = encoder(source, training=False)
        return (memory, tf.cast(mask, memory.dtype), decoder.attention.memory_keys(memory),
                decoder.initial_state(states, tf.shape(source)[0]))

    @tf.function
    def step(y_prev, state, keys, memory, mask):
        logits, _, state = decoder.step(y_prev, state, keys, memory, mask, decoder.step_weights())
        return tf.nn.log_softmax(logits), state

    def greedy(batch, n):
        source = tf.constant(pre_pad([src_sp.encode(s) for s in batch]), tf.int32)
        memory, mask, keys, state = encode(source)
        y_prev = np.full(len(batch), cfg.bos_id, np.int32)
        histories, done = [[] for _ in batch], np.zeros(len(batch), bool)
        caps = decode_limit([len(src_sp.encode(s)) for s in batch], args.max_len)  # the exported decoders' caps
        for _ in range(caps.max()):
            log_probs, state = step(tf.constant(y_prev), state, keys, memory, mask)
            log_probs = log_probs.numpy()
            for row, history in enumerate(histories):
                for token in banned(history, n) if n else ():
                    log_probs[row, token] = -np.inf
            y_prev = log_probs.argmax(-1).astype(np.int32)
            for row in np.flatnonzero(~done):
                histories[row].append(int(y_prev[row]))
            done |= (y_prev == cfg.eos_id) | (np.array([len(h) for h in histories]) >= caps)
            if done.all():
                break
        return [tgt_sp.decode(strip_special(h)) for h in histories]

    rows = []
    for n in [0, *args.n]:
        hyps = [h for i in range(0, len(sources), 128) for h in greedy(sources[i:i + 128], n)]
        rows.append({"blocked n-gram": n or "none", "val BLEU": round(sacrebleu.corpus_bleu(hyps, [refs]).score, 2)})
        print(rows[-1], flush=True)
    write_results("ngram_blocking", rows, {"model": args.train_dir, "set": f"Multi30k val ({len(sources):,} sentences), greedy"})


if __name__ == "__main__":
    main()
