"""The teacher-forcing training model, its masked loss and its masked accuracy."""

from __future__ import annotations

import keras
import tensorflow as tf

from keras_attn.config import Seq2SeqConfig, check_rates
from keras_attn.decoder import InputFeedingDecoder
from keras_attn.encoder import Encoder
from keras_attn.optimizer import FusedAdam


@keras.saving.register_keras_serializable(package="keras_attn")
class Seq2Seq(keras.Model):
    """Attention encoder-decoder trained with teacher forcing.

    Inputs: `{"source": (batch, src_len) int ids, pre-padded,
              "target_in": (batch, tgt_len) int ids, post-padded}` where
    `target_in` is the gold target shifted right behind BOS.
    Output: logits `(batch, tgt_len, tgt_vocab)`.
    """

    def __init__(self, config: Seq2SeqConfig | dict, **kwargs):
        super().__init__(**kwargs)
        if isinstance(config, dict):
            config = Seq2SeqConfig.from_dict(config)
        self.config = config
        self.encoder = Encoder(
            config.src_vocab_size, config.embedding_dim, config.encoder_units,
            config.encoder_layers, config.bidirectional, config.decoder_units,
            config.decoder_layers, config.dropout, config.pad_id, word_dropout=config.word_dropout,
            name="encoder")
        self.decoder = InputFeedingDecoder(
            config.tgt_vocab_size, config.embedding_dim, config.decoder_units,
            config.decoder_layers, config.attention, config.dropout, word_dropout=config.word_dropout,
            name="decoder")

    def build(self, input_shape=None):
        # Shapes do not depend on the input: build every weight up front so that a
        # model can be loaded, summarized or exported before it has seen data.
        self.encoder.build((None, None))
        self.decoder.build((None, None), (None, None, self.config.memory_dim))
        self.built = True

    def call(self, inputs, training=False):
        memory, mask, states = self.encoder(inputs["source"], training=training)
        return self.decoder(inputs["target_in"], memory, mask, states, training=training)

    def get_config(self):
        return {**super().get_config(), "config": self.config.to_dict()}

    def train_step(self, data):
        return self.logs_with_a_worker_axis(super().train_step(data))

    def test_step(self, data):
        return self.logs_with_a_worker_axis(super().test_step(data))

    def logs_with_a_worker_axis(self, logs):
        """Across several workers Keras means each step's logs with
        `strategy.reduce("MEAN", value, axis=0)`, which fails on the scalars every
        metric returns (tensorflow/tensorflow#72388): give them that axis, which the
        reduction removes again."""
        strategy = self._distribute_strategy
        multi_worker = isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy)
        if multi_worker and strategy.extended._in_multi_worker_mode():
            return tf.nest.map_structure(lambda value: tf.reshape(value, [1]), logs)
        return logs

    def _maybe_symbolic_build(self, iterator=None, data_batch=None):
        """Under a distribution strategy Keras builds the metrics and loss from the first
        batch, which it mean-reduces across replicas only to learn its shapes;
        `MultiWorkerMirroredStrategy` cannot reduce a dict of inputs
        (keras-team/keras#20329). This replica's part of the batch has those shapes."""
        if iterator is not None and self._distribute_strategy is not None:
            for _, _, batches in iterator:
                data_batch = tf.nest.map_structure(self.local_part, next(batches))
                break
            iterator = None
        return super()._maybe_symbolic_build(iterator=iterator, data_batch=data_batch)

    def local_part(self, value):
        if isinstance(value, tf.distribute.DistributedValues):
            return self._distribute_strategy.experimental_local_results(value)[0]
        return value

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        model_config = config.pop("config")
        return cls(Seq2SeqConfig.from_dict(model_config), **config)

    def compile_for_training(self, learning_rate=1e-3, label_smoothing=0.0, clipnorm=5.0, ema=0.0, **kwargs):
        """`compile` with Adam (`FusedAdam`), the masked loss and the masked token accuracy; with
        `ema` > 0 the optimizer also keeps an exponential moving average of the
        weights, `avg ← ema·avg + (1 − ema)·w` after every step (swap it in with
        `keras.callbacks.SwapEMAWeights`)."""
        self.compile(
            optimizer=FusedAdam(learning_rate, clipnorm=clipnorm,
                                 **({"use_ema": True, "ema_momentum": ema} if ema else {})),
            loss=MaskedSparseCrossEntropy(self.config.pad_id, label_smoothing),
            metrics=[MaskedTokenAccuracy(self.config.pad_id)],
            **kwargs)
        # The weights and Adam's slots now, not when `fit` first traces the step (where Keras
        # makes the slots when no distribution strategy is set): a tf.function that creates
        # variables while it is traced is traced a second time, which doubled the step's
        # tracing at every `fit`.
        if not self.built:
            self.build()
        self.optimizer.build(self.trainable_variables)
        return self


