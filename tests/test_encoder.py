import keras
import numpy as np
import pytest
import tensorflow as tf

from keras_attn import Encoder
from keras_attn.rnn import MaskedLSTM, masked_lstm_loop
from tests.helpers import autodiff_masked_lstm_loop, random_ids


def make_encoder(layers=2, bidirectional=True):
    enc = Encoder(vocab_size=30, embedding_dim=8, units=6, num_layers=layers,
                  bidirectional=bidirectional, decoder_units=10, decoder_layers=2)
    enc.build((None, None))
    return enc


@pytest.mark.parametrize("bidirectional", [True, False])
def test_masked_lstm_matches_keras_lstm_on_unpadded_input(bidirectional):
    rng = np.random.default_rng(5)
    x = rng.normal(size=(3, 7, 4)).astype(np.float32)
    ours = MaskedLSTM(5, bidirectional)
    outputs, h, c = ours(x)
    k, r, b = ours.kernel.numpy(), ours.recurrent_kernel.numpy(), ours.bias.numpy()
    for d in range(2 if bidirectional else 1):
        ref = keras.layers.LSTM(5, return_sequences=True, return_state=True, go_backwards=d == 1)
        ref.build((3, 7, 4))
        ref.set_weights([k[:, d * 20:(d + 1) * 20], r[d], b[d]])
        ref_out, ref_h, ref_c = (t.numpy() for t in ref(x))
        if d == 1:
            ref_out = ref_out[:, ::-1]
        np.testing.assert_allclose(outputs.numpy()[:, :, d * 5:(d + 1) * 5], ref_out, atol=1e-5)
        np.testing.assert_allclose(h.numpy()[:, d * 5:(d + 1) * 5], ref_h, atol=1e-5)
        np.testing.assert_allclose(c.numpy()[:, d * 5:(d + 1) * 5], ref_c, atol=1e-5)


@pytest.mark.parametrize("bidirectional", [True, False])
def test_encoder_is_invariant_to_padding_side_and_batch_neighbours(bidirectional):
    rng = np.random.default_rng(0)
    enc = make_encoder(bidirectional=bidirectional)
    sentence = random_ids(rng, [5], 30, pre_pad=True)[0]
    alone_memory, alone_mask, alone_states = enc(sentence[None])
    lengths = [5, 9, 2, 7]
    for pre_pad in (True, False):
        batch = random_ids(rng, lengths, 30, pre_pad=pre_pad, width=11)
        batch[0] = 0
        if pre_pad:
            batch[0, -5:] = sentence
        else:
            batch[0, :5] = sentence
        memory, mask, states = enc(batch)
        real = slice(11 - 5, 11) if pre_pad else slice(0, 5)
        assert memory.shape == (4, 11, 12 if bidirectional else 6)
        np.testing.assert_array_equal(mask.numpy()[0, real], True)
        np.testing.assert_allclose(memory.numpy()[0, real], alone_memory.numpy()[0], atol=1e-5)
        # padding positions of the memory are exactly zero
        assert np.all(memory.numpy()[0][~mask.numpy()[0]] == 0.0)
        assert len(states) == 2
        for (h, c), (h1, c1) in zip(states, alone_states, strict=False):
            assert h.shape == (4, 10)
            np.testing.assert_allclose(h.numpy()[0], h1.numpy()[0], atol=1e-5)
            np.testing.assert_allclose(c.numpy()[0], c1.numpy()[0], atol=1e-5)


def test_encoder_config_round_trip():
    enc = make_encoder()
    clone = Encoder.from_config(enc.get_config())
    assert clone.get_config() == enc.get_config()


def test_word_dropout_zeroes_whole_tokens_in_training_only():
    from keras_attn.rnn import drop_tokens

    embedded = np.ones((4, 50, 8), np.float32)
    dropped = drop_tokens(embedded, 0.5, keras.random.SeedGenerator(0)).numpy()
    per_token = dropped.reshape(-1, 8)
    assert np.all((per_token == 0).all(-1) | (per_token == 2.0).all(-1))  # a token goes whole, or stays scaled
    assert 0.35 < (per_token == 0).all(-1).mean() < 0.65

    rng = np.random.default_rng(3)
    plain, with_words = make_encoder(), Encoder(**{**make_encoder().get_config(), "word_dropout": 0.5})
    with_words.build((None, None))
    with_words.set_weights(plain.get_weights())
    source = random_ids(rng, [5, 3], 30, pre_pad=True)
    np.testing.assert_array_equal(with_words.encode(source)[0], plain.encode(source)[0])  # inference: no effect
    assert not np.allclose(with_words.encode(source, training=True)[0], plain.encode(source)[0])


@pytest.mark.parametrize("use_final_state", [True, False])
def test_masked_lstm_hand_written_backward_equals_autodiff(use_final_state):
    rng = np.random.default_rng(3)
    time, batch, units = 6, 5, 4
    projection = tf.constant(rng.normal(size=(time, batch, 4 * units)), tf.float32)
    kernel = tf.constant(rng.normal(0, 0.5, size=(units, 4 * units)), tf.float32)
    # Pre-padded rows of lengths 6, 4, 1 and 0, and one with a gap (post- and mid-padding).
    real = np.arange(time)[None, :] >= time - np.array([6, 4, 1, 0, 0])[:, None]
    real[4] = [1, 1, 0, 1, 0, 0]
    step_mask = tf.constant(real.T[:, :, None], tf.float32)
    upstream = [tf.constant(rng.normal(size=shape), tf.float32)
                for shape in ((time, batch, units), (batch, units), (batch, units))]
    results = []
    for loop in (masked_lstm_loop, autodiff_masked_lstm_loop):
        with tf.GradientTape() as tape:
            tape.watch([projection, kernel])
            outputs, h, c = loop(projection, step_mask, kernel)
            loss = tf.reduce_sum(outputs * upstream[0])
            if use_final_state:  # else h and c get no gradient (a lower layer's final state)
                loss += tf.reduce_sum(h * upstream[1]) + tf.reduce_sum(c * upstream[2])
        results.append([outputs, h, c, *tape.gradient(loss, [projection, kernel])])
    for name, ours, reference in zip(["outputs", "h", "c", "d_projection", "d_kernel"], *results, strict=True):
        assert np.abs(reference.numpy()).max() > 0, name
        np.testing.assert_allclose(ours.numpy(), reference.numpy(), rtol=1e-5, atol=1e-6, err_msg=name)
    # Padded steps get no gradient: the all-padding row's projection gradient is zero.
    assert np.all(results[0][3].numpy()[:, 3] == 0)
