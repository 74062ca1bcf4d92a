import numpy as np
import pytest
import tensorflow as tf

from keras_attn import InputFeedingDecoder, Seq2Seq
from tests.helpers import random_ids, tiny_config


@pytest.mark.parametrize("layers,score", [(1, "general"), (2, "concat"), (1, "dot")])
def test_one_step_path_reproduces_teacher_forced_logits(layers, score):
    rng = np.random.default_rng(1)
    units = 16 if score == "dot" else 12  # dot needs decoder units == memory width
    model = Seq2Seq(tiny_config(decoder_layers=layers, attention=score, decoder_units=units))
    source = random_ids(rng, [6, 3, 8], 30, pre_pad=True)
    target_in = random_ids(rng, [5, 7, 2], 25, pre_pad=False)
    target_in[:, 0] = 2  # BOS
    logits = model({"source": source, "target_in": target_in}).numpy()

    memory, mask, states = model.encoder(source)
    decoder = model.decoder
    keys = decoder.attention.memory_keys(memory)
    state = decoder.initial_state(states, 3)
    for t in range(target_in.shape[1]):
        step_logits, weights, state = decoder.step(tf.constant(target_in[:, t]), state, keys, memory, mask)
        np.testing.assert_allclose(step_logits.numpy(), logits[:, t], atol=1e-5, rtol=1e-5)
        np.testing.assert_allclose(weights.numpy().sum(-1), 1.0, atol=1e-5)


def test_folded_embedding_table_gives_the_same_steps():
    """`step_weights(fold_embeddings=True)`: a step gathers embedding · kernel + bias
    from a per-token table instead of multiplying; same logits, attention and state."""
    rng = np.random.default_rng(4)
    model = Seq2Seq(tiny_config(decoder_layers=2))
    model.build()
    source = random_ids(rng, [6, 3, 8], 30, pre_pad=True)
    memory, mask, states = model.encoder(source)
    decoder = model.decoder
    keys = decoder.attention.memory_keys(memory)
    table = decoder.step_weights(fold_embeddings=True)["input_table"]
    assert table.shape == (model.config.tgt_vocab_size, 4 * decoder.units)
    plain, folded = decoder.initial_state(states, 3), decoder.initial_state(states, 3)
    for _ in range(4):
        y = tf.constant(rng.integers(1, 25, size=3), tf.int32)
        logits, weights, plain = decoder.step(y, plain, keys, memory, mask, decoder.step_weights())
        f_logits, f_weights, folded = decoder.step(y, folded, keys, memory, mask,
                                                   decoder.step_weights(fold_embeddings=True))
        np.testing.assert_allclose(f_logits.numpy(), logits.numpy(), atol=1e-5, rtol=1e-5)
        np.testing.assert_allclose(f_weights.numpy(), weights.numpy(), atol=1e-6)
        np.testing.assert_allclose(folded["c"][0].numpy(), plain["c"][0].numpy(), atol=1e-5)


def test_input_feeding_changes_the_next_step():
    """h̃_{t-1} really enters step t: zeroing the feed weights changes logits after t=0."""
    rng = np.random.default_rng(2)
    model = Seq2Seq(tiny_config())
    inputs = {"source": random_ids(rng, [4, 4], 30, True), "target_in": random_ids(rng, [5, 5], 25, False)}
    before = model(inputs).numpy()
    kernel = model.decoder.lstm_kernels[0]
    value = kernel.numpy()
    value[model.config.embedding_dim:] = 0.0
    kernel.assign(value)
    after = model(inputs).numpy()
    np.testing.assert_allclose(after[:, 0], before[:, 0], atol=1e-6)
    assert np.abs(after[:, 1:] - before[:, 1:]).max() > 1e-4


def test_dropout_is_active_only_in_training():
    rng = np.random.default_rng(3)
    model = Seq2Seq(tiny_config(dropout=0.5))
    inputs = {"source": random_ids(rng, [4, 6], 30, True), "target_in": random_ids(rng, [5, 3], 25, False)}
    np.testing.assert_array_equal(model(inputs).numpy(), model(inputs).numpy())
    assert np.abs(model(inputs, training=True).numpy() - model(inputs).numpy()).max() > 1e-4


def test_decoder_config_round_trip():
    dec = InputFeedingDecoder(25, 8, 12, 2, "concat", 0.2)
    assert InputFeedingDecoder.from_config(dec.get_config()).get_config() == dec.get_config()