def smoothed_cross_entropy(logits, labels, smoothing):
    """Label-smoothed cross-entropy `(1 - ε)(-log p_y) + ε mean_v(-log p_v)` per
    position, with its gradient `p - (1 - ε) onehot(y) - ε / V` written out.

    Composing `sparse_softmax_cross_entropy_with_logits` with `reduce_logsumexp` and
    `reduce_mean` makes about twice as many passes over the `(batch, tgt_len, vocab)`
    logits, forward and backward (measured: ~8 % of a recipe training step).

    Args: logits float32 `(..., V)`; labels int32 `(...)`. Returns `(...)`.
    """
    shape = tf.shape(labels)
    labels = tf.reshape(labels, [-1])
    # |logits| = (n, V), n = all positions
    logits = tf.reshape(logits, [-1, tf.shape(logits)[-1]])
    vocab = tf.cast(tf.shape(logits)[-1], logits.dtype)
    label_at = tf.stack([tf.range(tf.shape(labels)[0]), labels], axis=1)  # (n, 2) indices

    @tf.custom_gradient
    def loss(logits):
        shifted = logits - tf.reduce_max(logits, -1, keepdims=True)
        exp = tf.exp(shifted)
        total = tf.reduce_sum(exp, -1, keepdims=True)
        # -log p_y = log Σ exp - shifted_y;  mean_v(-log p_v) = log Σ exp - mean_v(shifted)
        value = (tf.math.log(total[:, 0]) - (1.0 - smoothing) * tf.gather_nd(shifted, label_at)
                 - smoothing * tf.reduce_mean(shifted, -1))

        def grad(upstream):
            # |d_logits| = (n, V): softmax - ε/V everywhere, then - (1 - ε) at the label
            d_logits = exp * (upstream / total[:, 0])[:, None] - (upstream * smoothing / vocab)[:, None]
            return tf.tensor_scatter_nd_sub(d_logits, label_at, (1.0 - smoothing) * upstream)

        return value, grad

    return tf.reshape(loss(logits), shape)


@keras.saving.register_keras_serializable(package="keras_attn")
class MaskedSparseCrossEntropy(keras.losses.Loss):
    """Token-level cross-entropy from logits that ignores `pad_id` targets.

    The result is the mean over real (non-pad) target tokens of the batch, with
    optional label smoothing over the vocabulary.
    """

    def __init__(self, pad_id=0, label_smoothing=0.0, name="masked_sparse_cross_entropy", **kwargs):
        super().__init__(name=name, **kwargs)
        check_rates("MaskedSparseCrossEntropy", label_smoothing=label_smoothing)
        self.pad_id = pad_id
        self.label_smoothing = label_smoothing

    def call(self, y_true, y_pred):
        y_true = tf.cast(y_true, tf.int32)
        logits = tf.cast(y_pred, tf.float32)
        if self.label_smoothing > 0:
            nll = smoothed_cross_entropy(logits, y_true, self.label_smoothing)
        else:
            # Fused kernel: one pass over (batch, tgt_len, vocab) instead of log_softmax + gather.
            # |nll| = (batch, tgt_len)
            nll = tf.nn.sparse_softmax_cross_entropy_with_logits(labels=y_true, logits=logits)
        valid = tf.cast(tf.not_equal(y_true, self.pad_id), tf.float32)
        # Keras averages what `call` returns over all batch * tgt_len entries; rescale
        # so that average is the mean over the real tokens only.
        scale = tf.cast(tf.size(valid), tf.float32) / tf.maximum(tf.reduce_sum(valid), 1.0)
        return nll * valid * scale

    def get_config(self):
        return {**super().get_config(), "pad_id": self.pad_id, "label_smoothing": self.label_smoothing}


@keras.saving.register_keras_serializable(package="keras_attn")
class MaskedTokenAccuracy(keras.metrics.Metric):
    """Share of non-pad target tokens whose argmax prediction is right."""

    def __init__(self, pad_id=0, name="token_accuracy", **kwargs):
        super().__init__(name=name, **kwargs)
        self.pad_id = pad_id
        self.correct = self.add_variable(shape=(), initializer="zeros", name="correct")
        self.total = self.add_variable(shape=(), initializer="zeros", name="total")

    def update_state(self, y_true, y_pred, sample_weight=None):
        y_true = tf.cast(y_true, tf.int32)
        valid = tf.not_equal(y_true, self.pad_id)
        hits = tf.logical_and(valid, tf.equal(tf.argmax(y_pred, axis=-1, output_type=tf.int32), y_true))
        self.correct.assign_add(tf.reduce_sum(tf.cast(hits, self.dtype)))
        self.total.assign_add(tf.reduce_sum(tf.cast(valid, self.dtype)))

    def result(self):
        return self.correct / tf.maximum(self.total, 1.0)

    def reset_state(self):
        self.correct.assign(0.0)
        self.total.assign(0.0)

    def get_config(self):
        return {**super().get_config(), "pad_id": self.pad_id}
