import csv
import io
import json
import warnings
from pathlib import Path

import keras
import numpy as np
import pytest
import tensorflow as tf

from pipelines import cli
from pipelines.callbacks import (
    average_checkpoints,
    callbacks,
    cosine_lr,
    epoch_weights,
    validation_measure,
)
from pipelines.evaluate import evaluate_held_out
from pipelines.train import (
    TrainConfig,
    build_model,
    fit_verbosity,
    load_corpora,
    model_config,
    prepare_data,
    run,
    sole_writer,
    start_writing,
)
from tests.helpers import VOCAB, tiny_data


@pytest.mark.parametrize("flags, expected", [
    ({"vocab_size": 100_000}, "source {s} (below --vocab-size 100000: all the pieces this text gives), "
                              "target {t} (below --vocab-size 100000: all the pieces this text gives)"),
    ({"src_vocab_size": 80, "tgt_vocab_size": 10_000}, "source 80, target {t} (below --tgt-vocab-size 10000"),
    ({}, "source {s}, target {t}"),  # the defaults' sizes are upper bounds, not asked for: no note
])
def test_the_tokenizer_log_says_when_the_text_gave_fewer_pieces_than_asked(tmp_path, flags, expected):
    """SentencePiece stops below a size it cannot reach: --vocab-size 100000 trained 329
    pieces, and the log gave the 329 without saying it was not the size asked for."""
    logged = []
    data = prepare_data(TrainConfig(out=str(tmp_path), dates_train_size=300, **flags), tmp_path, logged.append)
    (line,) = [entry for entry in logged if entry.startswith("[tokenizer]")]
    sizes = {"s": data.src_sp.get_piece_size(), "t": data.tgt_sp.get_piece_size()}
    assert expected.format(**sizes) in line and sizes["t"] < 10_000
    assert line.count("below") == expected.count("below")


def test_the_tokenizer_log_says_whose_reused_tokenizers_are(dates_run, tmp_path):
    """A resumed run and an --init-from run reuse tokenizers the vocabulary flags did not
    make: the log said nothing, and a flag's note would have been about other tokenizers."""
    import shutil

    resumed = tmp_path / "resumed"
    (resumed / "backup").mkdir(parents=True)
    for name in ("src.spm.model", "tgt.spm.model"):
        shutil.copy(dates_run[0] / name, resumed / name)
    for out, init_from, whose in ((resumed, None, "the interrupted run's"),
                                  (tmp_path / "new", str(dates_run[0]), f"{dates_run[0]}'s")):
        logged = []
        prepare_data(TrainConfig(out=str(out), dates_train_size=300, vocab_size=100_000, init_from=init_from),
                     out, logged.append)
        (line,) = [entry for entry in logged if entry.startswith("[tokenizer]")]
        assert f"({whose} tokenizers; the vocabulary flags do not apply)" in line and "below" not in line


def test_dates_run_writes_every_artifact_and_learns(dates_run):
    out, metrics = dates_run
    for name in ("model.keras", "src.spm.model", "tgt.spm.model", "config.json", "history.csv",
                 "training_curve.png", "metrics.json"):
        assert (out / name).is_file(), name
    config = json.loads((out / "config.json").read_text())
    assert config["model"]["tgt_vocab_size"] > 4 and config["train"]["corpus"] == "dates"
    rows = list(csv.DictReader(open(out / "history.csv")))
    assert len(rows) == metrics["epochs_run"] and float(rows[-1]["target_tokens_per_second"]) > 0
    assert float(rows[-1]["loss"]) < float(rows[0]["loss"])
    # a deliberately small model and budget: far from the demo's 99 %, far above chance
    assert metrics["held_out"]["exact_match"] > 0.3


class RawWeights(keras.callbacks.Callback):
    """The trained (not averaged) weights after every step, and at the first step of
    each epoch before it runs."""

    def __init__(self):
        super().__init__()
        self.after_step, self.epoch_start = [], []

    def on_train_batch_begin(self, batch, logs=None):
        if batch == 0:
            self.epoch_start.append(self.model.get_weights())

    def on_train_batch_end(self, batch, logs=None):
        self.after_step.append(self.model.get_weights())


