"""Input-feeding LSTM decoder with Luong attention (Luong et al. 2015, section 3.3)."""

from __future__ import annotations

import keras
import tensorflow as tf

from keras_attn.attention import LuongAttention
from keras_attn.config import check_rates, check_sizes
from keras_attn.rnn import compute_weight, dense_3d, drop_tokens, lstm_update, unit_forget_bias, unstack
from keras_attn.teacher_forcing import teacher_forced_loop


@keras.saving.register_keras_serializable(package="keras_attn")
class Generator(keras.layers.Layer):
    """The output layer: logits `h̃ W_g + b_g` over the target vocabulary, in float32.

    Under mixed precision the product runs in the compute dtype (bfloat16) and the
    bias is added in float32. A Keras `Dense` under the policy adds its bias with
    `tf.nn.bias_add`, whose gradient (`BiasAddGrad`) on CPU sums over every target
    position of the batch in bfloat16: the many small softmax terms are dropped once
    the running sum has grown (4,096 × 0.001 sums to 0.5). Over 24 training batches
    at trained weights the mean bias gradient came out 12–17 % off the float32 one,
    the batches' errors pointing the same way (other weights: ~5 %, as noise;
    `benchmarks/bf16_gradients.py`). In float32 the cast is a no-op: a MatMul and an
    Add, as `Dense` exports.

    Call args: `(..., units)`. Returns float32 logits `(..., vocab_size)`.
    """

    def __init__(self, vocab_size, **kwargs):
        super().__init__(**kwargs)
        check_sizes("Generator", vocab_size=vocab_size)
        self.vocab_size = vocab_size

    def build(self, input_shape):
        self.kernel = self.add_weight(name="kernel", shape=(int(input_shape[-1]), self.vocab_size),
                                      initializer="glorot_uniform")
        # autocast=False: the bias stays float32 inside `call` under mixed precision
        self.bias = self.add_weight(name="bias", shape=(self.vocab_size,), initializer="zeros", autocast=False)

    def call(self, inputs):
        # |logits| = (..., vocab_size)
        logits = dense_3d(inputs, self.kernel)  # the kernel is autocast inside `call`
        return tf.cast(logits, tf.float32) + self.bias

    def get_config(self):
        return {**super().get_config(), "vocab_size": self.vocab_size}


