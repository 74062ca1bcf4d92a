"""The autoregressive inference model: greedy and batched beam search.

`InferenceModel` wraps a trained `Seq2Seq` (sharing its weights) in a `tf.Module`
whose decode functions are single `tf.function`s with the loop inside the graph
(`tf.while_loop`), so tf2onnx turns each into one ONNX graph with a `Loop`.
"""

from __future__ import annotations

import tensorflow as tf

SOURCE_SPEC = tf.TensorSpec([None, None], tf.int32, name="source_ids")
MAX_LEN_SPEC = tf.TensorSpec([None], tf.int32, name="max_len")  # each sentence's output cap
BEAM_SPEC = tf.TensorSpec([], tf.int32, name="beam_size")
ALPHA_SPEC = tf.TensorSpec([], tf.float32, name="alpha")
# The encoder's outputs before the bridge: what the `*_from_encoding` functions take.
ENCODING_SPECS = [tf.TensorSpec([None, None, None], tf.float32, name="memory"),
                  tf.TensorSpec([None, None], tf.float32, name="mask"),
                  tf.TensorSpec([None, None], tf.float32, name="final_h"),
                  tf.TensorSpec([None, None], tf.float32, name="final_c")]


def length_penalty(length, alpha):
    """GNMT length penalty `((5 + length) / 6) ** alpha` (Wu et al. 2016)."""
    return tf.pow((5.0 + tf.cast(length, tf.float32)) / 6.0, alpha)


def float32_step(decoder, *args):
    """`decoder.step` with its attention weights in float32, like its logits (the
    `Generator` returns float32): the search's scores and buffers are float32 whatever
    the model computes in (mixed bfloat16); for a float32 model the cast is a no-op."""
    logits, weights, state = decoder.step(*args)
    return logits, tf.cast(weights, tf.float32), state