def moving_average(steps, decay):
    """Keras's EMA: the first step's weights, then avg = decay·avg + (1 − decay)·w."""
    average = [w.astype(np.float64) for w in steps[0]]
    for weights in steps[1:]:
        average = [decay * a + (1 - decay) * w for a, w in zip(average, weights, strict=True)]
    return average


def test_ema_is_what_validation_and_the_checkpoint_see_while_training_goes_on_from_the_trained_weights(tmp_path):
    from keras_attn.saving import load_model

    cfg = TrainConfig(out=str(tmp_path), embedding_dim=8, encoder_units=8, decoder_units=8, lr=1e-2, ema=0.5,
                      dropout=0.0)
    x, y = tiny_data()
    model = build_model(cfg, model_config(cfg, VOCAB, VOCAB))
    raw = RawWeights()
    history = model.fit(x, y, validation_data=(x, y), epochs=2, batch_size=16, shuffle=False, verbose=0,
                        callbacks=callbacks(cfg, tmp_path, 100) + [raw])
    assert len(raw.after_step) == 8
    # Epoch 2 trains on from the weights epoch 1's steps produced, not from their average
    # (the swap is arithmetic, a ± b, so equal up to float rounding).
    averages = [moving_average(raw.after_step[:4], 0.5), moving_average(raw.after_step, 0.5)]
    for a, b in zip(raw.epoch_start[1], raw.after_step[3], strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)
    assert any(not np.allclose(a, b) for a, b in zip(raw.epoch_start[1], averages[0], strict=True))
    kept = int(np.argmin(history.history["val_loss"]))  # the checkpoint: the lower validation loss
    checkpoint = load_model(tmp_path / "model.keras").get_weights()
    for c, a in zip(checkpoint, averages[kept], strict=True):
        np.testing.assert_allclose(c, a, rtol=1e-5, atol=1e-6)
    assert any(not np.allclose(c, r) for c, r in zip(checkpoint, raw.after_step[4 * kept + 3], strict=True))
    # The logged validation loss is the average's, and fit leaves the final average in the model.
    for a, m in zip(averages[1], model.get_weights(), strict=True):
        np.testing.assert_allclose(m, a, rtol=1e-5, atol=1e-6)
    assert model.evaluate(x, y, verbose=0, return_dict=True)["loss"] == pytest.approx(
        history.history["val_loss"][1], rel=1e-5)


def test_cosine_schedule_runs_from_lr_down_to_min_lr():
    rates = [cosine_lr(epoch, 10, 1e-3, 1e-5) for epoch in range(10)]
    assert rates[0] == pytest.approx(1e-3) and rates[-1] == pytest.approx(1e-5)
    assert all(a > b for a, b in zip(rates, rates[1:], strict=False))
    # half-way (epoch 4.5 of 0..9) the rate is half-way between the ends
    assert rates[4] > (1e-3 + 1e-5) / 2 > rates[5]
    lr = callbacks(TrainConfig(lr_schedule="cosine", epochs=10, lr=1e-3, min_lr=1e-5), Path("."), 1)
    assert any(isinstance(c, keras.callbacks.LearningRateScheduler) for c in lr)


def test_epoch_weights_keep_the_last_n_epochs(tmp_path):
    cfg = TrainConfig(embedding_dim=8, encoder_units=8, decoder_units=8)
    x, y = tiny_data()
    model = build_model(cfg, model_config(cfg, VOCAB, VOCAB))
    model.fit(x, y, epochs=4, verbose=0, callbacks=[epoch_weights(tmp_path, 2)])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["epoch_002.keras", "epoch_003.keras"]
    fresh = build_model(cfg, model_config(cfg, VOCAB, VOCAB))
    fresh.load_weights(tmp_path / "epoch_003.keras")
    for a, b in zip(model.get_weights(), fresh.get_weights(), strict=True):
        np.testing.assert_array_equal(a, b)


