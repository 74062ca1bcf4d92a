"""The teacher-forced input-feeding decoder loop, with a hand-written backward pass.

Autodiff through a `tf.while_loop` accumulates every weight gradient inside the loop:
at each step a small `(in, batch) @ (batch, out)` product plus a full-size add into
the accumulator, for the LSTM kernels, the combine layer and the `(batch, src_len,
dim)` attention keys and memory. Here the backward loop does only what must be
sequential (the recurrence) and writes each step's gate, attention and combine
gradients; every weight, key and memory gradient is then one large matmul over all
steps, outside the loop (what cuDNN does for its RNNs).

The math is `InputFeedingDecoder`'s step, for a linear attention score (`general`
or `dot`: `energy = h_t · keys`):

    gates_l  = [x_l; h_l] K_l + b_l    (x_0 = h̃_{t-1}, the embedding part is `P_t`)
    c_l, h_l = LSTM(gates_l, c_l)
    a_t      = masked_softmax(h_top · keysᵀ),  ctx_t = a_t · memory
    h̃_t      = tanh([ctx_t; h_top] W_c + b_c) * keep_t     (keep: dropout mask or 1)

`tests/test_teacher_forcing.py` checks every gradient against autodiff of the
plain loop.
"""

from __future__ import annotations

import tensorflow as tf

from keras_attn.attention import masked_softmax
from keras_attn.rnn import flat_matmul, lstm_activations, lstm_gate_gradients, unstack


def teacher_forced_loop(projections, h0, c0, kernels, biases, keys, memory, mask,
                        combine_kernel, combine_bias, keep=None):
    """Run the decoder over a teacher-forced sequence.

    Args:
        projections: `(tgt_len, batch, 4 * units)`, the embedding part of layer 0's
            gates, its bias included.
        h0, c0: lists (one per layer) of `(batch, units)` initial states.
        kernels: list per layer of `(in_l + units, 4 * units)`; layer 0's `in` is the
            fed-back h̃ (`units`), layer l's the layer below's h.
        biases: list of `(4 * units,)` for layers 1.. (layer 0's is in `projections`).
        keys: `(batch, src_len, units)`; memory: `(batch, src_len, memory_dim)`;
        mask: `(batch, src_len)`, 0/1 in the compute dtype.
        combine_kernel: `(memory_dim + units, units)`; combine_bias: `(units,)`.
        keep: optional `(tgt_len, batch, units)` dropout keep-and-scale factors.

    Returns:
        `(attentional, weights)`: `(tgt_len, batch, units)` and `(tgt_len, batch, src_len)`.
    """
    layers = len(kernels)
    has_keep = keep is not None
    if not has_keep:
        keep = tf.zeros((), projections.dtype)  # placeholder; custom_gradient needs tensors

    @tf.custom_gradient
    def run(projections, keys, memory, keep, combine_kernel, combine_bias, *states_and_weights):
        h0 = list(states_and_weights[:layers])
        c0 = list(states_and_weights[layers: 2 * layers])
        kernels = list(states_and_weights[2 * layers: 3 * layers])
        biases = list(states_and_weights[3 * layers:])
        saved, outputs = _forward(projections, h0, c0, kernels, biases, keys, memory, mask,
                                  combine_kernel, combine_bias, keep if has_keep else None)

        def grad(d_attentional, d_weights):
            return _backward(saved, d_attentional, d_weights, h0, c0, kernels, keys, memory,
                             combine_kernel, keep if has_keep else None)

        return outputs, grad

    return run(projections, keys, memory, keep, combine_kernel, combine_bias, *h0, *c0, *kernels, *biases)


