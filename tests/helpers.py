"""Small shared helpers for the tests."""

import subprocess
import sys
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf

from keras_attn import Seq2SeqConfig
from keras_attn.rnn import lstm_update

TINY = dict(src_vocab_size=30, tgt_vocab_size=25, embedding_dim=8, encoder_units=8,
            decoder_units=12, dropout=0.0)


def tiny_config(**overrides):
    return Seq2SeqConfig(**{**TINY, **overrides})


def random_ids(rng, lengths, vocab, pre_pad, width=None):
    """Rows of random ids >= 4 (not special) with the given lengths, padded with 0."""
    width = width or max(lengths)
    out = np.zeros((len(lengths), width), np.int32)
    for row, n in enumerate(lengths):
        ids = rng.integers(4, vocab, n)
        if pre_pad:
            out[row, width - n:] = ids
        else:
            out[row, :n] = ids
    return out


def strip(row, pre_pad, n):
    return row[len(row) - n:] if pre_pad else row[:n]


def autodiff_masked_lstm_loop(projection, step_mask, recurrent_kernel):
    """The plain loop (what `MaskedLSTM` ran before its hand-written backward), for autodiff."""
    time, batch = projection.shape[0], projection.shape[1]
    h = c = tf.zeros((batch, recurrent_kernel.shape[0]), projection.dtype)
    outputs = []
    for t in range(time):
        new_h, new_c = lstm_update(projection[t] + tf.matmul(h, recurrent_kernel), c)
        real = step_mask[t]
        h, c = real * new_h + (1 - real) * h, real * new_c + (1 - real) * c
        outputs.append(real * new_h)
    return tf.stack(outputs), h, c


def run_with_file_size_limit(argv, kilobytes: int, cwd: Path):
    """`keras-attn ARGV` in a process whose files cannot grow past `kilobytes` KiB (bash's
    `ulimit -f`; not `preexec_fn`, unsafe in this threaded process): its writes beyond
    fail (EFBIG) as on a full disk, which a test cannot make."""
    return subprocess.run(["bash", "-c", f'ulimit -f {kilobytes} && exec "$0" "$@"', sys.executable, "-m",
                           "pipelines.cli", *map(str, argv)], cwd=cwd, capture_output=True, text=True, timeout=300)


class Interrupt(keras.callbacks.Callback):
    """A kill at epoch 1's end, after the callbacks listed before this one."""

    def on_epoch_end(self, epoch, logs=None):
        if epoch == 1:
            raise KeyboardInterrupt("simulated kill")


def tiny_data(n=64):
    """`n` random rows for `fit`: ({"source", "target_in"}, target) ids, all below VOCAB."""
    rng = np.random.default_rng(0)
    x = {"source": rng.integers(4, 20, (n, 5)).astype("int32"), "target_in": rng.integers(4, 20, (n, 4)).astype("int32")}
    return x, rng.integers(4, 20, (n, 4)).astype("int32")


VOCAB = 20  # tiny_data's ids are below it