def test_checkpoint_average_is_kept_only_when_it_lowers_val_loss(tmp_path):
    cfg = TrainConfig(embedding_dim=8, encoder_units=8, decoder_units=8, lr=1e-2)
    x, y = tiny_data()
    model = build_model(cfg, model_config(cfg, VOCAB, VOCAB))
    model.fit(x, y, epochs=3, verbose=0)
    good = model.get_weights()
    rng = np.random.default_rng(1)
    bad = [w + rng.normal(0, 1.0, w.shape).astype(w.dtype) for w in good]
    data = tf.data.Dataset.from_tensor_slices((x, y)).batch(16)

    # Files: the trained weights and a perturbed copy; the model holds the trained
    # ones. The average is half-way to noise, so it loses and is not kept.
    for epoch, weights in enumerate((good, bad)):
        model.set_weights(weights)
        model.save_weights(tmp_path / f"epoch_{epoch:03d}.weights.h5")
    model.set_weights(good)

    def measure(m):
        return m.evaluate(data, verbose=0, return_dict=True)["loss"]

    result = average_checkpoints(model, tmp_path, measure, log=lambda *a: None)
    assert result["average"] > result["best_checkpoint"] and not result["kept"]
    for a, b in zip(model.get_weights(), good, strict=True):
        np.testing.assert_array_equal(a, b)
    model.set_weights([(g + b) / 2 for g, b in zip(good, bad, strict=True)])
    assert measure(model) == pytest.approx(result["average"], rel=1e-5)

    # Files: twice the trained weights; the model holds the perturbed ones. The
    # average (the trained weights) wins and is what the model holds afterwards.
    model.set_weights(good)
    model.save_weights(tmp_path / "epoch_001.weights.h5")
    model.set_weights(bad)
    result = average_checkpoints(model, tmp_path, measure, log=lambda *a: None)
    assert result["kept"] and result["average"] < result["best_checkpoint"]
    for a, b in zip(model.get_weights(), good, strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)

    # A higher-is-better monitor (val_bleu) flips the comparison: the lower-loss
    # average now loses to the perturbed weights the model holds.
    model.set_weights(bad)
    result = average_checkpoints(model, tmp_path, measure, log=lambda *a: None, monitor="val_bleu")
    assert result["average"] < result["best_checkpoint"] and not result["kept"]
    for a, b in zip(model.get_weights(), bad, strict=True):
        np.testing.assert_array_equal(a, b)
    model.set_weights(good)
    for a, b in zip(model.get_weights(), good, strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)


def test_init_from_starts_with_the_trained_weights_and_tokenizers(dates_run, tmp_path):
    source, _ = dates_run
    settings = json.loads((source / "config.json").read_text())["train"]
    same = {k: settings[k] for k in ("dates_train_size", "embedding_dim", "encoder_units", "decoder_units",
                                     "batch_size")}
    same["limit_train"] = 1000  # of its 6,000 pairs: one epoch from the trained weights needs no more
    metrics = run(TrainConfig(out=str(tmp_path), init_from=str(source), epochs=1, lr=1e-4, verbose=0, **same))
    for name in ("src.spm.model", "tgt.spm.model"):
        assert (tmp_path / name).read_bytes() == (source / name).read_bytes()
    fresh_first, source_last = (float(r["loss"]) for r in [
        *list(csv.DictReader(open(source / "history.csv")))[:1],
        *list(csv.DictReader(open(source / "history.csv")))[-1:]])
    first = float(next(csv.DictReader(open(tmp_path / "history.csv")))["loss"])
    # one epoch from the trained weights at a small LR stays near where they ended,
    # far below what a fresh model's first epoch reaches
    assert first < source_last * 1.2 < fresh_first
    assert metrics["held_out"]["exact_match"] > 0.3

    # The same command again (not a resume: no backup left) replaces the finished
    # run instead of appending to its history; other dropout rates are the same model.
    (tmp_path / "epochs").mkdir()
    (tmp_path / "epochs" / "epoch_007.weights.h5").write_bytes(b"an old epoch")  # as runs before 2026-12-07 kept
    (tmp_path / "epochs" / "epoch_008.keras").write_bytes(b"an old epoch")
    other_dropout = settings["dropout"] + 0.05
    again = run(TrainConfig(out=str(tmp_path), init_from=str(source), epochs=1, lr=1e-4, verbose=0,
                            dropout=other_dropout, word_dropout=0.1, **same))
    saved = json.loads((tmp_path / "config.json").read_text())["model"]
    assert saved["dropout"] == other_dropout and saved["word_dropout"] == 0.1
    assert again["epochs_run"] == again["epochs_this_process"] == 1
    assert len(list(csv.DictReader(open(tmp_path / "history.csv")))) == 1
    assert not (tmp_path / "epochs" / "epoch_007.weights.h5").exists()
    assert not (tmp_path / "epochs" / "epoch_008.keras").exists()

    with pytest.raises(ValueError, match="differs from this run's"):
        run(TrainConfig(out=str(tmp_path / "other"), init_from=str(source), epochs=1, verbose=0,
                        **{**same, "decoder_units": 48}))
    with pytest.raises(ValueError, match="missing model.keras"):
        TrainConfig(init_from=str(tmp_path / "nowhere")).validate()
    with pytest.raises(ValueError, match="--init-from and --out are the same folder"):
        TrainConfig(init_from=str(source), out=str(source)).validate()


