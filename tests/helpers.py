"""Small shared helpers for the tests."""

import numpy as np

from keras_attn import Seq2SeqConfig

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