def test_word_dropout_drops_whole_target_tokens_in_training():
    decoder = InputFeedingDecoder(25, 8, 12, word_dropout=0.5)
    decoder.build((None, None), (None, None, 16))
    tokens = np.full((4, 40), 5, np.int32)
    kernel, bias = decoder.step_weights()["input"], decoder.lstm_biases[0].numpy()
    full = decoder._input_projection(tokens, kernel).numpy() - bias
    dropped = decoder._input_projection(tokens, kernel, training=True).numpy() - bias
    # |full| = |dropped| = (4, 40, 4 * units): a dropped token leaves only the bias
    gone = np.all(np.abs(dropped) < 1e-6, axis=-1)
    np.testing.assert_allclose(dropped[~gone], 2 * full[~gone], rtol=1e-5, atol=1e-6)
    assert 0.3 < gone.mean() < 0.7


@pytest.mark.parametrize("score", ["general", "concat"])
def test_search_runs_under_mixed_bfloat16_and_scores_what_teacher_forcing_scores(score):
    """The search loops call the layers' step methods outside any Keras `call`, where
    a mixed-bfloat16 model's float32 variables are not autocast (this used to raise a
    dtype error in validation BLEU). Greedy must pick, at every step, the token the
    teacher-forced model ranks first, and both searches must report the log-prob the
    teacher-forced model gives their output (up to bfloat16 rounding)."""
    import keras

    from keras_attn.search import InferenceModel

    rng = np.random.default_rng(5)
    source = random_ids(rng, [6, 3, 8, 5], 30, pre_pad=True)
    keras.mixed_precision.set_global_policy("mixed_bfloat16")
    try:
        model = Seq2Seq(tiny_config(attention=score))
        model.build()
        assert model.decoder.compute_dtype == "bfloat16"
        inference = InferenceModel(model)
        outputs = {beam: inference.translate_ids(source, 9, beam, alpha=0.0) for beam in (1, 3)}
        scored = {}
        for beam, out in outputs.items():
            ids = out["ids"].numpy()
            target_in = np.concatenate([np.full((len(ids), 1), model.config.bos_id, np.int32), ids[:, :-1]], 1)
            logits = model({"source": source, "target_in": target_in}).numpy().astype("float64")
            scored[beam] = (ids, logits, out["log_probs"].numpy())
    finally:
        keras.mixed_precision.set_global_policy("float32")
    for beam, (ids, logits, reported) in scored.items():
        log_probs = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
        for row in range(len(ids)):
            length = list(ids[row]).index(model.config.eos_id) + 1 if model.config.eos_id in ids[row] else ids.shape[1]
            chosen = log_probs[row, np.arange(length), ids[row, :length]]
            assert abs(chosen.sum() - reported[row]) <= 0.02 * length, (beam, row)
            if beam == 1:  # greedy: each token is the best one, up to bf16 rounding
                assert np.all(chosen >= log_probs[row, :length].max(-1) - 0.02), row


def test_generator_gradients_under_mixed_bfloat16_match_float32():
    """A bfloat16 bias add sums its gradient over every target position in bfloat16,
    which drops the many small softmax terms (a Keras `Dense` under the policy was
    ~35 % off here). The generator adds its bias in float32, so both gradients match
    float32 to bfloat16 rounding, and its logits are float32."""
    import keras

    from keras_attn.decoder import Generator
    from keras_attn.model import MaskedSparseCrossEntropy

    rng = np.random.default_rng(0)
    units, vocab = 64, 1000
    h = rng.normal(size=(64, 40, units)).astype("float32")  # 2,560 target positions
    labels = rng.zipf(1.3, size=(64, 40)).clip(1, vocab - 1).astype("int32")  # word-like frequencies
    weights = [rng.normal(size=(units, vocab)).astype("float32") * 0.3, rng.normal(size=vocab).astype("float32")]

    def gradients(policy):
        keras.mixed_precision.set_global_policy(policy)
        try:
            layer = Generator(vocab)
            layer.build((None, units))
        finally:
            keras.mixed_precision.set_global_policy("float32")
        layer.set_weights(weights)
        with tf.GradientTape() as tape:
            logits = layer(h)
            loss = MaskedSparseCrossEntropy(0, 0.1)(labels, logits)
        assert logits.dtype == tf.float32
        return [g.numpy().astype("float64") for g in tape.gradient(loss, [layer.kernel, layer.bias])]

    for got, want in zip(gradients("mixed_bfloat16"), gradients("float32"), strict=True):
        assert np.linalg.norm(got - want) / np.linalg.norm(want) < 0.02


def test_generator_is_a_dense_layer_in_float32_and_round_trips():
    import keras

    from keras_attn import Generator

    rng = np.random.default_rng(1)
    layer = Generator(7, name="gen")
    layer.build((None, 5))
    layer.set_weights([rng.normal(size=(5, 7)).astype("float32"), rng.normal(size=7).astype("float32")])
    h = rng.normal(size=(2, 3, 5)).astype("float32")
    want = h @ layer.kernel.numpy() + layer.bias.numpy()
    np.testing.assert_allclose(layer(h).numpy(), want, rtol=1e-5, atol=1e-5)
    restored = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(layer))
    assert isinstance(restored, Generator) and restored.get_config() == layer.get_config()