class InferenceModel(tf.Module):
    """Greedy and beam-search decoding for a trained `Seq2Seq`.

    Both take `source_ids (batch, src_len) int32`, pre-padded with pad id 0, and
    `max_len (batch,) int32`, each sentence's output cap (EOS included): a sentence's
    cap, not its batch's, ends it, so a batch neighbour never changes a translation.
    They return a dict with
    `ids (batch, out_len) int32`: tokens up to and including EOS, then pad 0;
    `attention (batch, out_len, src_len)`: the weights that produced each token;
    `log_probs (batch,)`: the sequence log-probability.
    Beam search also returns its whole final beam, ranked (the first is `ids`):
    `n_best_ids (batch, beam_size, out_len)` and `n_best_log_probs (batch, beam_size)`.

    `greedy_from_encoding` and `beam_search_from_encoding` are the same searches
    starting from `Encoder.encode`'s outputs (`memory`, the 0/1 `mask`, `final_h`,
    `final_c`, float32): the export converts these and builds the encoder's LSTMs as
    ONNX `LSTM` ops in front of them (`pipelines/onnx_encoder.py`).
    """

    def __init__(self, seq2seq, fold_embeddings=False, name="inference_model"):
        super().__init__(name=name)
        if not seq2seq.built:
            seq2seq.build()
        self.seq2seq = seq2seq
        self.config = seq2seq.config
        # See `InputFeedingDecoder.step_weights`: on for the export only.
        self.fold_embeddings = fold_embeddings

    def _encode(self, source_ids):
        memory, mask, final_h, final_c = self.seq2seq.encoder.encode(source_ids, training=False)
        return memory, tf.cast(mask, memory.dtype), final_h, final_c

    @tf.function(input_signature=[SOURCE_SPEC, MAX_LEN_SPEC])
    def greedy(self, source_ids, max_len):
        """Greedy search from pre-padded source ids (see `_greedy`)."""
        return self._greedy(*self._encode(source_ids), max_len)

    @tf.function(input_signature=[*ENCODING_SPECS, MAX_LEN_SPEC])
    def greedy_from_encoding(self, memory, mask, final_h, final_c, max_len):
        return self._greedy(memory, mask, final_h, final_c, max_len)

    def _greedy(self, memory, mask, final_h, final_c, max_len):
        """Greedy search that drops finished sentences from the batch as it goes.

        The loop works on the `alive` rows only: when a sentence emits EOS its row
        leaves the decoder state, so later steps cost what the sentences still being
        written need, not what the longest one in the batch needs. The memory is not
        compacted (copying it every step costs more than attending over its finished
        rows): `alive` maps each state row to its memory row.
        """
        cfg, decoder = self.config, self.seq2seq.decoder
        batch, src_len = tf.shape(memory)[0], tf.shape(memory)[1]
        # |memory| = (batch, src_len, memory_dim), |mask| = (batch, src_len) 0/1 floats
        keys, step_weights = decoder.attention.memory_keys(memory), decoder.step_weights(self.fold_embeddings)
        states = self.seq2seq.encoder.bridge(final_h, final_c)
        rows = {"alive": tf.range(tf.cast(batch, tf.int64)), "y_prev": tf.fill([batch], cfg.bos_id),
                "state": decoder.initial_state(states, batch), "max_len": max_len}
        # Full-batch buffers the loop scatters the alive rows' results into.
        no_ids, no_weights = tf.zeros([batch], tf.int32), tf.zeros([batch, src_len], tf.float32)

        def body(t, rows, log_prob, ids, attention):
            logits, weights, state = float32_step(
                decoder, rows["y_prev"], rows["state"], keys, memory, mask, step_weights, rows["alive"])
            # |logits| = (alive, vocab), |weights| = (alive, src_len)
            # top_k(k=1) gives the argmax and its log-prob in one op.
            token_log_prob, token = tf.math.top_k(tf.nn.log_softmax(logits), k=1)
            token, token_log_prob = tf.reshape(token, [-1]), tf.reshape(token_log_prob, [-1])
            # Back to full-batch positions; rows already finished get pad and zeros.
            where = tf.expand_dims(rows["alive"], 1)
            ids = ids.write(t, tf.tensor_scatter_nd_update(no_ids, where, token))
            attention = attention.write(t, tf.tensor_scatter_nd_update(no_weights, where, weights))
            log_prob = tf.tensor_scatter_nd_add(log_prob, where, token_log_prob)
            # A row leaves at EOS or at its own cap.
            stays = tf.logical_and(tf.not_equal(token, cfg.eos_id), t + 1 < rows["max_len"])
            keep = tf.reshape(tf.where(stays), [-1])
            rows = tf.nest.map_structure(lambda x: tf.gather(x, keep),
                                         {**rows, "y_prev": token, "state": state})
            return t + 1, rows, log_prob, ids, attention

        def running(t, rows, *_):
            return tf.size(rows["alive"]) > 0

        loop_vars = (
            tf.constant(0), rows, tf.zeros([batch], tf.float32),
            tf.TensorArray(tf.int32, size=0, dynamic_size=True, element_shape=[None]),
            tf.TensorArray(tf.float32, size=0, dynamic_size=True, element_shape=[None, None]))
        _, _, log_prob, ids, attention = tf.while_loop(running, body, loop_vars)
        ids = tf.reshape(ids.stack(), [-1, batch])
        attention = tf.reshape(attention.stack(), [-1, batch, src_len])
        return {"ids": tf.transpose(ids), "attention": tf.transpose(attention, [1, 0, 2]),
                "log_probs": log_prob}

    @tf.function(input_signature=[SOURCE_SPEC, MAX_LEN_SPEC, BEAM_SPEC, ALPHA_SPEC])
    def beam_search(self, source_ids, max_len, beam_size, alpha):
        """Beam search from pre-padded source ids (see `_beam_search`)."""
        return self._beam_search(*self._encode(source_ids), max_len, beam_size, alpha)

    @tf.function(input_signature=[*ENCODING_SPECS, MAX_LEN_SPEC, BEAM_SPEC, ALPHA_SPEC])
    def beam_search_from_encoding(self, memory, mask, final_h, final_c, max_len, beam_size, alpha):
        return self._beam_search(memory, mask, final_h, final_c, max_len, beam_size, alpha)

    def _beam_search(self, memory, mask, final_h, final_c, max_len, beam_size, alpha):
        """Batched beam search; hypotheses are ranked by log-prob / length penalty.

        A finished hypothesis stays in the beam and may only be extended by pad at no
        cost, so it competes with the open ones. When all `k` hypotheses of a sentence
        have finished, nothing can change its ranking any more: its best hypothesis
        is written to the output and the sentence leaves the search, so later steps
        cost what the sentences still being searched need (as in `_greedy`, the
        memory stays whole; a sentence's k hypotheses attend to its memory row in one
        product, the memory is never repeated).
        """
        cfg, decoder = self.config, self.seq2seq.decoder
        batch, k = tf.shape(memory)[0], beam_size
        beam = BeamStep(decoder, cfg, memory, mask, decoder.step_weights(self.fold_embeddings),
                        beam_size, alpha)
        states = self.seq2seq.encoder.bridge(final_h, final_c)
        states = tf.nest.map_structure(lambda s: tf.repeat(s, k, axis=0), states)
        # |states| = (batch * k, units): hypothesis j of sentence b is state row b * k + j; the memory is
        # not repeated: a step attends with sentence b's k queries in one product (`BeamStep.expand`)
        # Only beam 0 is alive at the start, so the first expansion is not k copies.
        # (comparisons with tf.range rather than tf.one_hot: tf2onnx converts rank-1 one_hot only)
        first = tf.where(tf.equal(tf.range(k), 0), 0.0, -1e9)
        # Per sentence still searched (n of them); `alive` holds their batch rows.
        search = {"alive": tf.range(tf.cast(batch, tf.int64)), "y_prev": tf.fill([batch, k], cfg.bos_id),
                  "state": decoder.initial_state(states, batch * k), "finished": tf.zeros([batch, k], tf.bool),
                  "scores": tf.tile(first[None], [batch, 1]), "lengths": tf.zeros([batch, k], tf.int32),
                  "max_len": max_len, "ids": tf.zeros([batch, k, 0], tf.int32),
                  "attention": tf.zeros([batch, k, 0, beam.src_len], tf.float32)}
        # |scores| = (n, k): summed log-probs; |ids| = (n, k, t) after t steps
        # Each sentence's k final hypotheses, best first, and the best one's attention,
        # written when it leaves the search (zeros after its last step).
        best_of = {"ids": tf.zeros([batch, k, 0], tf.int32), "log_probs": tf.zeros([batch, k]),
                   "attention": tf.zeros([batch, 0, beam.src_len])}
        # The histories grow by one step per step rather than being allocated at max_len:
        # memory and each step's copies follow the steps taken, so a large max_len costs
        # nothing until it is used (allocated ahead, max_len 10**8 took all 24 GiB).

        def body(t, search, best_of):
            search = beam.expand(search)
            done = tf.logical_or(tf.reduce_all(search["finished"], axis=1), t + 1 >= search["max_len"])
            search, best_of = beam.leave(search, beam.one_step_longer(best_of), done)
            return t + 1, search, best_of

        def running(t, search, best_of):
            return tf.size(search["alive"]) > 0

        loop_vars = (tf.constant(0), search, best_of)
        any_shape = tf.nest.map_structure(lambda v: tf.TensorShape([None] * v.shape.rank), loop_vars)
        _, _, best_of = tf.while_loop(running, body, loop_vars, shape_invariants=any_shape)
        # |best_of["ids"]| = (batch, k, steps), |best_of["log_probs"]| = (batch, k)
        return {"ids": best_of["ids"][:, 0], "attention": best_of["attention"],
                "log_probs": best_of["log_probs"][:, 0],
                "n_best_ids": best_of["ids"], "n_best_log_probs": best_of["log_probs"]}

    def translate_ids(self, source_ids, max_len, beam_size=1, alpha=0.6):
        """Convenience eager entry point: greedy for beam 1, else beam search;
        `max_len` one cap for all sentences or one per sentence."""
        source_ids = tf.convert_to_tensor(source_ids, tf.int32)
        max_len = tf.broadcast_to(tf.cast(max_len, tf.int32), tf.shape(source_ids)[:1])
        if beam_size == 1:
            return self.greedy(source_ids, max_len)
        return self.beam_search(source_ids, max_len,
                                tf.constant(beam_size, tf.int32), tf.constant(alpha, tf.float32))


