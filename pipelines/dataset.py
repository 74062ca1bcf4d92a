"""tf.data input pipelines: tokenize in-graph, add BOS/EOS, filter, pad, bucket.

Source rows are pre-padded (padding on the left), targets post-padded. Elements are
`({"source", "target_in"}, target_out)` as `Seq2Seq.fit` expects, with
`target_in = [BOS] + y` and `target_out = y + [EOS]` (teacher forcing).
"""

from __future__ import annotations

import dataclasses

import tensorflow as tf
import tensorflow_text as tf_text

from pipelines.corpus import ParallelCorpus
from pipelines.tokenizer import BOS_ID, EOS_ID


@dataclasses.dataclass(frozen=True)
class BatchingConfig:
    max_len: int = 100  # max subword tokens per side, BOS/EOS not counted
    batch_size: int | None = 64  # fixed sentences per batch, or
    batch_tokens: int | None = None  # a target-token budget per batch (overrides batch_size)
    bucket_width: int = 4
    # Pairs shuffled per epoch: the whole corpus up to this many (the cache holds it anyway).
    shuffle_buffer: int = 1_000_000
    # Batches shuffled after bucketing: each bucket's last, partial batch is only emitted
    # when the epoch's pairs run out, so without this every epoch would end on ~one small,
    # noisy-gradient batch per bucket, just before validation.
    batch_shuffle_buffer: int = 4096
    # Subword regularization (Kudo 2018): > 0 samples a new segmentation of every
    # training pair each epoch (SentencePiece nbest -1, this smoothing); 0 = off.
    # Validation and test data are always segmented the deterministic way.
    subword_alpha: float = 0.0

    def __post_init__(self):
        if self.max_len < 1:
            raise ValueError(f"max_len must be >= 1, got {self.max_len}")
        if self.bucket_width < 1:
            raise ValueError(f"bucket_width must be >= 1, got {self.bucket_width}")
        if self.batch_tokens is None and (self.batch_size is None or self.batch_size < 1):
            raise ValueError(f"batch_size must be >= 1, got {self.batch_size}")
        if self.batch_tokens is not None and self.batch_tokens < self.max_len + 1:
            raise ValueError(f"batch_tokens ({self.batch_tokens}) must exceed max_len ({self.max_len})")
        if self.shuffle_buffer < 1 or self.batch_shuffle_buffer < 1:
            raise ValueError(f"shuffle buffers must be >= 1, got {self.shuffle_buffer}, {self.batch_shuffle_buffer}")
        if not 0 <= self.subword_alpha <= 1:
            raise ValueError(f"subword_alpha must be in [0, 1], got {self.subword_alpha}")


def in_graph_tokenizer(model: bytes, alpha: float = 0.0):
    """SentencePiece tokenization inside the tf.data graph (tensorflow-text); with
    `alpha > 0`, a segmentation sampled from all of them (subword regularization)."""
    sampling = {"nbest_size": -1, "alpha": alpha} if alpha > 0 else {}
    return tf_text.SentencepieceTokenizer(model=model, out_type=tf.int32, **sampling).tokenize


def tokenize_pairs(strings: tf.data.Dataset, src_model: bytes, tgt_model: bytes,
                   alpha: float = 0.0) -> tf.data.Dataset:
    """`(source, target, *rest)` strings → `(source_ids, target_ids, *rest)`: int32
    vectors, no specials; any further components pass through."""
    src_tok, tgt_tok = in_graph_tokenizer(src_model, alpha), in_graph_tokenizer(tgt_model, alpha)
    # Tokenize whole chunks at once: much faster than one string per call.
    strings = strings.batch(1024).map(lambda s, t, *rest: (src_tok(s), tgt_tok(t), *rest),
                                      num_parallel_calls=tf.data.AUTOTUNE)
    return strings.unbatch()


def tokenized_pairs(corpus: ParallelCorpus, src_model: bytes, tgt_model: bytes) -> tf.data.Dataset:
    """`(source_ids, target_ids)` variable-length int32 vectors, no specials."""
    return tokenize_pairs(tf.data.Dataset.from_tensor_slices((corpus.sources, corpus.targets)),
                          src_model, tgt_model)


def length_statistics(pairs: tf.data.Dataset, max_len: int) -> tuple[int, int]:
    """`(too_long, target_tokens)`: pairs the length filter drops, and target tokens
    (EOS included) in the pairs it keeps. One pass over the data."""
    def count(totals, pair):
        long = tf.logical_or(tf.size(pair[0]) > max_len, tf.size(pair[1]) > max_len)
        kept_tokens = tf.where(long, 0, tf.size(pair[1]) + 1)
        return totals + tf.stack([tf.cast(long, tf.int64), tf.cast(kept_tokens, tf.int64)])
    too_long, tokens = pairs.reduce(tf.zeros([2], tf.int64), count).numpy()
    return int(too_long), int(tokens)


