import dataclasses

import numpy as np
import pytest

from pipelines.corpus import ParallelCorpus
from pipelines.dataset import BatchingConfig, length_statistics, make_dataset, tokenized_pairs
from pipelines.dates import date_corpus
from pipelines.tokenizer import BOS_ID, EOS_ID, load_processor, train_sentencepiece


@pytest.fixture(scope="module")
def dates_models():
    corpus = date_corpus(2000, seed=0)
    return corpus, train_sentencepiece(corpus.sources, 300), train_sentencepiece(corpus.targets, 40)


def test_sentencepiece_and_tensorflow_text_give_identical_ids(dates_models):
    corpus, src_model, tgt_model = dates_models
    valid = date_corpus(300, seed=1)
    src_sp, tgt_sp = load_processor(src_model), load_processor(tgt_model)
    for (src_ids, tgt_ids), src, tgt in zip(tokenized_pairs(valid, src_model, tgt_model).as_numpy_iterator(),
                                            valid.sources, valid.targets):
        assert list(src_ids) == src_sp.encode(src)
        assert list(tgt_ids) == tgt_sp.encode(tgt)


def test_special_ids_are_fixed(dates_models):
    _, src_model, _ = dates_models
    sp = load_processor(src_model)
    assert (sp.pad_id(), sp.unk_id(), sp.bos_id(), sp.eos_id()) == (0, 1, 2, 3)


def test_batches_pre_pad_sources_post_pad_targets_and_shift_for_teacher_forcing(dates_models):
    corpus, src_model, tgt_model = dates_models
    src_sp, tgt_sp = load_processor(src_model), load_processor(tgt_model)
    expected = {tuple(src_sp.encode(s)): tgt_sp.encode(t) for s, t in zip(corpus.sources, corpus.targets)}
    ds = make_dataset(corpus, src_model, tgt_model, BatchingConfig(batch_size=16), training=True)
    for inputs, target_out in ds.take(20).as_numpy_iterator():
        source, target_in = inputs["source"], inputs["target_in"]
        assert source.shape[0] == target_in.shape[0] == target_out.shape[0]
        assert target_in.shape == target_out.shape
        for row in range(source.shape[0]):
            src_real = source[row] != 0
            n_src = src_real.sum()
            assert src_real[source.shape[1] - n_src:].all() and not src_real[: source.shape[1] - n_src].any()
            n_tgt = (target_out[row] != 0).sum()
            assert (target_out[row, n_tgt:] == 0).all() and (target_in[row, n_tgt:] == 0).all()
            gold = expected[tuple(source[row, source.shape[1] - n_src:])]
            assert list(target_out[row, :n_tgt]) == gold + [EOS_ID]
            assert list(target_in[row, :n_tgt]) == [BOS_ID] + gold


def test_length_filter_and_statistics():
    corpus = ParallelCorpus(["a b c d e f g h i j k", "a", "b"], ["x", "y y y y y y y y y y y y", "z"])
    src_model = train_sentencepiece(["a b c d e f g h i j k"] * 20 + ["a", "b"], 20, model_type="char")
    tgt_model = train_sentencepiece(["x y z"] * 20, 10, model_type="char")
    too_long, tokens = length_statistics(tokenized_pairs(corpus, src_model, tgt_model), max_len=5)
    assert too_long == 2
    ds = make_dataset(corpus, src_model, tgt_model, BatchingConfig(max_len=5, batch_size=8), training=False)
    batches = list(ds.as_numpy_iterator())
    assert sum(len(b[1]) for b in batches) == 1
    assert tokens == (batches[0][1] != 0).sum()


def test_token_budget_batches_stay_within_budget(dates_models):
    corpus, src_model, tgt_model = dates_models
    budget = 200
    ds = make_dataset(corpus, src_model, tgt_model, BatchingConfig(batch_tokens=budget, batch_size=None,
                                                                   max_len=50), training=True)
    sizes = []
    for inputs, target_out in ds.as_numpy_iterator():
        longest = max((inputs["source"] != 0).sum(1).max(), (target_out != 0).sum(1).max())
        assert len(target_out) * longest <= budget
        sizes.append(len(target_out))
    assert sum(sizes) == len(corpus) and max(sizes) > 16


def test_bucket_width_one_batches_pairs_of_one_length(dates_models):
    corpus, src_model, tgt_model = dates_models
    ds = make_dataset(corpus, src_model, tgt_model, BatchingConfig(batch_size=16, bucket_width=1), training=True)
    seen = 0
    for inputs, target_out in ds.as_numpy_iterator():
        longer = np.maximum((inputs["source"] != 0).sum(1), (target_out != 0).sum(1))
        assert (longer == longer[0]).all()
        seen += len(target_out)
    assert seen == len(corpus)


