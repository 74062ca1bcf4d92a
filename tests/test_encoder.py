import numpy as np
import pytest

from keras_attn import Encoder
from keras_attn.encoder import left_to_right_alignment
from tests.helpers import random_ids


def make_encoder(layers=2, bidirectional=True):
    enc = Encoder(vocab_size=30, embedding_dim=8, units=6, num_layers=layers,
                  bidirectional=bidirectional, decoder_units=10, decoder_layers=2)
    enc.build((None, None))
    return enc


def test_alignment_indices_move_tokens_to_the_front_and_back():
    mask = np.array([[False, False, True, True], [True, True, True, False], [False] * 4])
    to_right, to_left = (t.numpy() for t in left_to_right_alignment(mask))
    values = np.array([[0, 0, 7, 8], [5, 6, 7, 0], [0, 0, 0, 0]])
    aligned = np.take_along_axis(values, to_right, 1)
    np.testing.assert_array_equal(aligned, [[7, 8, 0, 0], [5, 6, 7, 0], [0, 0, 0, 0]])
    np.testing.assert_array_equal(np.take_along_axis(aligned, to_left, 1), values)


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
