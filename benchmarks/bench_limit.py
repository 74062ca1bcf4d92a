"""The machine's limit for our work: only the matrix products, nothing else.

Decode limit: a NumPy loop doing the greedy decoder's per-step matrix products
(LSTM gates on [embedding; h̃; h], attention energy and context, W_c, generator) at
batch B for S steps, the same shapes as the reference model; and the same loop for
one sentence (batch 1, `--latency-steps` steps: test2016's mean output length with
EOS is 15 pieces), the floor under batch-1 latency. Training limit: the
matrix products of one teacher-forced training step (forward, plus the two backward
products per forward product) for a batch of B x T target tokens.

    python benchmarks/bench_limit.py [--vocab 8000] [--batch 128] [--steps 16] [--src-len 16] \
        [--latency-steps 15]
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import write_results  # noqa: E402


def decoder_products(rng, batch, steps, src_len, emb, hidden, memory_dim, vocab):
    w_gates = rng.standard_normal((emb + 2 * hidden, 4 * hidden), dtype=np.float32) * 0.02
    w_combine = rng.standard_normal((memory_dim + hidden, hidden), dtype=np.float32) * 0.02
    w_gen = rng.standard_normal((hidden, vocab), dtype=np.float32) * 0.02
    keys = rng.standard_normal((batch, src_len, hidden), dtype=np.float32)
    memory = rng.standard_normal((batch, src_len, memory_dim), dtype=np.float32)
    x = rng.standard_normal((batch, emb + 2 * hidden), dtype=np.float32)
    start = time.perf_counter()
    for _ in range(steps):
        gates = x @ w_gates
        h = gates[:, :hidden]
        energy = np.matmul(h[:, None, :], keys.transpose(0, 2, 1))
        context = np.matmul(energy, memory)[:, 0]
        attentional = np.concatenate([context, h], 1) @ w_combine
        logits = attentional @ w_gen
        x[:, :hidden] = logits[:, :hidden]
    return time.perf_counter() - start


def training_products(rng, batch, steps, src_len, emb, enc_units, hidden, vocab):
    """Seconds for the matmuls of one training step: each forward product A@B also
    costs dA = dC@Bᵀ and dB = Aᵀ@dC backward."""
    def three(a, b):
        c = a @ b
        _ = c @ b.T
        _ = a.T @ c

    tokens = batch * steps
    enc_in = rng.standard_normal((batch, emb), dtype=np.float32)
    enc_h = rng.standard_normal((batch, enc_units), dtype=np.float32)
    w_enc_in = rng.standard_normal((emb, 4 * enc_units), dtype=np.float32)
    w_enc_rec = rng.standard_normal((enc_units, 4 * enc_units), dtype=np.float32)
    dec_in = rng.standard_normal((batch, emb + 2 * hidden), dtype=np.float32)
    w_dec = rng.standard_normal((emb + 2 * hidden, 4 * hidden), dtype=np.float32)
    comb_in = rng.standard_normal((batch, 2 * enc_units + hidden), dtype=np.float32)
    w_comb = rng.standard_normal((2 * enc_units + hidden, hidden), dtype=np.float32)
    gen_in = rng.standard_normal((tokens, hidden), dtype=np.float32)
    w_gen = rng.standard_normal((hidden, vocab), dtype=np.float32)
    start = time.perf_counter()
    for _ in range(2 * src_len):  # two directions
        three(enc_in, w_enc_in)
        three(enc_h, w_enc_rec)
    for _ in range(steps):
        three(dec_in, w_dec)
        three(comb_in, w_comb)
    three(gen_in, w_gen)
    return time.perf_counter() - start


# The reference model's shapes (configs/multi30k_deen.yaml); the vocabulary is an argument.
SHAPES = dict(emb=256, hidden=512)


def decode_limit_sentences_per_s(rng=None, batch=128, steps=16, src_len=16, vocab=8000) -> float:
    """Sentences/s of one pass of the greedy decoder's matmuls (batch x steps)."""
    rng = rng or np.random.default_rng(0)
    return batch / decoder_products(rng, batch, steps, src_len, memory_dim=512, vocab=vocab, **SHAPES)


def latency_limit_ms(rng=None, steps=15, vocab=8000) -> float:
    """Milliseconds of one pass of the decoder's matmuls for one sentence of `steps` steps."""
    rng = rng or np.random.default_rng(0)
    return 1000 * decoder_products(rng, 1, steps, steps, memory_dim=512, vocab=vocab, **SHAPES)


def training_limit_tokens_per_s(rng=None, batch=128, steps=16, src_len=16, vocab=8000) -> float:
    """Target tokens/s of one pass of a training step's matmuls (batch x steps tokens)."""
    rng = rng or np.random.default_rng(0)
    return batch * steps / training_products(rng, batch, steps, src_len, enc_units=256, vocab=vocab, **SHAPES)


def batches_limit_tokens_per_s(shapes, tokens, rng=None, vocab=8000) -> float:
    """Real target tokens/s of a training step's matmuls over the padded shapes
    `(batch, src_len, tgt_len)` of given batches holding `tokens` real target tokens:
    the limit for exactly the batches a benchmark times, padding and small batches of
    long sentences included (the fixed B x T shape of `training_limit_tokens_per_s`
    has neither)."""
    rng = rng or np.random.default_rng(0)
    seconds = sum(training_products(rng, batch, tgt_len, src_len, enc_units=256, vocab=vocab, **SHAPES)
                  for batch, src_len, tgt_len in shapes)
    return tokens / seconds


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
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    shape = dict(batch=args.batch, steps=args.steps, src_len=args.src_len, vocab=args.vocab)
    decode = [decode_limit_sentences_per_s(rng, **shape) for _ in range(args.repeats)]
    train = [training_limit_tokens_per_s(rng, **shape) for _ in range(args.repeats)]
    single = [latency_limit_ms(rng, args.latency_steps, args.vocab) for _ in range(5 * args.repeats)]
    rows = [
        {"limit": "greedy decode, decoder matmuls only", "shape": f"batch {args.batch} x {args.steps} steps",
         "throughput": round(float(np.median(decode)), 1), "unit": "sentences/s"},
        {"limit": "greedy decode of one sentence, decoder matmuls only", "shape": f"batch 1 x {args.latency_steps} steps",
         "throughput": round(float(np.median(single)), 2), "unit": "ms per sentence"},
        {"limit": "training step, forward+backward matmuls only",
         "shape": f"batch {args.batch} x {args.steps} target tokens",
         "throughput": round(float(np.median(train)), 1), "unit": "target tokens/s"},
    ]
    write_results("bench_limit", rows, {"numpy": np.__version__, "dtype": "float32",
                                        "timing": f"median of {args.repeats} passes ({5 * args.repeats} "
                                                  "for one sentence)",
                                        "OPENBLAS_CORETYPE": os.environ.get("OPENBLAS_CORETYPE", "(unset)")})


if __name__ == "__main__":
    main()