def _bucket_length(src, tgt):
    """What a pair's bucket goes by: its longer side once BOS/EOS is added."""
    return tf.maximum(tf.size(src), tf.size(tgt) + 1)


def _short_enough(max_len):
    return lambda src, tgt, *rest: tf.logical_and(tf.size(src) <= max_len, tf.size(tgt) <= max_len)


def _teacher_forcing_example(src, tgt, bucket_length):
    bos, eos = tf.constant([BOS_ID], tf.int32), tf.constant([EOS_ID], tf.int32)
    # The source is reversed here and back after right-padding: that pads on the left.
    return (tf.reverse(src, [0]), tf.concat([bos, tgt], 0)), tf.concat([tgt, eos], 0), bucket_length


def _pre_pad_source(inputs, target_out, bucket_length):
    source_reversed, target_in = inputs
    return {"source": tf.reverse(source_reversed, [1]), "target_in": target_in}, target_out


def _fixed_examples(strings, src_model, tgt_model, batching: BatchingConfig, shuffle: tuple[int, int] | None):
    """Deterministically segmented examples, tokenized once and then replayed from the
    cache (with `shuffle`, a buffer size and a seed: shuffled every pass)."""
    ds = tokenize_pairs(strings, src_model, tgt_model).filter(_short_enough(batching.max_len))
    ds = ds.map(lambda src, tgt: _teacher_forcing_example(src, tgt, _bucket_length(src, tgt)),
                num_parallel_calls=tf.data.AUTOTUNE).cache()
    return ds if shuffle is None else ds.shuffle(*shuffle, reshuffle_each_iteration=True)


def _sampled_examples(strings, src_model, tgt_model, batching: BatchingConfig, shuffle: tuple[int, int]):
    """Examples whose segmentation is sampled anew every pass, shuffled every pass
    (`shuffle`: a buffer size and a seed). The deterministic segmentation decides the
    length filter and the buckets, so every pass keeps the same pairs in the same
    buckets, and so has the same number of batches: Keras fixes an epoch at its first
    pass's batch count, and a pass with more would lose its last batches, one with
    fewer end early."""
    pairs = tf.data.Dataset.zip(strings, tokenize_pairs(strings, src_model, tgt_model))
    pairs = pairs.filter(lambda texts, ids: _short_enough(batching.max_len)(*ids))
    pairs = pairs.map(lambda texts, ids: (*texts, _bucket_length(*ids))).cache()
    pairs = pairs.shuffle(*shuffle, reshuffle_each_iteration=True)
    ds = tokenize_pairs(pairs, src_model, tgt_model, batching.subword_alpha)
    return ds.map(_teacher_forcing_example, num_parallel_calls=tf.data.AUTOTUNE)


def make_dataset(corpus: ParallelCorpus, src_model: bytes, tgt_model: bytes, batching: BatchingConfig,
                 training: bool, seed: int = 0) -> tf.data.Dataset:
    """Batched, padded, bucketed dataset; shuffled (and, with `subword_alpha`,
    re-segmented every epoch) when `training`."""
    max_len = batching.max_len
    strings = tf.data.Dataset.from_tensor_slices((corpus.sources, corpus.targets))
    shuffle = (max(1, min(batching.shuffle_buffer, len(corpus))), seed)  # pairs: buffer size, seed
    if training and batching.subword_alpha > 0:
        ds = _sampled_examples(strings, src_model, tgt_model, batching, shuffle)
    else:
        ds = _fixed_examples(strings, src_model, tgt_model, batching, shuffle if training else None)
    boundaries = list(range(batching.bucket_width + 1, max_len + 2, batching.bucket_width))
    if batching.batch_tokens:
        sizes = [max(1, batching.batch_tokens // b) for b in boundaries] + [
            max(1, batching.batch_tokens // (max_len + 1))]
    else:
        sizes = [batching.batch_size] * (len(boundaries) + 1)
    ds = ds.bucket_by_sequence_length(lambda inputs, target_out, bucket_length: bucket_length,
                                      boundaries, sizes, drop_remainder=False)
    if training:
        ds = ds.shuffle(batching.batch_shuffle_buffer, seed=seed + 1, reshuffle_each_iteration=True)
    return ds.map(_pre_pad_source, num_parallel_calls=tf.data.AUTOTUNE).prefetch(tf.data.AUTOTUNE)
