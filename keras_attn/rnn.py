"""A masked (bi)LSTM layer with the input projection hoisted out of the time loop.

Keras's LSTM multiplies the input by the kernel inside its time loop; here the
input projection of both directions is one matmul over all time steps, and each
direction's loop does only the recurrent matmul. Masked steps carry the state
through unchanged, so any padding side works: the forward direction reads the
sequence as given, the backward one reads it reversed, and padding never touches a
real position's state. The loop has a hand-written backward pass
(`masked_lstm_loop`); the LSTM cell and its gradient here are shared with the
decoder's (`keras_attn.teacher_forcing`).
"""

from __future__ import annotations

import keras
import tensorflow as tf

from keras_attn.config import check_flags, check_sizes


def lstm_update(gates, c):
    """LSTM cell update from pre-activation gates `[i, f, g, o]` (Keras's order)."""
    i, f, g, o = tf.split(gates, 4, axis=-1)
    c = tf.sigmoid(f) * c + tf.sigmoid(i) * tf.tanh(g)
    return tf.sigmoid(o) * tf.tanh(c), c


def lstm_activations(gates, c):
    """Activated gates `[i, f, g, o]` and the new `(h, c)`: `lstm_update` that also
    returns what a hand-written backward pass needs (`lstm_update` stays separate so
    the exported decode step carries no unused concat)."""
    i, f, g, o = tf.split(gates, 4, axis=-1)
    i, f, g, o = tf.sigmoid(i), tf.sigmoid(f), tf.tanh(g), tf.sigmoid(o)
    c = f * c + i * g
    return tf.concat([i, f, g, o], -1), o * tf.tanh(c), c


def lstm_gate_gradients(activated, c_prev, c, dh, dc):
    """Backward of `lstm_activations`: pre-activation gate gradients and the
    gradient of `c_prev`, from the gradients `dh`, `dc` of the new `(h, c)`."""
    i, f, g, o = tf.split(activated, 4, axis=-1)
    tanh_c = tf.tanh(c)
    dc = dc + dh * o * (1 - tanh_c * tanh_c)
    dgates = tf.concat([dc * g * i * (1 - i), dc * c_prev * f * (1 - f),
                        dc * i * (1 - g * g), dh * tanh_c * o * (1 - o)], -1)
    return dgates, dc * f


def flat_matmul(a, b):
    """`Σ_t a_tᵀ b_t` for time-major `(time, batch, m)` and `(time, batch, n)`: `(m, n)`."""
    return tf.matmul(tf.reshape(a, (-1, tf.shape(a)[-1])), tf.reshape(b, (-1, tf.shape(b)[-1])),
                     transpose_a=True)


def unstack(sequence):
    """A time-major tensor as a TensorArray, to read one step per loop iteration.

    Reading `sequence[t]` inside a `tf.while_loop` would make the backward pass build
    a full-size zero gradient per step (quadratic in time); a TensorArray read's
    gradient is a single write.
    """
    return tf.TensorArray(sequence.dtype, size=tf.shape(sequence)[0]).unstack(sequence)


def compute_weight(layer, variable):
    """`variable` in `layer`'s compute dtype. Inside a layer's `call` Keras has cast
    it already (this is then a no-op); the search loops call the layers' step methods
    outside any `call`, where a mixed-bfloat16 model's float32 variables would meet
    bfloat16 activations."""
    return tf.cast(variable, layer.compute_dtype)


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
        check_sizes("MaskedLSTM", units=units)
        check_flags("MaskedLSTM", bidirectional=bidirectional)
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
        # tensor per direction, unstack's one stack of the two; the same for the kernel)
        per_direction = tf.unstack(projection, num=d, axis=1)
        recurrent = tf.unstack(self.recurrent_kernel, num=d)
        results = [self._run(per_direction[0], step_mask, recurrent[0])]
        if self.bidirectional:  # the backward direction reads the steps in reverse
            out, h, c = self._run(tf.reverse(per_direction[1], [0]), tf.reverse(step_mask, [0]), recurrent[1])
            results.append((tf.reverse(out, [0]), h, c))
        outputs, final_h, final_c = (tf.concat(parts, axis=-1) for parts in zip(*results))
        # |outputs| = (batch, time, units * directions), |final_h| = (batch, units * directions)
        return tf.transpose(outputs, [1, 0, 2]), final_h, final_c

    def _run(self, projection, step_mask, recurrent_kernel):
        """One direction's loop. The two directions are independent loops, so
        TensorFlow runs them concurrently on two cores."""
        return masked_lstm_loop(projection, step_mask, recurrent_kernel)

    def get_config(self):
        return {**super().get_config(), "units": self.units, "bidirectional": self.bidirectional}


