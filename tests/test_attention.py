import keras
import numpy as np
import pytest
import tensorflow as tf

from keras_attn import LuongAttention, masked_softmax


def np_masked_softmax(scores, mask):
    out = np.zeros_like(scores)
    for idx in np.ndindex(scores.shape[:-1]):
        row, valid = scores[idx], mask[idx]
        if valid.any():
            e = np.exp(row[valid] - row[valid].max())
            out[idx][valid] = e / e.sum()
    return out


def np_attention(score, layer, query, memory, mask):
    w = {v.path.split("/")[-1]: v.numpy() for v in layer.weights}
    if score == "general":
        energy = (query @ w["kernel"]) @ memory.transpose(0, 2, 1)
    elif score == "dot":
        energy = query @ memory.transpose(0, 2, 1)
    else:
        hidden = np.tanh((query @ w["query_kernel"])[:, :, None, :]
                         + (memory @ w["memory_kernel"] + w["bias"])[:, None, :, :])
        energy = hidden @ w["v"]
    weights = np_masked_softmax(energy, np.broadcast_to(mask[:, None, :], energy.shape))
    return weights @ memory, weights


def random_case(seed, q_dim=6, m_dim=6):
    rng = np.random.default_rng(seed)
    query = rng.normal(size=(3, 4, q_dim)).astype(np.float32)
    memory = rng.normal(size=(3, 5, m_dim)).astype(np.float32)
    mask = rng.random((3, 5)) > 0.4
    mask[0, 0] = True
    mask[1] = False  # a row with no valid key
    return query, memory, mask


@pytest.mark.parametrize("score", ["general", "dot", "concat"])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_attention_matches_numpy_reference(score, seed):
    m_dim = 6 if score == "dot" else 7
    query, memory, mask = random_case(seed, m_dim=m_dim)
    layer = LuongAttention(score)
    context, weights = layer(query, memory, mask=mask)
    ref_context, ref_weights = np_attention(score, layer, query, memory, mask)
    assert context.shape == (3, 4, m_dim) and weights.shape == (3, 4, 5)
    np.testing.assert_allclose(weights.numpy(), ref_weights, atol=1e-5)
    np.testing.assert_allclose(context.numpy(), ref_context, atol=1e-5)
    # masked keys get exactly zero weight; the fully masked row is all zeros
    assert np.all(weights.numpy()[~np.broadcast_to(mask[:, None, :], (3, 4, 5))] == 0.0)
    assert np.all(context.numpy()[1] == 0.0) and np.all(weights.numpy()[1] == 0.0)


@pytest.mark.parametrize("score", ["general", "dot", "concat"])
def test_attention_gradients_are_finite_with_fully_masked_row(score):
    query, memory, mask = random_case(3)
    layer = LuongAttention(score)
    query, memory = tf.constant(query), tf.constant(memory)
    with tf.GradientTape() as tape:
        tape.watch([query, memory])
        context, _ = layer(query, memory, mask=mask)
        loss = tf.reduce_sum(context ** 2)
    grads = tape.gradient(loss, [query, memory] + layer.trainable_weights)
    for g in grads:
        assert np.all(np.isfinite(g.numpy()))
    assert np.any(grads[0].numpy() != 0)


def test_single_step_query_equals_one_step_sequence():
    query, memory, mask = random_case(4, m_dim=9)
    layer = LuongAttention("general")
    ctx_seq, w_seq = layer(query, memory, mask=mask)
    ctx_step, w_step = layer(query[:, 2], memory, mask=mask)
    assert ctx_step.shape == (3, 9) and w_step.shape == (3, 5)
    np.testing.assert_allclose(ctx_step.numpy(), ctx_seq.numpy()[:, 2], atol=1e-6)
    np.testing.assert_allclose(w_step.numpy(), w_seq.numpy()[:, 2], atol=1e-6)


def test_general_kernel_projects_the_query_into_memory_space():
    query, memory, mask = random_case(5, q_dim=4, m_dim=9)
    layer = LuongAttention("general")
    layer(query, memory, mask=mask)
    assert tuple(layer.kernel.shape) == (4, 9)


def test_masked_softmax_values_and_gradients():
    scores = tf.constant([[1.0, 2.0, 3.0], [5.0, -1.0, 0.0], [0.0, 0.0, 0.0]])
    mask = tf.constant([[True, False, True], [False, False, False], [True, True, True]])
    with tf.GradientTape() as tape:
        tape.watch(scores)
        probs = masked_softmax(scores, mask)
        loss = tf.reduce_sum(probs * tf.constant([[1.0, 2.0, 3.0]]))
    e = np.exp([1.0 - 3.0, 0.0])
    np.testing.assert_allclose(probs.numpy()[0], [e[0] / e.sum(), 0.0, e[1] / e.sum()], rtol=1e-6)
    assert probs.numpy()[0, 1] == 0.0
    np.testing.assert_array_equal(probs.numpy()[1], [0.0, 0.0, 0.0])
    np.testing.assert_allclose(probs.numpy()[2], [1 / 3] * 3, rtol=1e-6)
    assert np.all(np.isfinite(tape.gradient(loss, scores).numpy()))


def test_masked_softmax_float16_fully_masked_row_is_zero_not_nan():
    probs = masked_softmax(tf.constant([[1.0, 2.0]], tf.float16), tf.constant([[False, False]]))
    np.testing.assert_array_equal(probs.numpy(), [[0.0, 0.0]])


def test_attention_config_round_trip():
    layer = LuongAttention("concat", units=5, name="att")
    clone = LuongAttention.from_config(layer.get_config())
    assert clone.get_config() == layer.get_config()
    restored = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(layer))
    assert isinstance(restored, LuongAttention) and restored.score == "concat" and restored.units == 5


def test_bad_arguments_raise_clear_errors():
    with pytest.raises(ValueError, match="score must be"):
        LuongAttention("bilinear")
    with pytest.raises(ValueError, match="q_dim == m_dim"):
        LuongAttention("dot")(np.zeros((1, 2, 3), np.float32), np.zeros((1, 4, 5), np.float32))