def test_val_bleu_is_logged_every_epoch_and_picks_the_checkpoint(tmp_path):
    """`val_bleu` in history.csv is the greedy BLEU of the weights at that epoch's
    end, and with `monitor: val_bleu` the kept checkpoint is the best-BLEU epoch's."""
    from keras_attn.saving import load_model
    from pipelines.tokenizer import load_processor

    cfg = TrainConfig(out=str(tmp_path), dates_train_size=3000, epochs=3, embedding_dim=16, encoder_units=16,
                      decoder_units=32, lr=5e-3, batch_size=64, val_bleu=True, monitor="val_bleu", verbose=0)
    metrics = run(cfg)
    bleus = [float(r["val_bleu"]) for r in csv.DictReader(open(tmp_path / "history.csv"))]
    assert len(bleus) == metrics["epochs_run"] == 3 and all(0 <= b <= 100 for b in bleus)
    assert len(set(bleus)) > 1  # the model changes between epochs, and so does its BLEU
    _, valid, _ = load_corpora(cfg)
    src_sp, tgt_sp = (load_processor((tmp_path / f"{side}.spm.model").read_bytes()) for side in ("src", "tgt"))
    kept = evaluate_held_out(load_model(tmp_path / "model.keras"), valid, src_sp, tgt_sp, cfg.max_len, limit=None)
    assert kept["bleu"] == max(bleus)


def test_the_val_bleu_monitor_needs_its_callback():
    with pytest.raises(ValueError, match="needs the validation_bleu callback"):
        callbacks(TrainConfig(val_bleu=True, monitor="val_bleu"), Path("."), 1)


def test_nan_loss_stops_and_keeps_the_last_good_checkpoint(tmp_path):
    cfg = TrainConfig(out=str(tmp_path), embedding_dim=8, encoder_units=8, decoder_units=8)
    x, y = tiny_data()
    model = build_model(cfg, model_config(cfg, VOCAB, VOCAB))
    model.fit(x, y, validation_data=(x, y), epochs=1, verbose=0, callbacks=callbacks(cfg, tmp_path, 100))
    good = (tmp_path / "model.keras").read_bytes()

    class Poison(keras.callbacks.Callback):
        def on_train_batch_end(self, batch, logs=None):
            for w in self.model.decoder.generator.weights:
                w.assign(np.full(w.shape, np.nan, "float32"))

    history = model.fit(x, y, validation_data=(x, y), epochs=3, verbose=0, batch_size=16,
                        callbacks=[Poison()] + callbacks(cfg, tmp_path, 100))
    assert len(history.history["loss"]) <= 1
    assert (tmp_path / "model.keras").read_bytes() == good


