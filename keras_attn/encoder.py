"""Encoder: embedding + stacked (bi)LSTM over a pre-padded source, with a bridge."""

from __future__ import annotations

import keras
import tensorflow as tf

from keras_attn.config import check_flags, check_rates, check_sizes
from keras_attn.rnn import MaskedLSTM, drop_tokens


@keras.saving.register_keras_serializable(package="keras_attn")
class Encoder(keras.layers.Layer):
    """Embedding + stacked LSTM (bidirectional by default) with masks from `pad_id`.

    The encoder reads pre-padded sources (padding on the left, the seed's convention),
    but post-padded sources give the same result at the real positions: the LSTMs
    (`MaskedLSTM`) carry their state through masked steps, whichever side they are
    on. They are plain TensorFlow ops, not cuDNN kernels, so the result is the same
    on CPU and GPU (cuDNN would accept right padding only).

    Call args:
        source: int `(batch, src_len)` token ids, `pad_id` for padding.

    Returns:
        `(memory, mask, initial_states)`:
        memory `(batch, src_len, units * directions)` (zeros at padding),
        mask bool `(batch, src_len)`,
        initial_states a list of `decoder_layers` pairs `[h, c]`, each
        `(batch, decoder_units)`: the final states bridged to the decoder.
    """

    def __init__(self, vocab_size, embedding_dim=256, units=256, num_layers=1,
                 bidirectional=True, decoder_units=512, decoder_layers=1, dropout=0.0,
                 pad_id=0, word_dropout=0.0, **kwargs):
        super().__init__(**kwargs)
        check_sizes("Encoder", vocab_size=vocab_size, embedding_dim=embedding_dim, units=units,
                    num_layers=num_layers, decoder_units=decoder_units, decoder_layers=decoder_layers)
        check_flags("Encoder", bidirectional=bidirectional)
        check_rates("Encoder", dropout=dropout, word_dropout=word_dropout)
        self.vocab_size = vocab_size
        self.embedding_dim = embedding_dim
        self.units = units
        self.num_layers = num_layers
        self.bidirectional = bidirectional
        self.decoder_units = decoder_units
        self.decoder_layers = decoder_layers
        self.dropout = dropout
        self.pad_id = pad_id
        self.word_dropout = word_dropout
        # Only with word dropout: a model without it keeps the variables older files hold.
        # Unseeded: drawn from the global seed, as the decoder's masks are.
        self.word_seed = keras.random.SeedGenerator() if word_dropout > 0 else None

        self.embedding = keras.layers.Embedding(vocab_size, embedding_dim, name="embedding")
        self.rnns = [MaskedLSTM(units, bidirectional, name=f"lstm_{i}") for i in range(num_layers)]
        self.dropout_layer = keras.layers.Dropout(dropout)
        # The bridge maps the final encoder state to every decoder layer's (h, c).
        self.bridge_h = keras.layers.Dense(decoder_units * decoder_layers, activation="tanh", name="bridge_h")
        self.bridge_c = keras.layers.Dense(decoder_units * decoder_layers, activation="tanh", name="bridge_c")

    @property
    def output_dim(self):
        return self.units * (2 if self.bidirectional else 1)

    def build(self, source_shape):
        batch, length = source_shape[0], source_shape[1]
        self.embedding.build((batch, length))
        width = self.embedding_dim
        for rnn in self.rnns:
            rnn.build((batch, length, width))
            width = self.output_dim
        self.bridge_h.build((batch, self.output_dim))
        self.bridge_c.build((batch, self.output_dim))

    def call(self, source, training=False):
        memory, mask, final_h, final_c = self.encode(source, training=training)
        return memory, mask, self.bridge(final_h, final_c)

    def encode(self, source, training=False):
        """`(memory, mask, final_h, final_c)`: the LSTM stack's outputs before the
        bridge; `final_h`, `final_c` are the last layer's `(batch, units * directions)`."""
        source = tf.cast(source, tf.int32)
        mask = tf.not_equal(source, self.pad_id)
        # |mask| = (batch, src_len)
        x = self.embedding(source)
        # |x| = (batch, src_len, emb)
        if training and self.word_dropout > 0:
            x = drop_tokens(x, self.word_dropout, self.word_seed)
        x = self.dropout_layer(x, training=training)
        for i, rnn in enumerate(self.rnns):
            if i > 0:
                x = self.dropout_layer(x, training=training)
            x, final_h, final_c = rnn(x, mask=mask)
        # |x| = (batch, src_len, units * directions), zeros at padding
        # |final_h| = |final_c| = (batch, units * directions)
        return self.dropout_layer(x, training=training), mask, final_h, final_c

    def bridge(self, final_h, final_c):
        """The decoder's initial `[h, c]` per decoder layer, from the final states."""
        hs = tf.split(self.bridge_h(final_h), self.decoder_layers, axis=-1)
        cs = tf.split(self.bridge_c(final_c), self.decoder_layers, axis=-1)
        return [[h, c] for h, c in zip(hs, cs, strict=False)]

    def get_config(self):
        return {
            **super().get_config(),
            "vocab_size": self.vocab_size,
            "embedding_dim": self.embedding_dim,
            "units": self.units,
            "num_layers": self.num_layers,
            "bidirectional": self.bidirectional,
            "decoder_units": self.decoder_units,
            "decoder_layers": self.decoder_layers,
            "dropout": self.dropout,
            "pad_id": self.pad_id,
            "word_dropout": self.word_dropout,
        }
