"""The hand-written backward pass of the teacher-forced decoder loop equals autodiff."""

import numpy as np
import pytest
import tensorflow as tf

from keras_attn.decoder import InputFeedingDecoder


def _inputs(layers, seed=0):
    rng = np.random.default_rng(seed)
    batch, src_len, tgt_len, units, memory_dim = 5, 7, 6, 8, 6
    decoder = InputFeedingDecoder(vocab_size=13, embedding_dim=4, units=units, num_layers=layers)
    decoder.build((batch, tgt_len), (batch, src_len, memory_dim))
    for weight in decoder.weights:  # non-trivial biases too
        weight.assign(weight + rng.normal(0, 0.3, weight.shape).astype("float32"))
    memory = tf.constant(rng.normal(size=(batch, src_len, memory_dim)), tf.float32)
    # Pre-padded rows of different lengths, and one row with no valid key at all.
    lengths = np.array([7, 5, 3, 1, 0])
    mask = tf.constant(np.arange(src_len)[None, :] >= src_len - lengths[:, None], tf.float32)
    memory *= mask[:, :, None]
    projections = tf.constant(rng.normal(size=(tgt_len, batch, 4 * units)), tf.float32)
    states = [[tf.constant(rng.normal(size=(batch, units)), tf.float32) for _ in range(2)] for _ in range(layers)]
    keep = tf.constant((rng.random((tgt_len, batch, units)) > 0.3) / 0.7, tf.float32)
    upstream = [tf.constant(rng.normal(size=(tgt_len, batch, d)), tf.float32) for d in (units, src_len)]
    return decoder, projections, states, memory, mask, keep, upstream


def _gradients(decoder, projections, states, memory, mask, keep, upstream, hand_written):
    sources = [projections, memory, *[t for pair in states for t in pair]]
    with tf.GradientTape() as tape:
        tape.watch(sources)
        weights = decoder.step_weights()
        keys = decoder.attention.memory_keys(memory)
        initial = decoder.initial_state(states, tf.shape(memory)[0])
        loop = decoder._hand_written_loop if hand_written else decoder._autodiff_loop
        outputs, attention = loop(projections, initial, weights["state"], keys, memory, mask, keep)
        # A scalar that reaches every output: outputs and attention weights both matter.
        loss = tf.reduce_sum(outputs * upstream[0]) + tf.reduce_sum(attention * upstream[1])
    grads = tape.gradient(loss, sources + decoder.trainable_weights)
    return outputs, attention, grads


@pytest.mark.parametrize("layers, use_keep", [(1, True), (1, False), (2, True)])
def test_hand_written_backward_equals_autodiff(layers, use_keep):
    decoder, projections, states, memory, mask, keep, upstream = _inputs(layers)
    keep = keep if use_keep else None
    out_a, att_a, grads_a = _gradients(decoder, projections, states, memory, mask, keep, upstream, False)
    out_h, att_h, grads_h = _gradients(decoder, projections, states, memory, mask, keep, upstream, True)
    np.testing.assert_allclose(out_h, out_a, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(att_h, att_a, rtol=1e-5, atol=1e-6)
    names = ["projections", "memory"] + [f"state_{i}" for i in range(2 * layers)] + [
        w.path for w in decoder.trainable_weights]
    checked = 0
    for name, hand, auto in zip(names, grads_h, grads_a, strict=True):
        if auto is None:  # weights the loop does not use (the embedding, the generator)
            assert hand is None, name
            continue
        hand, auto = tf.convert_to_tensor(hand).numpy(), tf.convert_to_tensor(auto).numpy()
        assert np.abs(auto).max() > 0, name
        np.testing.assert_allclose(hand, auto, rtol=1e-4, atol=1e-5, err_msg=name)
        checked += 1
    # projections, memory, states, 2 LSTM kernels + bias per layer, attention kernel, combine W/b
    assert checked == 2 + 2 * layers + 3 * layers + 3 - 1
    # The all-padding row gets no attention and no memory gradient, and stays finite.
    assert np.all(att_h[:, 4] == 0) and np.all(np.isfinite(grads_h[1]))
    assert np.all(grads_h[1][4] == 0)


def _model_gradients(model, inputs, target):
    with tf.GradientTape() as tape:
        loss = model.loss(target, model(inputs, training=False))
    return [tf.convert_to_tensor(g).numpy().astype("float32")
            for g in tape.gradient(loss, model.trainable_weights)]


def test_mixed_bfloat16_training_step_uses_the_hand_written_backward_and_agrees(monkeypatch):
    """Under mixed bfloat16 (bf16 math, float32 weights) the hand-written backward
    passes (decoder and encoder) run and give autodiff's gradients up to bf16 rounding."""
    import keras

    from keras_attn import Seq2Seq, rnn
    from tests.helpers import autodiff_masked_lstm_loop, random_ids, tiny_config

    rng = np.random.default_rng(3)
    inputs = {"source": random_ids(rng, [6, 3, 8, 5], 30, pre_pad=True),
              "target_in": random_ids(rng, [5, 7, 2, 6], 25, pre_pad=False)}
    target = random_ids(rng, [5, 7, 2, 6], 25, pre_pad=False)
    keras.mixed_precision.set_global_policy("mixed_bfloat16")
    try:
        model = Seq2Seq(tiny_config())
        model.build()
        model.compile_for_training(label_smoothing=0.1)
        assert model.decoder.compute_dtype == "bfloat16"
        calls = []
        hand_written = InputFeedingDecoder._hand_written_loop
        monkeypatch.setattr(InputFeedingDecoder, "_hand_written_loop",
                            lambda self, *a: calls.append(1) or hand_written(self, *a))
        hand = _model_gradients(model, inputs, target)
        assert calls, "the general score did not take the hand-written loop"
        monkeypatch.setattr(InputFeedingDecoder, "_hand_written_loop", InputFeedingDecoder._autodiff_loop)
        monkeypatch.setattr(rnn, "masked_lstm_loop", autodiff_masked_lstm_loop)  # the encoder's too
        auto = _model_gradients(model, inputs, target)
    finally:
        keras.mixed_precision.set_global_policy("float32")
    for weight, h, a in zip(model.trainable_weights, hand, auto, strict=True):
        assert np.all(np.isfinite(h)), weight.path
        # bf16 keeps 8 bits of mantissa: compare whole tensors, relative to their size.
        assert np.linalg.norm(h - a) <= 0.02 * np.linalg.norm(a) + 1e-6, weight.path
