import keras
import numpy as np
import pytest

from keras_attn import MaskedSparseCrossEntropy, Seq2Seq
from keras_attn.optimizer import FusedAdam
from tests.helpers import random_ids, tiny_config


@pytest.mark.parametrize("options", [{"clipnorm": 0.5}, {"use_ema": True, "ema_momentum": 0.9}])
def test_fused_adam_trains_like_keras_adam(options):
    """Five steps from the same weights: every weight (embeddings, whose gradients are
    IndexedSlices and take Keras's update, included) within 1e-5 of Keras's Adam after
    moving by more than 1e-3: float32 rounding, which Adam's m / √v amplifies in its
    first steps, differs by ~2e-6 between runs of either; a wrong update rule (bias
    correction, ε, β's) moves weights by ~lr = 1e-2."""
    rng = np.random.default_rng(0)
    config = tiny_config(dropout=0.0)
    inputs = {"source": random_ids(rng, [3, 6, 5], 30, True), "target_in": random_ids(rng, [4, 2, 6], 25, False)}
    labels = random_ids(rng, [4, 2, 6], 25, False)
    initial, trained = None, []
    for optimizer in (FusedAdam, keras.optimizers.Adam):
        model = Seq2Seq(config)
        model.build()
        initial = initial or model.get_weights()
        model.set_weights(initial)
        model.compile(optimizer=optimizer(1e-2, **options), loss=MaskedSparseCrossEntropy(config.pad_id))
        for _ in range(5):
            model.train_on_batch(inputs, labels)
        trained.append(model.get_weights())
    for fused, reference, start in zip(*trained, initial):
        assert np.abs(reference - start).max() > 1e-3
        np.testing.assert_allclose(fused, reference, rtol=0, atol=1e-5)


def test_a_model_trained_with_fused_adam_loads_in_safe_mode(tmp_path):
    rng = np.random.default_rng(1)
    model = Seq2Seq(tiny_config()).compile_for_training()
    inputs = {"source": random_ids(rng, [3, 6], 30, True), "target_in": random_ids(rng, [4, 2], 25, False)}
    model.train_on_batch(inputs, random_ids(rng, [4, 2], 25, False))
    model.save(tmp_path / "m.keras")
    loaded = keras.models.load_model(tmp_path / "m.keras", safe_mode=True)
    assert isinstance(loaded.optimizer, FusedAdam)
    np.testing.assert_array_equal(loaded(inputs).numpy(), model(inputs).numpy())


def test_a_keras_adam_backup_resumes_into_fused_adam(tmp_path):
    """A run killed before `FusedAdam` resumes from its `BackupAndRestore` weights
    file: the same optimizer variables, moments and step count included."""
    rng = np.random.default_rng(2)
    inputs = {"source": random_ids(rng, [3, 6], 30, True), "target_in": random_ids(rng, [4, 2], 25, False)}
    labels = random_ids(rng, [4, 2], 25, False)
    models = []
    for optimizer in (keras.optimizers.Adam, FusedAdam):
        model = Seq2Seq(tiny_config())
        model.compile(optimizer=optimizer(1e-2), loss=MaskedSparseCrossEntropy(0))
        for _ in range(2 if optimizer is FusedAdam else 3):
            model.train_on_batch(inputs, labels)
        models.append(model)
    models[0].save_weights(tmp_path / "backup.weights.h5")
    models[1].load_weights(tmp_path / "backup.weights.h5")
    saved, loaded = models[0].optimizer.variables, models[1].optimizer.variables
    assert len(saved) == len(loaded) and int(loaded[0].numpy()) == 3  # iterations
    for a, b in zip(saved, loaded):
        np.testing.assert_array_equal(a.numpy(), b.numpy())


def test_fused_adam_clips_each_gradient_as_keras_does():
    """Two passes (norm, scale) instead of Keras's four, the same result: above the
    clip norm scaled down to it, below it and at zero unchanged; `IndexedSlices` are
    left to Keras's clipping."""
    import tensorflow as tf

    rng = np.random.default_rng(3)
    fused, reference = FusedAdam(1e-3, clipnorm=1.0), keras.optimizers.Adam(1e-3, clipnorm=1.0)
    for scale in (10.0, 0.01, 0.0):
        gradient = tf.constant(scale * rng.standard_normal((64, 32)), tf.float32)
        clipped = fused._clip_by_norm(gradient).numpy()
        np.testing.assert_allclose(clipped, reference._clip_by_norm(gradient).numpy(), rtol=1e-6, atol=0)
        assert np.linalg.norm(clipped) == pytest.approx(min(1.0, np.linalg.norm(gradient.numpy())), rel=1e-5)
    slices = tf.IndexedSlices(tf.constant(rng.standard_normal((3, 4)), tf.float32), tf.constant([0, 2, 0]),
                              tf.constant([5, 4]))
    np.testing.assert_array_equal(tf.convert_to_tensor(fused._clip_by_norm(slices)).numpy(),
                                  tf.convert_to_tensor(reference._clip_by_norm(slices)).numpy())