def test_partial_batches_are_spread_over_the_epoch_not_left_to_its_end(dates_models):
    corpus, src_model, tgt_model = dates_models
    batching = BatchingConfig(batch_size=16, bucket_width=1)
    ds = make_dataset(corpus, src_model, tgt_model, batching, training=True)
    epochs = [[len(target_out) for _, target_out in ds.as_numpy_iterator()] for _ in range(2)]
    for sizes in epochs:
        partial = [i for i, size in enumerate(sizes) if size < batching.batch_size]
        assert len(partial) >= 5 and sum(sizes) == len(corpus)
        # bucketing emits every bucket's remainder when the pairs run out: at the end
        assert min(partial) < len(sizes) // 2, partial
    assert epochs[0] != epochs[1]  # reshuffled every epoch


def test_batching_config_rejects_bad_values():
    with pytest.raises(ValueError, match="bucket_width must be >= 1"):
        BatchingConfig(bucket_width=0)
    with pytest.raises(ValueError, match="max_len"):
        BatchingConfig(max_len=0)
    with pytest.raises(ValueError, match="batch_size"):
        BatchingConfig(batch_size=0)
    with pytest.raises(ValueError, match="shuffle buffers"):
        BatchingConfig(batch_shuffle_buffer=0)


def _rows(ds, sp):
    """{source text: [target ids]} for every pair of a dataset pass."""
    rows = {}
    for inputs, target_out in ds.as_numpy_iterator():
        for source, target in zip(inputs["source"], target_out):
            rows[sp.decode([int(i) for i in source if i != 0])] = [int(i) for i in target if i != 0]
    return rows


def test_subword_sampling_resegments_training_pairs_every_epoch_but_never_validation(dates_models):
    corpus, src_model, tgt_model = dates_models
    src_sp, tgt_sp = load_processor(src_model), load_processor(tgt_model)
    small = ParallelCorpus(corpus.sources[:300], corpus.targets[:300])
    sampled = make_dataset(small, src_model, tgt_model, BatchingConfig(batch_size=32, subword_alpha=0.2),
                           training=True)
    first, second = _rows(sampled, src_sp), _rows(sampled, src_sp)
    deterministic = {s: tgt_sp.encode(t) + [EOS_ID] for s, t in zip(small.sources, small.targets)}
    # Every pair is still there and still decodes to its text.
    assert set(first) == set(second) == set(deterministic)
    assert all(tgt_sp.decode(first[s][:-1]) == t for s, t in zip(small.sources, small.targets))
    # Segmentations differ from the deterministic one and between epochs.
    assert sum(first[s] != deterministic[s] for s in first) > 30
    assert sum(first[s] != second[s] for s in first) > 30
    plain = make_dataset(small, src_model, tgt_model, BatchingConfig(batch_size=32, subword_alpha=0.2),
                         training=False)
    assert _rows(plain, src_sp) == deterministic


@pytest.mark.parametrize("batching", [dict(batch_size=16), dict(batch_tokens=160)])
def test_every_sampled_pass_holds_every_kept_pair_once_in_the_same_number_of_batches(dates_models, batching):
    """Keras fixes an epoch at its first pass's batch count: the deterministic lengths
    decide the length filter and the buckets, so each pass of a sampled dataset has that
    count, and so no pass loses batches or ends early."""
    corpus, src_model, tgt_model = dates_models
    src_sp, tgt_sp = load_processor(src_model), load_processor(tgt_model)
    small = ParallelCorpus(corpus.sources[:400], corpus.targets[:400])
    lengths = [max(len(src_sp.encode(s)), len(tgt_sp.encode(t))) for s, t in zip(small.sources, small.targets)]
    max_len = int(np.percentile(lengths, 80))  # the filter drops some
    config = BatchingConfig(max_len=max_len, subword_alpha=0.2, **batching)
    plain = make_dataset(small, src_model, tgt_model, dataclasses.replace(config, subword_alpha=0.0), training=True)
    kept = sorted(s for s, n in zip(small.sources, lengths) if n <= max_len)
    assert 0 < len(kept) < len(small.sources)
    sampled = make_dataset(small, src_model, tgt_model, config, training=True)
    counts, resegmented = set(), 0
    for _ in range(4):
        batches = [inputs["source"] for inputs, _ in sampled.as_numpy_iterator()]
        rows = [[int(i) for i in row if i != 0] for batch in batches for row in batch]
        sources = [src_sp.decode(row) for row in rows]
        resegmented += sum(row != src_sp.encode(text) for row, text in zip(rows, sources))
        counts.add(len(batches))
        assert sorted(sources) == kept
    assert counts == {sum(1 for _ in plain)}
    assert resegmented > 100  # the passes did sample


def test_subword_alpha_out_of_range_is_refused():
    with pytest.raises(ValueError, match="subword_alpha"):
        BatchingConfig(subword_alpha=1.5)
