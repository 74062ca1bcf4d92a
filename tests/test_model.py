import json
import subprocess
import sys
from pathlib import Path

import keras
import numpy as np
import pytest
import tensorflow as tf

import keras_attn
from keras_attn import MaskedSparseCrossEntropy, MaskedTokenAccuracy, Seq2Seq, Seq2SeqConfig
from tests.helpers import random_ids, tiny_config


def test_config_round_trips_through_json(tmp_path):
    cfg = tiny_config(attention="concat", decoder_layers=2)
    assert Seq2SeqConfig.from_json(cfg.to_json()) == cfg
    cfg.save(tmp_path / "c.json")
    assert Seq2SeqConfig.load(tmp_path / "c.json") == cfg
    assert json.loads(cfg.to_json())["attention"] == "concat"


def test_config_save_replaces_its_file_whole_or_not_at_all(tmp_path, monkeypatch):
    """An interrupted save leaves the previous file as it was, and no temporary file
    (it wrote in place: the file was truncated before the new text went in)."""
    path = tmp_path / "c.json"
    tiny_config().save(path)
    before = path.read_text(encoding="utf-8")

    def interrupted(self, target):
        raise KeyboardInterrupt

    monkeypatch.setattr(Path, "replace", interrupted)
    with pytest.raises(KeyboardInterrupt):
        tiny_config(attention="dot").save(path)
    assert path.read_text(encoding="utf-8") == before
    assert [p.name for p in tmp_path.iterdir()] == ["c.json"]


@pytest.mark.parametrize("bad", [{"attention": "bilinear"}, {"dropout": 1.0}, {"word_dropout": -0.1},
                                 {"decoder_units": 0}, {"bidirectional": "false"}, {"dropout": "0.3"},
                                 {"eos_id": 2}, {"pad_id": -1}, {"tgt_vocab_size": 3}, {"src_vocab_size": 2}])
def test_config_rejects_bad_values(bad):
    with pytest.raises(ValueError, match=next(iter(bad))):
        tiny_config(**bad)


@pytest.mark.parametrize("layer,arguments,message", [
    ("Encoder", {"vocab_size": 10, "units": -3}, "Encoder.units must be a positive int, got -3"),
    ("Encoder", {"vocab_size": 10, "num_layers": 0}, "Encoder.num_layers must be a positive int, got 0"),
    ("Encoder", {"vocab_size": 10, "bidirectional": "false"}, "Encoder.bidirectional must be true or false"),
    ("Encoder", {"vocab_size": 10, "dropout": 1.0}, r"Encoder.dropout must be in \[0, 1\), got 1.0"),
    ("InputFeedingDecoder", {"vocab_size": 10, "units": 0}, "InputFeedingDecoder.units must be a positive int"),
    ("InputFeedingDecoder", {"vocab_size": 10, "word_dropout": -0.1}, "InputFeedingDecoder.word_dropout"),
    ("Generator", {"vocab_size": 0}, "Generator.vocab_size must be a positive int, got 0"),
    ("LuongAttention", {"score": "concat", "units": 0}, "LuongAttention.units must be a positive int, got 0"),
    ("MaskedSparseCrossEntropy", {"label_smoothing": 1.5}, r"MaskedSparseCrossEntropy.label_smoothing must be in"),
    ("MaskedSparseCrossEntropy", {"label_smoothing": -1}, r"MaskedSparseCrossEntropy.label_smoothing must be in"),
])
def test_layers_refuse_bad_sizes_and_rates_when_made(layer, arguments, message):
    """As Keras's own layers do; each of these was accepted, to fail (or not) later."""
    with pytest.raises(ValueError, match=message):
        getattr(keras_attn, layer)(**arguments)


def test_config_rejects_unknown_keys():
    with pytest.raises(ValueError, match="unknown Seq2SeqConfig keys"):
        Seq2SeqConfig.from_dict({**tiny_config().to_dict(), "hidden": 3})


def test_logits_at_real_positions_do_not_depend_on_padding_or_neighbours():
    rng = np.random.default_rng(0)
    model = Seq2Seq(tiny_config())
    src = random_ids(rng, [5], 30, pre_pad=True)[0]
    tgt = random_ids(rng, [4], 25, pre_pad=False)[0]
    alone = model({"source": src[None], "target_in": tgt[None]}).numpy()[0]
    source = random_ids(rng, [5, 9, 1], 30, pre_pad=True, width=10)
    source[0] = 0
    source[0, -5:] = src
    target = random_ids(rng, [4, 8, 6], 25, pre_pad=False, width=9)
    target[0] = 0
    target[0, :4] = tgt
    batched = model({"source": source, "target_in": target}).numpy()[0]
    np.testing.assert_allclose(batched[:4], alone, atol=1e-5)


