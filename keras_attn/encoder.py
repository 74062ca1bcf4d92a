"""Encoder: embedding + stacked (bi)LSTM over a pre-padded source, with a bridge."""

from __future__ import annotations

import keras
import tensorflow as tf


def left_to_right_alignment(mask):
    """Gather indices that move each row's valid positions to the front.

    A pre-padded row `[pad pad a b c]` becomes `[a b c pad pad]`. Applying the same
    indices to the aligned tensor's *inverse* puts values back where they came from.

    Args:
        mask: bool `(batch, length)`, True = real token. Rows may be padded on either
            side; only the count of padding on the left is used.

    Returns:
        `(to_right, to_left)`: int32 `(batch, length)` gather indices for `axis=1`.
    """
    length = tf.shape(mask)[1]
    positions = tf.range(length)[None, :]
    # Leading pads = position of the first True (length when the row is empty).
    leading = tf.reduce_min(tf.where(mask, positions, length), axis=1, keepdims=True)
    to_right = (positions + leading) % length
    to_left = (positions - leading) % length
    return to_right, to_left


@keras.saving.register_keras_serializable(package="keras_attn")
class Encoder(keras.layers.Layer):
    """Embedding + stacked LSTM (bidirectional by default) with masks from `pad_id`.

    The encoder reads pre-padded sources (padding on the left, the seed's convention),
    but post-padded sources give the same result at the real positions: internally
    every row is shifted so its tokens start at position 0, the LSTMs run with a
    right-padding mask (the only kind cuDNN accepts on GPU), and the outputs are
    shifted back.

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
                 pad_id=0, **kwargs):
        super().__init__(**kwargs)
        self.vocab_size = vocab_size
        self.embedding_dim = embedding_dim
        self.units = units
        self.num_layers = num_layers
        self.bidirectional = bidirectional
        self.decoder_units = decoder_units
        self.decoder_layers = decoder_layers
        self.dropout = dropout
        self.pad_id = pad_id

        self.embedding = keras.layers.Embedding(vocab_size, embedding_dim, name="embedding")
        self.rnns = []
        for i in range(num_layers):
            lstm = keras.layers.LSTM(units, return_sequences=True, return_state=True, name=f"lstm_{i}")
            if bidirectional:
                lstm = keras.layers.Bidirectional(lstm, merge_mode="concat", name=f"bilstm_{i}")
            self.rnns.append(lstm)
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
        source = tf.cast(source, tf.int32)
        mask = tf.not_equal(source, self.pad_id)
        # |mask| = (batch, src_len)
        to_right, to_left = left_to_right_alignment(mask)
        right_mask = tf.gather(mask, to_right, batch_dims=1)
        x = self.embedding(tf.gather(source, to_right, batch_dims=1))
        x = self.dropout_layer(x, training=training)
        # |x| = (batch, src_len, emb)
        for i, rnn in enumerate(self.rnns):
            outputs = rnn(x, mask=right_mask, training=training)
            x, states = outputs[0], outputs[1:]
            if i + 1 < len(self.rnns):
                x = self.dropout_layer(x, training=training)
        # |x| = (batch, src_len, units * directions)
        if self.bidirectional:  # states = [h_fw, c_fw, h_bw, c_bw]
            final_h = tf.concat([states[0], states[2]], axis=-1)
            final_c = tf.concat([states[1], states[3]], axis=-1)
        else:
            final_h, final_c = states
        # |final_h| = (batch, units * directions)
        memory = tf.gather(x, to_left, batch_dims=1)
        memory = tf.where(mask[:, :, None], memory, tf.zeros_like(memory))
        memory = self.dropout_layer(memory, training=training)
        # |memory| = (batch, src_len, units * directions)
        hs = tf.split(self.bridge_h(final_h), self.decoder_layers, axis=-1)
        cs = tf.split(self.bridge_c(final_c), self.decoder_layers, axis=-1)
        return memory, mask, [[h, c] for h, c in zip(hs, cs, strict=False)]

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
        }