def test_multi30k_smoke_run_and_onnx_parity(multi30k_dir, tmp_path, capsys):
    """A few hundred real pairs: train, export, and onnxruntime ids == TensorFlow ids
    for greedy and beam search on 200 validation sentences. Held-out and validation
    sources longer than max_len are counted and said once in the log, not warned about."""
    import sentencepiece as spm

    from keras_attn.runtime import Translator, TruncationWarning
    from keras_attn.runtime.translator import clean, pre_pad
    from keras_attn.saving import load_model
    from keras_attn.search import InferenceModel
    from pipelines.corpus import load_multi30k
    from pipelines.export import export, validation_sentences

    cfg = TrainConfig(corpus="multi30k", data_dir=str(multi30k_dir), limit_train=600, vocab_size=400,
                      embedding_dim=32, encoder_units=32, decoder_units=64, epochs=2, max_len=40,
                      val_bleu=True, out=str(tmp_path / "run"), verbose=2)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        metrics = run(cfg)
    assert not [w for w in caught if issubclass(w.category, TruncationWarning)]
    assert metrics["epochs_run"] == 2
    assert metrics["held_out"]["split"].startswith("multi30k/test_2016_flickr")
    assert metrics["held_out"]["sentences"] == 1000
    src_sp = spm.SentencePieceProcessor(model_file=str(tmp_path / "run" / "src.spm.model"))
    splits = load_multi30k(multi30k_dir)
    too_long = {split: sum(len(src_sp.encode(clean(s))) > 40 for s in splits[split].sources)
                for split in ("val", "test_2016_flickr")}
    assert metrics["held_out"]["truncated_sources"] == too_long["test_2016_flickr"] > 0
    said = capsys.readouterr().out
    assert said.count(f"[val_bleu] {too_long['val']:,} multi30k/val.de-en sources longer than max_len=40 tokens "
                      "are translated from their first 40") == 1
    assert (f"[eval] {too_long['test_2016_flickr']:,} of its sources longer than max_len=40 tokens were "
            "translated from their first 40") in said
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        bundle = export(tmp_path / "run", tmp_path / "bundle", beam=4, log=lambda *a: None)
    # the export's own check encodes validation sentences longer than the limit: it says nothing of them
    assert not [w for w in caught if issubclass(w.category, TruncationWarning)]
    translator = Translator.load(bundle)
    with pytest.warns(TruncationWarning):
        translator.encode(validation_sentences(json.loads((tmp_path / "run" / "config.json").read_text())))
    assert (translator.config["corpus"], translator.config["source_language"],
            translator.config["target_language"]) == ("multi30k", "de", "en")
    inference = InferenceModel(load_model(tmp_path / "run" / "model.keras"))
    with pytest.warns(TruncationWarning):  # max_len 40 cuts some: both sides get the same cut ids
        rows = translator.encode(splits["val"].sources[:200])
    for start in range(0, 200, 100):
        source = pre_pad(rows[start:start + 100])
        for beam in (1, 4):
            np.testing.assert_array_equal(translator.decode_ids(source, beam, 40)["ids"],
                                          inference.translate_ids(source, 40, beam, 0.6)["ids"].numpy())


def test_a_second_train_into_a_folder_being_written_is_refused(tmp_path, capsys):
    """The same command started twice wrote one folder's checkpoints, backup and history
    from two processes. (`flock` locks belong to each open file, so a holder in this
    process stands for another process.)"""
    import os

    from pipelines import cli

    out = tmp_path / "run"
    with sole_writer(out):
        status = cli.main(["train", "--dates-train-size", "200", "--epochs", "1", "--out", str(out)])
    assert status == 2
    printed = capsys.readouterr()
    assert f"{out}: another keras-attn train (process {os.getpid()}) is writing there" in printed.err
    assert "[data]" not in printed.out  # refused before preparing the data, not after
    assert [p.name for p in out.iterdir()] == [".train.lock"]  # the refused run wrote nothing
    with sole_writer(out):  # released when its holder ended
        pass


