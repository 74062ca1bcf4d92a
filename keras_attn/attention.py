"""Luong (2015) attention: masked softmax and the general / dot / concat scores."""

from __future__ import annotations

import keras
import tensorflow as tf

from keras_attn.config import check_sizes
from keras_attn.rnn import compute_weight, dense_3d


def masked_softmax(scores, mask):
    """Softmax over the last axis that gives masked positions probability exactly 0.

    Args:
        scores: float tensor `(..., n)`.
        mask: bool tensor broadcastable to `scores`, True = valid position, or the
            same as 0/1 floats of the scores' dtype (a decode loop casts its mask once,
            outside the loop). `None` means every position is valid.

    Returns:
        Probabilities of the shape of `scores`. A row with no valid position is all
        zeros (never NaN), and the gradient is finite everywhere.
    """
    scores = tf.convert_to_tensor(scores)
    if mask is None:
        return tf.nn.softmax(scores, axis=-1)
    keep = tf.cast(mask, scores.dtype)  # no op when the mask is already 0/1 floats
    # A large finite negative rather than -inf: a fully masked row then softmaxes to a
    # uniform row (no inf - inf = NaN), which the final product turns into zeros.
    # Arithmetic rather than `tf.where`: the same values (x + 0 = x, x * 1 = x) in
    # fewer ONNX ops per decode step.
    very_negative = tf.cast(-0.7 * scores.dtype.max, scores.dtype)
    probs = tf.nn.softmax(scores + (1.0 - keep) * very_negative, axis=-1)
    return probs * keep


@keras.saving.register_keras_serializable(package="keras_attn")
class LuongAttention(keras.layers.Layer):
    """Luong et al. (2015) global attention.

    Scores between a query `q` (decoder output) and memory rows `H` (encoder outputs):

    - `general`: `q Wa Hᵀ`, Wa a bias-free projection of the query into memory space,
      kernel shape `(q_dim, m_dim)`;
    - `dot`: `q Hᵀ` (needs `q_dim == m_dim`, no weights);
    - `concat`: `vᵀ tanh(W1 q + W2 H)` (Luong's concat / Bahdanau's additive form).

    The memory-side work is split out as `memory_keys(memory)` so an autoregressive
    decoder computes it once per sentence instead of once per step. For `general`,
    `(q Wa) Hᵀ = q (H Waᵀ)ᵀ`, so the keys are `H Waᵀ`.

    Call args:
        query: `(batch, tgt_len, q_dim)`, or `(batch, q_dim)` for a single step.
        memory: `(batch, src_len, m_dim)`.
        mask: optional bool `(batch, src_len)`, True = real source position.

    Returns:
        `(context, weights)`: context `(batch, tgt_len, m_dim)` and weights
        `(batch, tgt_len, src_len)`; without the `tgt_len` axis for a 2-D query.
    """

    def __init__(self, score="general", units=None, **kwargs):
        super().__init__(**kwargs)
        if score not in ("general", "dot", "concat"):
            raise ValueError(f"LuongAttention: score must be 'general', 'dot' or 'concat', got {score!r}")
        if units is not None:
            check_sizes("LuongAttention", units=units)
        self.score = score
        self.units = units  # width of the concat score's hidden layer; default m_dim
        # `mask` is the memory's mask, consumed here; the outputs carry none.
        self.supports_masking = True

    def build(self, query_shape, memory_shape=None, mask_shape=None):
        if memory_shape is None:
            raise ValueError("LuongAttention.build needs the memory shape")
        q_dim, m_dim = int(query_shape[-1]), int(memory_shape[-1])
        if self.score == "dot" and q_dim != m_dim:
            raise ValueError(f"LuongAttention(score='dot') needs q_dim == m_dim, got {q_dim} and {m_dim}")
        if self.score == "general":
            self.kernel = self.add_weight(name="kernel", shape=(q_dim, m_dim), initializer="glorot_uniform")
        elif self.score == "concat":
            units = self.units or m_dim
            self.query_kernel = self.add_weight(name="query_kernel", shape=(q_dim, units), initializer="glorot_uniform")
            self.memory_kernel = self.add_weight(name="memory_kernel", shape=(m_dim, units), initializer="glorot_uniform")
            self.bias = self.add_weight(name="bias", shape=(units,), initializer="zeros")
            self.v = self.add_weight(name="v", shape=(units,), initializer="glorot_uniform")

    def memory_keys(self, memory):
        """The query-independent part of the score, computed once per sentence."""
        if self.score == "general":
            # |keys| = (batch, src_len, q_dim)
            return dense_3d(memory, compute_weight(self, self.kernel), transpose_b=True)
        if self.score == "concat":
            # |keys| = (batch, src_len, units)
            return dense_3d(memory, compute_weight(self, self.memory_kernel)) + compute_weight(self, self.bias)
        return memory

    def energy(self, query, keys):
        """Unnormalized scores `(batch, tgt_len, src_len)` for a 3-D query."""
        if self.score == "concat":
            # |hidden| = (batch, tgt_len, src_len, units)
            query = dense_3d(query, compute_weight(self, self.query_kernel))
            hidden = tf.tanh(query[:, :, None, :] + keys[:, None, :, :])
            return tf.tensordot(hidden, compute_weight(self, self.v), axes=1)
        # |energy| = (batch, tgt_len, src_len)
        return tf.matmul(query, keys, transpose_b=True)

    def attend(self, query, keys, memory, mask=None):
        """Context and weights from precomputed `keys`; same shapes as `call`."""
        single_step = query.shape.rank == 2
        if single_step:
            query = query[:, None, :]
        # |weights| = (batch, tgt_len, src_len)
        weights = masked_softmax(self.energy(query, keys), None if mask is None else mask[:, None, :])
        # |context| = (batch, tgt_len, m_dim)
        context = tf.matmul(weights, memory)
        if single_step:
            return context[:, 0], weights[:, 0]
        return context, weights

    def call(self, query, memory, mask=None):
        return self.attend(query, self.memory_keys(memory), memory, mask)

    def compute_mask(self, *args, **kwargs):
        return None

    def compute_output_shape(self, query_shape, memory_shape, mask_shape=None):
        return (tuple(query_shape[:-1]) + (memory_shape[-1],),
                tuple(query_shape[:-1]) + (memory_shape[1],))

    def get_config(self):
        return {**super().get_config(), "score": self.score, "units": self.units}