def _forward(projections, h0, c0, kernels, biases, keys, memory, mask, combine_kernel, combine_bias, keep):
    """The loop; returns what the backward pass reads, and `(attentional, weights)`."""
    layers, length, dtype = len(kernels), tf.shape(projections)[0], projections.dtype
    inputs_ta, keep_ta = unstack(projections), None if keep is None else unstack(keep)

    def arrays():
        return [tf.TensorArray(dtype, size=length) for _ in range(layers)]

    def body(t, feed, h, c, stores):
        z, act, cs, weights_ta, combined_ta, pre_ta = stores
        layer_input, new_h, new_c = feed, [], []
        for layer in range(layers):
            # |z| = (batch, in_l + units), |gates| = (batch, 4 * units)
            z_l = tf.concat([layer_input, h[layer]], -1)
            gates = tf.matmul(z_l, kernels[layer])
            gates += inputs_ta.read(t) if layer == 0 else biases[layer - 1]
            activated, h_l, c_l = lstm_activations(gates, c[layer])
            z[layer], act[layer], cs[layer] = (z[layer].write(t, z_l), act[layer].write(t, activated),
                                               cs[layer].write(t, c_l))
            new_h.append(h_l)
            new_c.append(c_l)
            layer_input = h_l
        # |weights| = (batch, src_len), |context| = (batch, memory_dim)
        weights = masked_softmax(tf.matmul(layer_input[:, None, :], keys, transpose_b=True)[:, 0], mask)
        context = tf.matmul(weights[:, None, :], memory)[:, 0]
        combined = tf.concat([context, layer_input], -1)
        # |pre| = (batch, units): tanh output before dropout
        pre = tf.tanh(tf.matmul(combined, combine_kernel) + combine_bias)
        attentional = pre if keep_ta is None else pre * keep_ta.read(t)
        stores = (z, act, cs, weights_ta.write(t, weights), combined_ta.write(t, combined), pre_ta.write(t, pre))
        return t + 1, attentional, new_h, new_c, stores

    units = tf.shape(h0[0])[-1]
    feed = tf.zeros((tf.shape(projections)[1], units), dtype)
    stores = (arrays(), arrays(), arrays(), *(tf.TensorArray(dtype, size=length) for _ in range(3)))
    _, _, _, _, stores = tf.while_loop(lambda t, *_: t < length, body, (tf.constant(0), feed, h0, c0, stores),
                                       maximum_iterations=length)
    z, act, cs, weights, combined, pre = stores
    saved = {"z": [a.stack() for a in z], "act": [a.stack() for a in act], "c": [a.stack() for a in cs],
             "weights": weights.stack(), "combined": combined.stack(), "pre": pre.stack()}
    attentional = saved["pre"] if keep is None else saved["pre"] * keep
    return saved, (attentional, saved["weights"])


def _backward(saved, d_attentional, d_weights, h0, c0, kernels, keys, memory, combine_kernel, keep):
    """Gradients for `run`'s inputs, in its argument order."""
    memory_dim = tf.shape(memory)[-1]
    if d_weights is None:
        d_weights = tf.zeros_like(saved["weights"])
    dh0, dc0, d_gates, d_tanh, d_energy, d_context = _backward_loop(
        saved, d_attentional, d_weights, h0, c0, kernels, keys, memory, memory_dim, combine_kernel, keep)
    # Everything below is one matmul (or sum) over all steps.
    d_kernels = [flat_matmul(z, g) for z, g in zip(saved["z"], d_gates, strict=True)]
    d_biases = [tf.reduce_sum(g, [0, 1]) for g in d_gates[1:]]
    d_combine_kernel = flat_matmul(saved["combined"], d_tanh)
    d_combine_bias = tf.reduce_sum(d_tanh, [0, 1])
    top_h = saved["combined"][:, :, memory_dim:]
    # |d_keys| = (batch, src_len, units), |d_memory| = (batch, src_len, memory_dim)
    d_keys = tf.matmul(tf.transpose(d_energy, [1, 2, 0]), tf.transpose(top_h, [1, 0, 2]))
    d_memory = tf.matmul(tf.transpose(saved["weights"], [1, 2, 0]), tf.transpose(d_context, [1, 0, 2]))
    return (d_gates[0], d_keys, d_memory, None,  # keep (dropout mask or placeholder): no gradient
            d_combine_kernel, d_combine_bias, *dh0, *dc0, *d_kernels, *d_biases)