def test_a_new_run_replaces_the_previous_runs_results_only_when_it_starts_writing(tmp_path):
    """A new (not resumed) run in a used folder deletes the old checkpoint, history and
    epoch weights (they would mix with its own), when it writes its own tokenizers and
    config.json; reading and checking its data writes nothing."""
    out = tmp_path / "run"
    (out / "epochs").mkdir(parents=True)
    stale = [out / "model.keras", out / "history.csv", out / "metrics.json", out / "epochs" / "epoch_001.keras"]
    for path in stale:
        path.write_text("from the previous run")
    lines = []
    cfg = TrainConfig(out=str(out), dates_train_size=200, verbose=0)
    data = prepare_data(cfg, out, lines.append)
    assert all(path.exists() for path in stale) and sorted(p.name for p in out.iterdir()) == [
        "epochs", "history.csv", "metrics.json", "model.keras"]
    model_cfg = model_config(cfg, data.src_sp.get_piece_size(), data.tgt_sp.get_piece_size())
    start_writing(cfg, data, model_cfg, out, lines.append)
    assert not any(path.exists() for path in stale)
    assert (out / "src.spm.model").read_bytes() == data.src_model and (out / "tgt.spm.model").read_bytes() == data.tgt_model
    assert json.loads((out / "config.json").read_text())["model"] == model_cfg.to_dict()
    assert any("holds a previous run" in line and "model.keras" in line for line in lines)


def test_an_init_from_of_another_architecture_leaves_the_previous_run(dates_run, tmp_path, capsys):
    previous = tmp_path / "run"
    previous.mkdir()
    for name in ("model.keras", "history.csv", "metrics.json"):
        (previous / name).write_text(name)
    status = cli.main(["train", "--init-from", str(dates_run[0]), "--dates-train-size", "200", "--embedding-dim", "8",
                       "--out", str(previous)])
    assert status == 2 and "differs from this run's" in capsys.readouterr().err
    assert sorted(p.name for p in previous.iterdir()) == ["history.csv", "metrics.json", "model.keras"]


@pytest.mark.parametrize("argv,message", [
    (["train", "--corpus", "files", "--train-src", "{d}/missing.de", "--train-tgt", "{d}/missing.en"],
     "missing.de: no such file"),
    (["train", "--corpus", "files", "--train-src", "{d}/a.txt", "--train-tgt", "{d}/b.txt"],
     "misaligned corpus"),
    (["train", "--corpus", "files", "--train-src", "{d}/bad.txt", "--train-tgt", "{d}/a.txt"],
     "bad.txt:2: invalid UTF-8"),
    (["train", "--corpus", "files", "--train-src", "{d}/a.txt", "--train-tgt", "{d}/a.txt",
      "--valid-src", "{d}/empty.txt", "--valid-tgt", "{d}/empty.txt"], "empty.txt: no validation pairs"),
    (["train", "--corpus", "files", "--train-src", "{d}/a.txt", "--train-tgt", "{d}/a.txt", "--vocab-size", "5"],
     "--vocab-size 5: too small for this text, which needs at least 11 pieces"),
    (["train", "--corpus", "files", "--train-src", "{d}/long.txt", "--train-tgt", "{d}/long.txt", "--max-len", "2"],
     "long.txt: every pair has a side longer than --max-len 2 tokens, so none is left"),
    (["train", "--corpus", "files", "--train-src", "{d}/short.txt", "--train-tgt", "{d}/short.txt", "--max-len", "4",
      "--valid-src", "{d}/long.txt", "--valid-tgt", "{d}/long.txt"], "long.txt: every pair has a side longer"),
    # all of a one-pair corpus went to validation, and the message said only "no training pairs left"
    (["train", "--corpus", "files", "--train-tsv", "{d}/one.tsv"],
     "one.tsv: 1 pair (2 empty or whitespace-only pairs dropped): too few to hold out a validation pair"),
    (["train", "--corpus", "files", "--train-tsv", "{d}/none.tsv"],
     "none.tsv: 0 pairs (2 empty or whitespace-only pairs dropped): no training pairs left"),
    (["train", "--corpus", "nothing"], "--corpus: expected one of dates, multi30k, files, got 'nothing'"),
    (["train", "--lr-schedule", "linear"], "--lr-schedule: expected one of plateau, cosine, got 'linear'"),
    (["train", "--lr-factor", "2"], "--lr-factor must be in (0, 1), got 2.0"),
    (["train", "--train-src", "{d}/a.txt", "--train-tgt", "{d}/b.txt"], "--train-src is for --corpus files"),
    (["train", "--config", "{d}/nope.yaml"], "nope.yaml: no such file (the --config file)"),
])
def test_cli_errors_are_one_line_with_status_2(tmp_path, capsys, argv, message):
    (tmp_path / "a.txt").write_text("eins\nzwei\ndrei\n")
    (tmp_path / "b.txt").write_text("one\ntwo\n")
    (tmp_path / "bad.txt").write_bytes(b"gut\nschlecht \xfe\nja\n")
    (tmp_path / "empty.txt").write_text("")
    (tmp_path / "long.txt").write_text("eins zwei drei vier\n" * 3)
    (tmp_path / "short.txt").write_text("x y\n" * 3)
    (tmp_path / "one.tsv").write_text("eins\tone\n\t\nzwei\t \n")
    (tmp_path / "none.tsv").write_text("\t\nzwei\t \n")
    previous = tmp_path / "run"  # a finished run's files, which a failed new run must not delete
    previous.mkdir()
    for name in ("model.keras", "history.csv", "metrics.json"):
        (previous / name).write_text(name)
    status = cli.main([a.format(d=tmp_path) for a in argv] + ["--out", str(previous)])
    err = capsys.readouterr().err
    assert status == 2
    assert message in err and "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert sorted(p.name for p in previous.iterdir()) == ["history.csv", "metrics.json", "model.keras"]
    assert cli.main([a.format(d=tmp_path) for a in argv] + ["--out", str(tmp_path / "new")]) == 2
    assert not (tmp_path / "new").exists()  # and a new folder is not created


