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
    """`(source, target)` strings → `(source_ids, target_ids)` int32 vectors, no specials."""
    src_tok, tgt_tok = in_graph_tokenizer(src_model, alpha), in_graph_tokenizer(tgt_model, alpha)
    # Tokenize whole chunks at once: much faster than one string per call.
    strings = strings.batch(1024).map(lambda s, t: (src_tok(s), tgt_tok(t)), num_parallel_calls=tf.data.AUTOTUNE)
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


def _teacher_forcing_example(src, tgt):
    bos, eos = tf.constant([BOS_ID], tf.int32), tf.constant([EOS_ID], tf.int32)
    # The source is reversed here and back after right-padding: that pads on the left.
    return (tf.reverse(src, [0]), tf.concat([bos, tgt], 0)), tf.concat([tgt, eos], 0)


def _pre_pad_source(inputs, target_out):
    source_reversed, target_in = inputs
    return {"source": tf.reverse(source_reversed, [1]), "target_in": target_in}, target_out


def make_dataset(corpus: ParallelCorpus, src_model: bytes, tgt_model: bytes, batching: BatchingConfig,
                 training: bool, seed: int = 0) -> tf.data.Dataset:
    """Batched, padded, bucketed dataset; shuffled (and, with `subword_alpha`,
    re-segmented every epoch) when `training`."""
    max_len = batching.max_len
    sampling = training and batching.subword_alpha > 0
    ds = tf.data.Dataset.from_tensor_slices((corpus.sources, corpus.targets))
    ds = tokenize_pairs(ds, src_model, tgt_model, batching.subword_alpha if sampling else 0.0)
    ds = ds.filter(lambda s, t: tf.logical_and(tf.size(s) <= max_len, tf.size(t) <= max_len))
    ds = ds.map(_teacher_forcing_example, num_parallel_calls=tf.data.AUTOTUNE)
    if not sampling:  # a fixed segmentation: tokenize once, then replay
        ds = ds.cache()
    if training:
        ds = ds.shuffle(max(1, min(batching.shuffle_buffer, len(corpus))), seed=seed, reshuffle_each_iteration=True)
    boundaries = list(range(batching.bucket_width + 1, max_len + 2, batching.bucket_width))
    if batching.batch_tokens:
        sizes = [max(1, batching.batch_tokens // b) for b in boundaries] + [
            max(1, batching.batch_tokens // (max_len + 1))]
    else:
        sizes = [batching.batch_size] * (len(boundaries) + 1)

    def length(inputs, target_out):
        return tf.maximum(tf.size(inputs[0]), tf.size(target_out))

    ds = ds.bucket_by_sequence_length(length, boundaries, sizes, drop_remainder=False)
    if training:
        ds = ds.shuffle(batching.batch_shuffle_buffer, seed=seed + 1, reshuffle_each_iteration=True)
    return ds.map(_pre_pad_source, num_parallel_calls=tf.data.AUTOTUNE).prefetch(tf.data.AUTOTUNE)