def test_loss_ignores_padding_and_matches_numpy():
    rng = np.random.default_rng(1)
    logits = rng.normal(size=(2, 3, 5)).astype(np.float32)
    y = np.array([[1, 4, 0], [2, 0, 0]])
    log_p = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
    nll = -np.take_along_axis(log_p, y[..., None], -1)[..., 0]
    valid = y != 0
    expected = nll[valid].mean()
    assert float(MaskedSparseCrossEntropy()(y, logits)) == pytest.approx(expected, rel=1e-5)
    eps = 0.1
    smoothed = (1 - eps) * nll - eps * log_p.mean(-1)
    assert float(MaskedSparseCrossEntropy(label_smoothing=eps)(y, logits)) == pytest.approx(
        smoothed[valid].mean(), rel=1e-5)
    acc = MaskedTokenAccuracy()
    acc.update_state(y, logits)
    assert float(acc.result()) == pytest.approx((logits.argmax(-1) == y)[valid].mean())


@pytest.mark.parametrize("eps", [0.1, 0.35])
def test_smoothed_cross_entropy_value_and_gradient_match_autodiff(eps):
    """The fused loss and its hand-written gradient against autodiff of the plain
    composition (sparse cross-entropy + logsumexp - mean)."""
    from keras_attn.model import smoothed_cross_entropy

    rng = np.random.default_rng(3)
    logits = tf.constant(rng.normal(0, 3, size=(3, 4, 11)).astype(np.float32))
    labels = tf.constant(rng.integers(0, 11, size=(3, 4)).astype(np.int32))
    upstream = tf.constant(rng.normal(size=(3, 4)).astype(np.float32))

    def reference(x):
        nll = tf.nn.sparse_softmax_cross_entropy_with_logits(labels=labels, logits=x)
        return (1 - eps) * nll + eps * (tf.reduce_logsumexp(x, -1) - tf.reduce_mean(x, -1))

    values, grads = [], []
    for fn in (reference, lambda x: smoothed_cross_entropy(x, labels, eps)):
        with tf.GradientTape() as tape:
            tape.watch(logits)
            value = fn(logits)
        values.append(value.numpy())
        grads.append(tape.gradient(value, logits, output_gradients=upstream).numpy())
    assert values[1].shape == (3, 4)
    np.testing.assert_allclose(values[1], values[0], rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(grads[1], grads[0], rtol=1e-5, atol=1e-6)


def test_save_load_round_trip_gives_identical_outputs(tmp_path):
    rng = np.random.default_rng(2)
    model = Seq2Seq(tiny_config(attention="concat", decoder_layers=2, encoder_layers=2, word_dropout=0.1))
    model.compile_for_training(label_smoothing=0.1)
    inputs = {"source": random_ids(rng, [3, 6], 30, True), "target_in": random_ids(rng, [4, 2], 25, False)}
    expected = model(inputs).numpy()
    model.save(tmp_path / "m.keras")
    loaded = keras_attn.load_model(tmp_path / "m.keras")
    assert isinstance(loaded, Seq2Seq) and loaded.config == model.config
    np.testing.assert_array_equal(loaded(inputs).numpy(), expected)
    # plain keras loading in safe mode works too once keras_attn.model is imported (above)
    plain = keras.models.load_model(tmp_path / "m.keras", safe_mode=True)
    np.testing.assert_array_equal(plain(inputs).numpy(), expected)


def test_plain_keras_loading_needs_keras_attn_model_imported_as_the_readme_says(tmp_path):
    """A fresh process: after a bare `import keras_attn` (which must not load TensorFlow)
    Keras cannot find the classes; after `from keras_attn import Seq2Seq` it loads the file."""
    model, rng = Seq2Seq(tiny_config()), np.random.default_rng(0)
    model({"source": random_ids(rng, [3, 4], 30, True), "target_in": random_ids(rng, [3, 2], 25, False)})
    model.save(tmp_path / "m.keras")
    load = f"keras.models.load_model({str(tmp_path / 'm.keras')!r}, safe_mode=True)"
    bare = subprocess.run([sys.executable, "-c", f"import keras, keras_attn\n{load}"], capture_output=True,
                          text=True)
    assert bare.returncode != 0 and "Could not locate class 'Seq2Seq'" in bare.stderr
    imported = subprocess.run([sys.executable, "-c", f"import keras\nfrom keras_attn import Seq2Seq\n"
                               f"assert type({load}) is Seq2Seq"], capture_output=True, text=True)
    assert imported.returncode == 0, imported.stderr[-2000:]


def reverse_task(rng, n, vocab=12, max_len=6):
    lengths = rng.integers(2, max_len + 1, n)
    source = random_ids(rng, lengths, vocab, pre_pad=True, width=max_len)
    target_out = np.zeros((n, max_len + 1), np.int32)
    target_in = np.zeros_like(target_out)
    for i, n_tok in enumerate(lengths):
        rev = source[i, max_len - n_tok:][::-1]
        target_out[i, :n_tok + 1] = np.append(rev, 3)  # + EOS
        target_in[i, :n_tok + 1] = np.append(2, rev)  # BOS +
    return {"source": source, "target_in": target_in}, target_out


def test_reverse_task_trains_to_high_token_accuracy():
    keras.utils.set_random_seed(0)
    rng = np.random.default_rng(0)
    model = Seq2Seq(Seq2SeqConfig(src_vocab_size=12, tgt_vocab_size=12, embedding_dim=32,
                                  encoder_units=32, decoder_units=64, dropout=0.0))
    model.compile_for_training(learning_rate=1e-2)
    x, y = reverse_task(rng, 3000)
    model.fit(x, y, batch_size=64, epochs=6, verbose=0)
    x_test, y_test = reverse_task(rng, 500)
    _, accuracy = model.evaluate(x_test, y_test, verbose=0)
    assert accuracy > 0.95


def test_fit_traces_the_training_step_once(monkeypatch):
    """Keras made Adam's slots while `fit` first traced the step (when no distribution
    strategy is set), and TensorFlow traces a function that creates variables a second
    time: every `fit` built the step's graph twice (1.5 s more before the recipe model's
    first step). `compile_for_training` makes them."""
    traced = []
    step = Seq2Seq.train_step
    monkeypatch.setattr(Seq2Seq, "train_step", lambda self, data: traced.append(1) or step(self, data))
    model = Seq2Seq(tiny_config()).compile_for_training()
    assert len(model.optimizer.variables) > 2  # the step counter, the rate and the slots
    x, y = reverse_task(np.random.default_rng(0), 64)
    model.fit(x, y, batch_size=16, epochs=2, verbose=0)
    assert len(traced) == 1


def test_the_global_seed_picks_every_dropout_mask():
    """`--seed` reaches the training masks through `keras.utils.set_random_seed`: the
    decoder's dropout and both word dropouts must follow it as Keras's `Dropout`
    layer does (fixed per-layer seeds ignored it). Same weights, same inputs: same
    seed, same masks; another, others."""
    rng = np.random.default_rng(4)
    tokens, source = random_ids(rng, [6, 4], 25, False), random_ids(rng, [5, 7], 30, True)
    reference_decoder = keras_attn.InputFeedingDecoder(25, 8, 12, dropout=0.3, word_dropout=0.3)
    reference_decoder.build((None, None), (None, None, 16))
    reference_encoder = keras_attn.Encoder(30, 8, 6, word_dropout=0.3, decoder_units=12)
    reference_encoder.build((None, None))

    def training_outputs(seed):
        keras.utils.set_random_seed(seed)
        decoder = keras_attn.InputFeedingDecoder(**reference_decoder.get_config())
        decoder.build((None, None), (None, None, 16))
        decoder.set_weights(reference_decoder.get_weights())
        encoder = keras_attn.Encoder(**reference_encoder.get_config())
        encoder.build((None, None))
        encoder.set_weights(reference_encoder.get_weights())
        projection = decoder._input_projection(tokens, decoder.step_weights()["input"], training=True)
        return projection.numpy(), encoder.encode(source, training=True)[0].numpy()

    first, again, other = training_outputs(1), training_outputs(1), training_outputs(2)
    for layer in range(2):  # decoder, encoder
        np.testing.assert_array_equal(first[layer], again[layer])
        assert np.abs(first[layer] - other[layer]).max() > 1e-3