@keras.saving.register_keras_serializable(package="keras_attn")
class InputFeedingDecoder(keras.layers.Layer):
    """Stacked LSTM decoder whose step input is `[embedding(y_{t-1}); h̃_{t-1}]`.

    One step, with `h̃_0 = 0`:

        h_t          = LSTM([E y_{t-1}; h̃_{t-1}], state_{t-1})   (stacked layers)
        c_t, a_t     = attention(query=h_t, memory=H_src, mask)
        h̃_t          = tanh(W_c [c_t; h_t] + b_c)                 (dropout in training)
        logits_t     = W_g h̃_t + b_g

    Two entry points share the same weights and the same step math:

    - `call(target_in, memory, mask, initial_states)`: the teacher-forced sequence
      (training); returns logits `(batch, tgt_len, vocab)`.
    - `step(y_prev, state, memory_keys, memory, mask)`: one autoregressive step for
      the inference model; returns `(logits, attention_weights, new_state)`.

    The input-side matmuls of the embedding are hoisted out of the time loop, and the
    memory-side half of the attention score is computed once per sentence.
    """

    def __init__(self, vocab_size, embedding_dim=256, units=512, num_layers=1,
                 attention="general", dropout=0.0, word_dropout=0.0, **kwargs):
        super().__init__(**kwargs)
        check_sizes("InputFeedingDecoder", vocab_size=vocab_size, embedding_dim=embedding_dim, units=units,
                    num_layers=num_layers)
        check_rates("InputFeedingDecoder", dropout=dropout, word_dropout=word_dropout)
        self.vocab_size = vocab_size
        self.embedding_dim = embedding_dim
        self.units = units
        self.num_layers = num_layers
        self.attention_score = attention
        self.dropout = dropout
        self.word_dropout = word_dropout
        self.embedding = keras.layers.Embedding(vocab_size, embedding_dim, name="embedding")
        self.attention = LuongAttention(score=attention, name="attention")
        self.generator = Generator(vocab_size, name="generator")
        # Unseeded, like Keras's own Dropout: the seed comes from the global one
        # (`keras.utils.set_random_seed`), so `--seed` and a resumed run reach the masks.
        self.seed_generator = keras.random.SeedGenerator()

    def build(self, target_shape, memory_shape=None, *args, **kwargs):
        if memory_shape is None:
            raise ValueError("InputFeedingDecoder.build needs the memory shape")
        batch, units = target_shape[0], self.units
        memory_dim = int(memory_shape[-1])
        self.embedding.build(tuple(target_shape))
        self.lstm_kernels, self.lstm_recurrent_kernels, self.lstm_biases = [], [], []
        for layer in range(self.num_layers):
            input_dim = self.embedding_dim + units if layer == 0 else units
            self.lstm_kernels.append(self.add_weight(
                name=f"lstm_{layer}_kernel", shape=(input_dim, 4 * units), initializer="glorot_uniform"))
            self.lstm_recurrent_kernels.append(self.add_weight(
                name=f"lstm_{layer}_recurrent_kernel", shape=(units, 4 * units), initializer="orthogonal"))
            self.lstm_biases.append(self.add_weight(
                name=f"lstm_{layer}_bias", shape=(4 * units,), initializer=unit_forget_bias(units)))
        self.attention.build((batch, units), tuple(memory_shape))
        self.combine_kernel = self.add_weight(
            name="combine_kernel", shape=(memory_dim + units, units), initializer="glorot_uniform")
        self.combine_bias = self.add_weight(name="combine_bias", shape=(units,), initializer="zeros")
        self.generator.build((batch, units))

    # ----------------------------------------------------------------- step math
    def step_weights(self, fold_embeddings=False):
        """The kernels a step multiplies by, sliced and fused once (outside any loop).

        `input`: the embedding part of the first LSTM layer's kernel;
        `state`: per layer, the kernel applied to `[layer input from the state; h]`
        (for layer 0 the state part of its input is h̃_{t-1}).
        With `fold_embeddings`, also `input_table`: that kernel applied to every
        target embedding, bias included, so a step gathers its input projection
        instead of multiplying. It costs a (vocab × embedding_dim × 4·units) product
        per call: worth it only where it is computed once, as in the export, whose
        conversion folds it into a constant of the ONNX graph.
        """
        kernels = [compute_weight(self, k) for k in self.lstm_kernels]
        recurrent = [compute_weight(self, r) for r in self.lstm_recurrent_kernels]
        # split, not two slices: a slice's gradient is a full-size zero tensor each
        embedding_part, state_part = tf.split(kernels[0], [self.embedding_dim, -1], axis=0)
        first = tf.concat([state_part, recurrent[0]], axis=0)
        rest = [tf.concat([k, r], axis=0) for k, r in zip(kernels[1:], recurrent[1:])]
        weights = {"input": embedding_part, "state": [first] + rest}
        if fold_embeddings:
            embeddings = compute_weight(self, self.embedding.embeddings)
            # |input_table| = (vocab, 4 * units)
            weights["input_table"] = tf.matmul(embeddings, weights["input"]) + compute_weight(self, self.lstm_biases[0])
        return weights

    def _input_projection(self, tokens, input_kernel, training=False):
        """Embedding part of the first LSTM layer's gates, bias included."""
        # A plain gather (what the Embedding layer computes) avoids the layer's
        # negative-index handling: seven fewer ONNX ops per decode step.
        embedded = tf.cast(tf.gather(self.embedding.embeddings, tokens), self.compute_dtype)
        if training and self.word_dropout > 0:
            embedded = drop_tokens(embedded, self.word_dropout, self.seed_generator)
        if training and self.dropout > 0:
            embedded = keras.random.dropout(embedded, self.dropout, seed=self.seed_generator)
        # |projection| = (..., 4 * units)
        return dense_3d(embedded, input_kernel) + compute_weight(self, self.lstm_biases[0])

    def _recurrent_step(self, input_projection, state, kernels, keys, memory, mask, rows=None):
        """One step from the precomputed input projection; returns (h̃, weights, state).

        `rows` (optional, int `(n,)`): the memory row of each group of state rows, when
        the state holds only some of the sentences (the searches drop finished ones):
        the state's rows are `n` groups of equal size (1 in greedy search, the `k`
        hypotheses of a sentence in beam search), group `i` attending to memory row
        `rows[i]`. The attention then runs over the whole memory batch, with each
        memory row's queries in one product (rows without queries get zero ones), and
        its outputs are gathered back: that reads each sentence's memory once, and
        does not copy a compacted (or k times repeated) memory at every step.
        """
        layer_input, new_h, new_c = state["feed"], [], []
        for layer in range(self.num_layers):
            h, c = state["h"][layer], state["c"][layer]
            # |gates| = (batch, 4 * units)
            gates = tf.matmul(tf.concat([layer_input, h], axis=-1), kernels[layer])
            gates += input_projection if layer == 0 else compute_weight(self, self.lstm_biases[layer])
            h, c = lstm_update(gates, c)
            new_h.append(h)
            new_c.append(c)
            layer_input = h
        if rows is None:
            # |context| = (batch, memory_dim), |weights| = (batch, src_len)
            context, weights = self.attention.attend(h, keys, memory, mask)
        else:
            batch, groups = tf.shape(memory, out_type=rows.dtype)[0], tf.shape(rows, out_type=rows.dtype)[0]
            query = tf.reshape(h, tf.stack([groups, -1, self.units]))
            query = tf.scatter_nd(tf.expand_dims(rows, 1), query,
                                  tf.stack([batch, tf.shape(query, out_type=rows.dtype)[1], self.units]))
            # |query| = (batch, group size, units): zeros for memory rows without queries
            context, weights = self.attention.attend(query, keys, memory, mask)
            # |context| = (n * group size, memory_dim), |weights| = (n * group size, src_len)
            context = tf.reshape(tf.gather(context, rows), tf.stack([-1, tf.shape(memory)[2]]))
            weights = tf.reshape(tf.gather(weights, rows), tf.stack([-1, tf.shape(memory)[1]]))
        # |attentional| = (batch, units): h̃_t, the generator's input and the next feed
        attentional = tf.tanh(tf.matmul(tf.concat([context, h], axis=-1), compute_weight(self, self.combine_kernel))
                              + compute_weight(self, self.combine_bias))
        return attentional, weights, {"feed": attentional, "h": new_h, "c": new_c}

    # ------------------------------------------------------------- public API
    def initial_state(self, encoder_states, batch_size):
        """Decoder state from the encoder's bridged `[h, c]` pairs, with h̃_0 = 0."""
        return {
            "feed": tf.zeros((batch_size, self.units), dtype=self.compute_dtype),
            "h": [h for h, _ in encoder_states],
            "c": [c for _, c in encoder_states],
        }

    def step(self, y_prev, state, memory_keys, memory, mask, weights=None, rows=None):
        """One autoregressive step (inference, no dropout).

        Args:
            y_prev: int `(batch,)` previous tokens (BOS at the first step).
            state: dict from `initial_state` or the previous step.
            memory_keys: `self.attention.memory_keys(memory)`, computed once.
            memory: `(batch, src_len, memory_dim)`; mask: `(batch, src_len)`, bool or
                0/1 in the compute dtype (cast it once, outside a decode loop).
            weights: `self.step_weights(...)`; pass it in from outside a decode loop so
                the slicing and fusing is not redone every step. With an
                `input_table`, the step gathers its input projection from it.
            rows: optional int `(n,)`: the memory row of each of `n` equal groups of
                state rows (see `_recurrent_step`); `None` when state and memory
                rows align.

        Returns:
            `(logits (batch, vocab), weights (batch, src_len), new_state)`.
        """
        weights = weights or self.step_weights()
        y_prev = tf.cast(y_prev, tf.int32)
        if "input_table" in weights:
            projection = tf.gather(weights["input_table"], y_prev)
        else:
            projection = self._input_projection(y_prev, weights["input"])
        attentional, attention, state = self._recurrent_step(
            projection, state, weights["state"], memory_keys, memory, mask, rows)
        return self.generator(attentional), attention, state

    def decode_sequence(self, target_in, memory, mask, initial_states, training=False):
        """Teacher-forced h̃ for every step: `(attentional, weights)`,
        `(batch, tgt_len, units)` and `(batch, tgt_len, src_len)`."""
        target_in = tf.cast(target_in, tf.int32)
        batch, length = tf.shape(target_in)[0], tf.shape(target_in)[1]
        # Time-major so each loop iteration reads one contiguous slice.
        weights = self.step_weights()
        # |projections| = (tgt_len, batch, 4 * units)
        projections = tf.transpose(self._input_projection(target_in, weights["input"], training), [1, 0, 2])
        keys = self.attention.memory_keys(memory)
        mask = tf.cast(mask, self.compute_dtype)  # once, not in every step
        keep = None
        if training and self.dropout > 0:  # one dropout mask per step, drawn up front
            keep = keras.random.dropout(tf.ones((length, batch, self.units), self.compute_dtype),
                                        self.dropout, seed=self.seed_generator)
        states = self.initial_state(initial_states, batch)
        # A linear score (general, dot) has a hand-written backward pass; concat uses autodiff.
        loop = self._hand_written_loop if self.attention.score in ("general", "dot") else self._autodiff_loop
        outputs, all_weights = loop(projections, states, weights["state"], keys, memory, mask, keep)
        # |outputs| = (batch, tgt_len, units), |weights| = (batch, tgt_len, src_len)
        return tf.transpose(outputs, [1, 0, 2]), tf.transpose(all_weights, [1, 0, 2])

    def _hand_written_loop(self, projections, states, kernels, keys, memory, mask, keep=None):
        """The teacher-forced loop with the hand-written backward pass of
        `keras_attn.teacher_forcing` (weight gradients as matmuls outside the loop):
        time-major `(attentional, weights)`."""
        return teacher_forced_loop(
            projections, states["h"], states["c"], kernels,
            [tf.convert_to_tensor(b) for b in self.lstm_biases[1:]], keys, memory, mask,
            tf.convert_to_tensor(self.combine_kernel), tf.convert_to_tensor(self.combine_bias), keep)

    def _autodiff_loop(self, projections, states, kernels, keys, memory, mask, keep=None):
        """The teacher-forced loop as plain steps (autodiff backward): time-major
        `(attentional, weights)`. Used for the `concat` score, and as the reference
        `teacher_forced_loop`'s gradients are tested against."""
        length = tf.shape(projections)[0]
        projections = unstack(projections)
        keep = None if keep is None else unstack(keep)

        def body(t, state, outputs, all_weights):
            attentional, weights, state = self._recurrent_step(
                projections.read(t), state, kernels, keys, memory, mask)
            if keep is not None:
                attentional = attentional * keep.read(t)
                state = {**state, "feed": attentional}
            return t + 1, state, outputs.write(t, attentional), all_weights.write(t, weights)

        _, _, outputs, all_weights = tf.while_loop(
            lambda t, *_: t < length, body,
            (tf.constant(0), states, tf.TensorArray(self.compute_dtype, size=length),
             tf.TensorArray(self.compute_dtype, size=length)),
            maximum_iterations=length)  # lets the gradient preallocate its accumulators
        return outputs.stack(), all_weights.stack()

    def call(self, target_in, memory, mask, initial_states, training=False):
        attentional, _ = self.decode_sequence(target_in, memory, mask, initial_states, training)
        # |logits| = (batch, tgt_len, vocab)
        return self.generator(attentional)

    def get_config(self):
        return {
            **super().get_config(),
            "vocab_size": self.vocab_size,
            "embedding_dim": self.embedding_dim,
            "units": self.units,
            "num_layers": self.num_layers,
            "attention": self.attention_score,
            "dropout": self.dropout,
            "word_dropout": self.word_dropout,
        }