def _backward_loop(saved, d_attentional, d_weights, h0, c0, kernels, keys, memory, memory_dim, combine_kernel,
                   keep):
    """The sequential part of the backward pass, last step first: returns the initial
    states' gradients `dh0, dc0` (lists per layer) and every step's gate (list per
    layer), tanh, energy and context gradients, each `(tgt_len, batch, ...)`.
    `memory_dim`: the width of `memory`, where `combined` splits into context and h."""
    layers, dtype, length = len(kernels), saved["pre"].dtype, tf.shape(saved["pre"])[0]
    reads = {name: unstack(saved[name]) for name in ("weights", "pre")}
    act_ta = [unstack(a) for a in saved["act"]]
    c_ta = [unstack(c) for c in saved["c"]]
    # |c_prev| = (time, batch, units): each step's incoming cell state
    c_prev_ta = [unstack(tf.concat([c0_l[None], c[:-1]], 0)) for c0_l, c in zip(c0, saved["c"], strict=True)]
    d_out_ta, d_weights_ta = unstack(d_attentional), unstack(d_weights)
    keep_ta = None if keep is None else unstack(keep)
    # Transposed once, outside the loop: at the recipe's ~13-row batches 20 steps of
    # `d_gates @ kernel_t` (1,024 x 2,048) took 10.7-10.9 ms, with `transpose_b=True` 17.7-18.0.
    combine_t = tf.transpose(combine_kernel)
    kernels_t = [tf.transpose(k) for k in kernels]

    def body(step, d_feed, dh, dc, stores):
        t = length - 1 - step
        d_gates_ta, d_tanh_ta, d_energy_ta, d_context_ta = stores
        d_att = d_out_ta.read(t) + d_feed
        if keep_ta is not None:
            d_att *= keep_ta.read(t)
        pre = reads["pre"].read(t)
        d_tanh = d_att * (1 - pre * pre)  # |d_tanh| = (batch, units)
        d_combined = tf.matmul(d_tanh, combine_t)
        d_context, d_top = d_combined[:, :memory_dim], d_combined[:, memory_dim:]
        weights = reads["weights"].read(t)
        # |d_a| = (batch, src_len); softmax backward (masked positions have weight 0)
        d_a = tf.matmul(d_context[:, None, :], memory, transpose_b=True)[:, 0] + d_weights_ta.read(t)
        d_energy = weights * (d_a - tf.reduce_sum(weights * d_a, -1, keepdims=True))
        d_below = d_top + tf.matmul(d_energy[:, None, :], keys)[:, 0]
        new_dh, new_dc, d_gates_ta = list(dh), list(dc), list(d_gates_ta)
        for layer in reversed(range(layers)):
            d_gates, new_dc[layer] = lstm_gate_gradients(act_ta[layer].read(t), c_prev_ta[layer].read(t),
                                                    c_ta[layer].read(t),
                                                    d_below + dh[layer], dc[layer])
            d_gates_ta[layer] = d_gates_ta[layer].write(t, d_gates)
            d_z = tf.matmul(d_gates, kernels_t[layer])
            split = tf.shape(d_z)[-1] - tf.shape(dh[layer])[-1]
            d_below, new_dh[layer] = d_z[:, :split], d_z[:, split:]
        stores = (d_gates_ta, d_tanh_ta.write(t, d_tanh), d_energy_ta.write(t, d_energy),
                  d_context_ta.write(t, d_context))
        return step + 1, d_below, new_dh, new_dc, stores

    zeros = [tf.zeros_like(h) for h in h0]
    stores = ([tf.TensorArray(dtype, size=length) for _ in range(layers)],
              *(tf.TensorArray(dtype, size=length) for _ in range(3)))
    _, _, dh0, dc0, stores = tf.while_loop(
        lambda step, *_: step < length, body,
        (tf.constant(0), tf.zeros_like(d_attentional[0]), zeros, list(zeros), stores),
        maximum_iterations=length)
    return (dh0, dc0, [a.stack() for a in stores[0]], stores[1].stack(), stores[2].stack(), stores[3].stack())