class BeamStep:
    """What every step of one batched beam search shares (the decoder, the memory and
    its keys, the sizes), and the two things a step does: `expand` every hypothesis,
    and let the sentences whose search is over `leave`.

    A search's state is a dict of tensors with one row per sentence still searched
    (n of them; see `InferenceModel._beam_search`); the state rows are the n * k
    hypotheses.
    """

    def __init__(self, decoder, config, memory, mask, step_weights, beam_size, alpha):
        self.decoder, self.memory, self.mask, self.step_weights = decoder, memory, mask, step_weights
        self.keys = decoder.attention.memory_keys(memory)
        self.k, self.vocab, self.alpha, self.eos_id = beam_size, config.tgt_vocab_size, alpha, config.eos_id
        self.k64 = tf.cast(beam_size, tf.int64)  # cast here, once, not in every step of the loop
        self.src_len = tf.shape(memory)[1]
        self.finished_row = tf.where(tf.equal(tf.range(self.vocab), config.pad_id), 0.0, -1e9)
        # |finished_row| = (vocab,): a finished beam can only emit pad, at no cost

    def expand(self, search):
        """One step of every hypothesis, the k best expansions kept per sentence."""
        k, vocab = self.k, self.vocab
        n = tf.shape(search["alive"])[0]
        logits, weights, state = float32_step(self.decoder, tf.reshape(search["y_prev"], [-1]), search["state"],
                                              self.keys, self.memory, self.mask, self.step_weights, search["alive"])
        finished = search["finished"]
        log_probs = tf.reshape(tf.nn.log_softmax(logits), [n, k, vocab])
        log_probs = tf.where(finished[:, :, None], self.finished_row, log_probs)
        total = search["scores"][:, :, None] + log_probs
        # |total| = (n, k, vocab)
        new_lengths = search["lengths"][:, :, None] + tf.cast(tf.logical_not(finished), tf.int32)[:, :, None]
        ranking = total / length_penalty(new_lengths, self.alpha)
        # sorted: a sentence's first hypothesis is its best (highest log-prob / length penalty)
        _, flat = tf.math.top_k(tf.reshape(ranking, [n, k * vocab]), k=k)
        parent, token = flat // vocab, flat % vocab
        # |parent| = |token| = (n, k)
        rows = tf.reshape(parent + tf.range(n)[:, None] * k, [-1])
        weights = tf.reshape(tf.gather(weights, rows), [n, k, 1, self.src_len])
        parent_finished = tf.gather(finished, parent, batch_dims=1)
        # histories reordered by parent, then this step appended; a length depends on the parent only
        return {"alive": search["alive"], "max_len": search["max_len"], "y_prev": token,
                "state": tf.nest.map_structure(lambda s: tf.gather(s, rows), state),
                "finished": tf.logical_or(parent_finished, tf.equal(token, self.eos_id)),
                "scores": tf.gather(tf.reshape(total, [n, -1]), flat, batch_dims=1),
                "lengths": (tf.gather(search["lengths"], parent, batch_dims=1)
                            + tf.cast(tf.logical_not(parent_finished), tf.int32)),
                "ids": tf.concat([tf.gather(search["ids"], parent, batch_dims=1), token[:, :, None]], axis=2),
                "attention": tf.concat([tf.gather(search["attention"], parent, batch_dims=1), weights], axis=2)}

    @staticmethod
    def one_step_longer(best_of):
        """`best_of` with room for one more step (a zero column), the step `expand` just took."""
        return {"ids": tf.pad(best_of["ids"], [[0, 0], [0, 0], [0, 1]]), "log_probs": best_of["log_probs"],
                "attention": tf.pad(best_of["attention"], [[0, 0], [0, 1], [0, 0]])}

    def leave(self, search, best_of, done):
        """Write the hypotheses of each `done` sentence (ranked: the first is its best)
        and the best one's attention; keep searching the others."""
        leaving = tf.reshape(tf.where(done), [-1])
        staying = tf.reshape(tf.where(tf.logical_not(done)), [-1])
        # |leaving| = (d,), |staying| = (n - d,): positions among the n searched sentences
        where = tf.expand_dims(tf.gather(search["alive"], leaving), 1)

        def write(output, hypotheses):  # |hypotheses| = (n, k, ...)
            return tf.tensor_scatter_nd_update(output, where, tf.gather(hypotheses, leaving))

        best_attention = tf.gather(tf.gather(search["attention"], leaving), 0, axis=1)
        best_of = {"ids": write(best_of["ids"], search["ids"]),
                   "log_probs": write(best_of["log_probs"], search["scores"]),
                   "attention": tf.tensor_scatter_nd_update(best_of["attention"], where, best_attention)}
        staying_rows = tf.reshape(staying[:, None] * self.k64 + tf.range(self.k64)[None], [-1])
        search = {name: tf.nest.map_structure(lambda s: tf.gather(s, staying_rows), value) if name == "state"
                  else tf.gather(value, staying) for name, value in search.items()}
        return search, best_of