def masked_lstm_loop(projection, step_mask, recurrent_kernel):
    """One direction of a masked LSTM from a zero state, with a hand-written backward.

    Args:
        projection: `(time, batch, 4 * units)`, the input part of the gates, bias
            included.
        step_mask: `(time, batch, 1)`, 1.0 at real steps and 0.0 at padding, where
            the state is carried through unchanged and the output is zero.
        recurrent_kernel: `(units, 4 * units)`.

    Returns:
        `(outputs, h, c)`: `(time, batch, units)` and the final `(batch, units)` pair.

    Autodiff through the loop would accumulate the recurrent kernel's gradient inside
    it (a small product and a full-size add per step) and differentiate every cell
    op; the backward loop here runs only the recurrence and writes each step's gate
    gradients, and the kernel gradient is one matmul over all steps (as
    `keras_attn.teacher_forcing` does for the decoder). `tests/test_encoder.py`
    checks it against autodiff of the plain loop.
    """
    @tf.custom_gradient
    def run(projection, recurrent_kernel):
        saved, outputs = _masked_forward(projection, step_mask, recurrent_kernel)

        def grad(d_outputs, d_h, d_c):
            return _masked_backward(saved, step_mask, recurrent_kernel, d_outputs, d_h, d_c)

        return outputs, grad

    return run(projection, recurrent_kernel)


def _masked_forward(projection, step_mask, recurrent_kernel):
    """The loop; returns what `_masked_backward` reads, and `(outputs, h, c)`."""
    time, batch, dtype = tf.shape(projection)[0], tf.shape(projection)[1], projection.dtype
    inputs, real_steps, pad_steps = unstack(projection), unstack(step_mask), unstack(1.0 - step_mask)

    def body(t, h, c, stores):
        h_prev, act, c_prev, c_new, outputs = stores
        activated, new_h, new_c = lstm_activations(inputs.read(t) + tf.matmul(h, recurrent_kernel), c)
        real, pad = real_steps.read(t), pad_steps.read(t)
        stores = (h_prev.write(t, h), act.write(t, activated), c_prev.write(t, c), c_new.write(t, new_c),
                  outputs.write(t, real * new_h))
        # Keep the old state at padding (exactly `where(real, new, old)` for 0/1 factors).
        return t + 1, real * new_h + pad * h, real * new_c + pad * c, stores

    zeros = tf.zeros((batch, tf.shape(recurrent_kernel)[0]), dtype)
    stores = tuple(tf.TensorArray(dtype, size=time) for _ in range(5))
    _, h, c, stores = tf.while_loop(lambda t, *_: t < time, body, (tf.constant(0), zeros, zeros, stores),
                                    maximum_iterations=time)
    h_prev, act, c_prev, c_new, outputs = (a.stack() for a in stores)
    # |h_prev| = |c_prev| = |c_new| = (time, batch, units), |act| = (time, batch, 4 * units)
    return {"h_prev": h_prev, "act": act, "c_prev": c_prev, "c_new": c_new}, (outputs, h, c)


def _masked_backward(saved, step_mask, recurrent_kernel, d_outputs, d_h, d_c):
    """Gradients of `projection` and `recurrent_kernel`."""
    time = tf.shape(saved["act"])[0]
    # A final state no one reads (a lower layer's) has no upstream gradient.
    d_h = tf.zeros_like(saved["h_prev"][0]) if d_h is None else d_h
    d_c = tf.zeros_like(saved["c_prev"][0]) if d_c is None else d_c
    act, c_prev, c_new = unstack(saved["act"]), unstack(saved["c_prev"]), unstack(saved["c_new"])
    d_out, real_steps = unstack(d_outputs), unstack(step_mask)
    kernel_t = tf.transpose(recurrent_kernel)

    def body(step, dh, dc, d_gates_ta):
        t = time - 1 - step
        real = real_steps.read(t)
        # h_t = real * new_h + (1 - real) * h_{t-1}, likewise c_t; output_t = real * new_h
        d_gates, dc_prev = lstm_gate_gradients(act.read(t), c_prev.read(t), c_new.read(t),
                                               real * (d_out.read(t) + dh), real * dc)
        dh_prev = tf.matmul(d_gates, kernel_t) + (1.0 - real) * dh
        return step + 1, dh_prev, dc_prev + (1.0 - real) * dc, d_gates_ta.write(t, d_gates)

    _, _, _, d_gates = tf.while_loop(
        lambda step, *_: step < time, body,
        (tf.constant(0), d_h, d_c, tf.TensorArray(saved["act"].dtype, size=time)), maximum_iterations=time)
    d_gates = d_gates.stack()
    # |d_gates| = (time, batch, 4 * units): the projection's gradient
    return d_gates, flat_matmul(saved["h_prev"], d_gates)
