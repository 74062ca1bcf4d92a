"""A masked (bi)LSTM layer with the input projection hoisted out of the time loop.

Keras's LSTM multiplies the input by the kernel inside its time loop; here the
input projection of both directions is one matmul over all time steps, and each
direction's loop does only the recurrent matmul. Masked steps carry the state through unchanged, so any
padding side works: the forward direction reads the sequence as given, the backward
one reads it reversed, and padding never touches a real position's state.
"""

from __future__ import annotations

import keras
import tensorflow as tf


def lstm_update(gates, c):
    """LSTM cell update from pre-activation gates `[i, f, g, o]` (Keras's order)."""
    i, f, g, o = tf.split(gates, 4, axis=-1)
    c = tf.sigmoid(f) * c + tf.sigmoid(i) * tf.tanh(g)
    return tf.sigmoid(o) * tf.tanh(c), c


def unstack(sequence):
    """A time-major tensor as a TensorArray, to read one step per loop iteration.

    Reading `sequence[t]` inside a `tf.while_loop` would make the backward pass build
    a full-size zero gradient per step (quadratic in time); a TensorArray read's
    gradient is a single write.
    """
    return tf.TensorArray(sequence.dtype, size=tf.shape(sequence)[0]).unstack(sequence)


def dense_3d(inputs, kernel, transpose_b=False):
    """`(..., in) @ kernel` as one 2-D matmul; a 2-D input is a plain matmul.

    The same math as a broadcasting matmul, but a 2-D product is what GEMM libraries
    (and onnxruntime's pre-packed MatMul) are fastest at, and a broadcasting 3-D
    matmul's kernel gradient is a matmul per batch row plus a sum (measured: a
    quarter of a training step when the decoder's input projection was one).
    """
    if inputs.shape.rank == 2:  # one decode step: no reshapes in its ONNX loop body
        return tf.matmul(inputs, kernel, transpose_b=transpose_b)
    shape = tf.shape(inputs)
    flat = tf.matmul(tf.reshape(inputs, (-1, shape[-1])), kernel, transpose_b=transpose_b)
    out_dim = kernel.shape[0] if transpose_b else kernel.shape[-1]
    return tf.reshape(flat, tf.concat([shape[:-1], [out_dim]], 0))


def drop_tokens(embedded, rate, seed):
    """Word dropout (Gal & Ghahramani 2016; Sennrich & Zhang 2019): each token's whole
    vector `(..., dim)` is zeroed with probability `rate`, the others scaled by
    `1 / (1 - rate)`, so the model learns not to lean on any single word."""
    keep = keras.random.dropout(tf.ones_like(embedded[..., :1]), rate, seed=seed)
    # |keep| = (..., 1): one draw per token, broadcast over the embedding
    return embedded * keep


def unit_forget_bias(units, directions=None):
    """Bias initializer with the forget gate at 1 (Jozefowicz et al. 2015)."""
    def init(shape, dtype=None):
        one = tf.concat([tf.zeros((units,)), tf.ones((units,)), tf.zeros((2 * units,))], 0)
        return one if directions is None else tf.tile(one[None], [directions, 1])
    return init


@keras.saving.register_keras_serializable(package="keras_attn")
class MaskedLSTM(keras.layers.Layer):
    """One LSTM layer, uni- or bidirectional, over `(batch, time, features)`.

    Call args:
        inputs: `(batch, time, features)`.
        mask: bool `(batch, time)`, True = real step; `None` = all real.

    Returns:
        `(outputs, h, c)`: outputs `(batch, time, units * directions)` with zeros at
        masked steps (directions concatenated: forward then backward), and the final
        states `(batch, units * directions)` (the state after each direction's last
        real step).
    """

    def __init__(self, units, bidirectional=True, **kwargs):
        super().__init__(**kwargs)
        self.units = units
        self.bidirectional = bidirectional
        self.directions = 2 if bidirectional else 1
        self.supports_masking = True

    def build(self, input_shape):
        d, units, features = self.directions, self.units, int(input_shape[-1])
        self.kernel = self.add_weight(name="kernel", shape=(features, d * 4 * units),
                                      initializer="glorot_uniform")
        self.recurrent_kernel = self.add_weight(name="recurrent_kernel", shape=(d, units, 4 * units),
                                                initializer="orthogonal")
        self.bias = self.add_weight(name="bias", shape=(d, 4 * units), initializer=unit_forget_bias(units, d))

    def compute_mask(self, inputs, mask=None):
        return mask

    def call(self, inputs, mask=None):
        d, units = self.directions, self.units
        batch, time = tf.shape(inputs)[0], tf.shape(inputs)[1]
        if mask is None:
            mask = tf.ones((batch, time), tf.bool)
        # All input-side matmuls at once, outside the loop.
        projection = dense_3d(inputs, self.kernel)
        projection = tf.reshape(projection, (batch, time, d, 4 * units)) + self.bias
        # |projection| = (time, directions, batch, 4 * units)
        projection = tf.transpose(projection, [1, 2, 0, 3])
        step_mask = tf.cast(tf.transpose(mask)[:, :, None], self.compute_dtype)
        # |step_mask| = (time, batch, 1): 1.0 at real steps, 0.0 at padding
        # (unstack, not `projection[:, k]`: a slice's gradient is a full-size zero
        # tensor per direction, unstack's one stack of the two)
        per_direction = tf.unstack(projection, num=d, axis=1)
        results = [self._run(per_direction[0], step_mask, self.recurrent_kernel[0])]
        if self.bidirectional:  # the backward direction reads the steps in reverse
            out, h, c = self._run(tf.reverse(per_direction[1], [0]), tf.reverse(step_mask, [0]),
                                  self.recurrent_kernel[1])
            results.append((tf.reverse(out, [0]), h, c))
        outputs, final_h, final_c = (tf.concat(parts, axis=-1) for parts in zip(*results))
        # |outputs| = (batch, time, units * directions), |final_h| = (batch, units * directions)
        return tf.transpose(outputs, [1, 0, 2]), final_h, final_c

    def _run(self, projection, step_mask, recurrent_kernel):
        """One direction's loop. The two directions are independent loops, so
        TensorFlow runs them concurrently on two cores."""
        time, batch = tf.shape(projection)[0], tf.shape(projection)[1]
        zeros = tf.zeros((batch, self.units), self.compute_dtype)
        projection, real_steps, pad_steps = unstack(projection), unstack(step_mask), unstack(1.0 - step_mask)

        def body(t, h, c, outputs):
            new_h, new_c = lstm_update(projection.read(t) + tf.matmul(h, recurrent_kernel), c)
            # Keep the old state at padding. With 0/1 factors this is exactly
            # `tf.where(real, new, old)`, in three ONNX ops instead of seven.
            real, pad = real_steps.read(t), pad_steps.read(t)
            h, c = real * new_h + pad * h, real * new_c + pad * c
            return t + 1, h, c, outputs.write(t, real * new_h)

        _, h, c, outputs = tf.while_loop(
            lambda t, *_: t < time, body,
            (tf.constant(0), zeros, zeros, tf.TensorArray(self.compute_dtype, size=time)),
            maximum_iterations=time)  # lets the gradient preallocate its accumulators
        # |outputs| = (time, batch, units)
        return outputs.stack(), h, c

    def get_config(self):
        return {**super().get_config(), "units": self.units, "bidirectional": self.bidirectional}