@pytest.mark.parametrize("argv,message", [
    (["--epochs", "0"], "--epochs: expected a positive integer, got 0"),
    (["--average-last=-1"], "--average-last: expected a non-negative integer, got -1"),
])
def test_cli_rejects_out_of_range_numbers(capsys, argv, message):
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["train", *argv])
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err


class _Stream(io.StringIO):
    def __init__(self, tty: bool):
        super().__init__()
        self.tty = tty

    def isatty(self):
        return self.tty


def test_progress_bar_only_on_a_terminal(capsys):
    assert fit_verbosity(1, _Stream(tty=True)) == 1
    assert [fit_verbosity(v, _Stream(tty=False)) for v in (0, 1, 2)] == [0, 2, 2]
    # pytest's captured stdout is not a terminal: the default level logs one line per epoch
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(1)])
    model.compile(optimizer="sgd", loss="mse")
    model.fit(np.zeros((64, 3)), np.zeros((64, 1)), batch_size=4, epochs=3, verbose=fit_verbosity(1))
    lines = [line for line in capsys.readouterr().out.splitlines() if "loss" in line]
    assert len(lines) == 3, lines


def test_checkpoint_averaging_measure_does_not_warn_at_the_end_of_the_data(recwarn):
    """An evaluation over a dataset of unknown length (the bucketed validation set)
    ends with Keras's "Your input ran out of data" warning, which is not an error."""
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(1)])
    model.compile(optimizer="sgd", loss="mse")
    pairs = tf.data.Dataset.from_tensor_slices((np.ones((8, 3)), np.ones((8, 1)))).filter(lambda x, y: True)
    valid_ds = pairs.batch(4)
    assert valid_ds.cardinality() == tf.data.UNKNOWN_CARDINALITY
    measure = validation_measure(TrainConfig(), valid_ds, None, None, None)
    assert measure(model) == pytest.approx(model.evaluate(valid_ds, verbose=0))
    assert any("ran out of data" in str(w.message) for w in recwarn)  # the unguarded evaluate above
    recwarn.clear()
    measure(model)
    assert not [w for w in recwarn if "ran out of data" in str(w.message)]
