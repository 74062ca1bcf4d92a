"""A killed or interrupted training run resumes to exactly the run it would have made."""

import csv
import json
import re
from pathlib import Path

import keras
import numpy as np
import pytest

from pipelines import cli
from pipelines.callbacks import best_checkpoint, callbacks, logged_epochs
from pipelines.resume import (
    common_epoch,
    read_backup,
    restore_backup,
    rewind_backup,
    saved_seed_states,
    write_backup,
)
from pipelines.train import TrainConfig, build_model, model_config, report_resume, run
from tests.helpers import VOCAB, Interrupt, tiny_data


def test_a_killed_run_resumes_without_losing_finished_epochs(tmp_path):
    cfg = TrainConfig(out=str(tmp_path), embedding_dim=8, encoder_units=8, decoder_units=8, epochs=4)
    x, y = tiny_data()
    model = build_model(cfg, model_config(cfg, VOCAB, VOCAB))
    with pytest.raises(KeyboardInterrupt):
        model.fit(x, y, validation_data=(x, y), epochs=4, verbose=0,
                  callbacks=callbacks(cfg, tmp_path, 100) + [Interrupt()])
    weights_after_two = model.get_weights()
    assert (tmp_path / "backup").is_dir()
    fresh = build_model(cfg, model_config(cfg, VOCAB, VOCAB))
    seen = []
    history = fresh.fit(x, y, validation_data=(x, y), epochs=4, verbose=0,
                        callbacks=callbacks(cfg, tmp_path, 100)
                        + [keras.callbacks.LambdaCallback(on_epoch_begin=lambda e, logs: seen.append(e))])
    assert seen == [2, 3]  # epochs 0 and 1 were finished before the kill and are not redone
    assert len(history.history["loss"]) == 2
    rows = list(csv.DictReader(open(tmp_path / "history.csv")))
    assert [int(r["epoch"]) for r in rows] == [0, 1, 2, 3]
    # Training ended: the backup says so, and its weights are gone (run() removes the rest when reported).
    assert read_backup(tmp_path)["training_ended"] and not list((tmp_path / "backup").glob("*.keras"))
    assert len(weights_after_two) == len(fresh.get_weights())


def test_a_killed_ema_run_resumes_to_the_weights_an_uninterrupted_run_reaches(tmp_path):
    """The backup holds the trained weights and the optimizer's average, so a resumed
    run continues both; had it saved the swapped-in average as the weights, the
    resumed run would train on from the average and end elsewhere."""
    x, y = tiny_data()
    finals = []
    for name, killed in (("straight", False), ("killed", True)):
        out = tmp_path / name
        out.mkdir()
        cfg = TrainConfig(out=str(out), embedding_dim=8, encoder_units=8, decoder_units=8, lr=1e-2, ema=0.5,
                          dropout=0.0, epochs=4)
        keras.utils.set_random_seed(0)
        model = build_model(cfg, model_config(cfg, VOCAB, VOCAB))
        fit = dict(validation_data=(x, y), epochs=4, batch_size=16, shuffle=False, verbose=0)
        if killed:
            with pytest.raises(KeyboardInterrupt):
                model.fit(x, y, **fit, callbacks=callbacks(cfg, out, 100) + [Interrupt()])
            keras.utils.set_random_seed(1)  # a new process: other initial weights, restored from the backup
            model = build_model(cfg, model_config(cfg, VOCAB, VOCAB))
        model.fit(x, y, **fit, callbacks=callbacks(cfg, out, 100))
        finals.append(model.get_weights())
    for a, b in zip(*finals, strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)


def test_a_resumed_run_keeps_the_best_checkpoint_by_the_monitor(tmp_path):
    (tmp_path / "history.csv").write_text("epoch,val_loss,val_bleu\n0,2.0,10.5\n1,1.5,30.25\n2,1.0,20.0\n")
    (tmp_path / "model.keras").write_bytes(b"a checkpoint")
    cfg = TrainConfig(embedding_dim=8, encoder_units=8, decoder_units=8)
    model = build_model(cfg, model_config(cfg, VOCAB, VOCAB))
    for monitor, best in (("val_bleu", 30.25), ("val_loss", 1.0)):
        checkpoint = best_checkpoint(tmp_path, monitor, logged_epochs(tmp_path, monitor))
        checkpoint.set_model(model)
        checkpoint.on_train_begin()
        assert checkpoint.best == best
        checkpoint.on_epoch_end(3, {monitor: 25.0 if monitor == "val_bleu" else 1.2})
        assert (tmp_path / "model.keras").read_bytes() == b"a checkpoint"  # not better: not saved


def test_a_resumed_run_continues_the_plateau_schedule_and_early_stopping(tmp_path):
    """Resuming replays the logged epochs: epoch 2 did not improve on epoch 1, so one
    more such epoch halves the rate (lr_patience 2) and two more stop (patience 3).
    Counted from scratch, neither would happen yet."""
    (tmp_path / "history.csv").write_text(
        "epoch,learning_rate,val_loss\n0,0.001,3.0\n1,0.001,2.5\n2,0.001,2.7\n")
    cfg = TrainConfig(embedding_dim=8, encoder_units=8, decoder_units=8, lr_patience=2, patience=3)
    model = build_model(cfg, model_config(cfg, VOCAB, VOCAB))
    for resumed in (False, True):
        if resumed:
            (tmp_path / "backup").mkdir()
        model.optimizer.learning_rate = 1e-3
        model.stop_training = False
        counting = [c for c in callbacks(cfg, tmp_path, 100)
                    if isinstance(c, (keras.callbacks.EarlyStopping, keras.callbacks.ReduceLROnPlateau))]
        for callback in counting:
            callback.set_model(model)
            callback.on_train_begin()
        for epoch in (3, 4):
            for callback in counting:
                callback.on_epoch_end(epoch, {"val_loss": 2.6})
            if epoch == 3:
                halved = float(model.optimizer.learning_rate) == pytest.approx(5e-4)
                assert halved == resumed
        assert model.stop_training == resumed


# The resume tests' run: dropout and word dropout, so that exact resumption needs the masks' streams.
RESUMED = dict(dates_train_size=400, batch_size=32, epochs=3, embedding_dim=8, encoder_units=8, decoder_units=16,
               dropout=0.3, word_dropout=0.2)


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    """`uninterrupted(**options)`: the folder of RESUMED (with `options`) run once without
    a kill, trained once per module for the tests that compare a killed run with it."""
    folders = {}

    def folder(**options):
        key = json.dumps(options, sort_keys=True)
        if key not in folders:
            folders[key] = tmp_path_factory.mktemp("uninterrupted")
            run(TrainConfig(out=str(folders[key]), **RESUMED, **options, verbose=0))
        return folders[key]

    return folder


def run_killed_after_epoch_1(cfg, monkeypatch, right_after_the_backup=False):
    """`run(cfg)` killed at epoch 1's end: after every callback, or right after the
    backup (before validation BLEU, the checkpoint and history.csv)."""
    import pipelines.train

    made = pipelines.train.callbacks

    def killing(*args, **kwargs):
        listed = made(*args, **kwargs)
        at = len(listed)
        if right_after_the_backup:
            at = 1 + next(i for i, c in enumerate(listed) if type(c).__name__ == "EpochBackup")
        return listed[:at] + [Interrupt()] + listed[at:]

    with monkeypatch.context() as patch:
        patch.setattr(pipelines.train, "callbacks", killing)
        with pytest.raises(KeyboardInterrupt):
            run(cfg)


def test_a_resumed_run_makes_the_reduction_due_at_the_last_finished_epoch_once(tmp_path):
    """Epoch 1 did not improve on epoch 0 (lr_patience 1), so the rate was halved at its
    end, after the backup held the rate of epoch 1. Resumed with that rate, the run
    halves it; resumed with the halved rate already, it does not halve it again."""
    (tmp_path / "history.csv").write_text("epoch,learning_rate,val_loss\n0,0.001,3.0\n1,0.001,3.1\n")
    (tmp_path / "backup").mkdir()
    cfg = TrainConfig(embedding_dim=8, encoder_units=8, decoder_units=8, lr_patience=1)
    model = build_model(cfg, model_config(cfg, VOCAB, VOCAB))
    for restored, expected in ((1e-3, 5e-4), (5e-4, 5e-4)):
        model.optimizer.learning_rate = restored
        plateau = [c for c in callbacks(cfg, tmp_path, 100) if isinstance(c, keras.callbacks.ReduceLROnPlateau)][0]
        plateau.set_model(model)
        plateau.on_train_begin()
        assert float(model.optimizer.learning_rate) == pytest.approx(expected)


@pytest.mark.parametrize("options", [
    {},
    {"steps_per_epoch": 5},
    # The tiny model's validation BLEU does not improve at epoch 1, so the plateau halves the
    # rate at the kill (asserted below), after the backup was written.
    {"val_bleu": True, "monitor": "val_bleu", "ema": 0.5, "average_last": 2},
], ids=["plain", "steps_per_epoch", "halved_at_the_kill"])
def test_a_killed_run_resumes_to_exactly_the_run_an_uninterrupted_process_makes(tmp_path, monkeypatch, options,
                                                                                uninterrupted):
    """Killed after epoch 1 and resumed, a run sees the batch orders, dropout masks and
    learning rates an uninterrupted run sees, so every epoch's losses and the kept
    checkpoint are the same to the last bit. Resumed with fresh shuffles, with the
    masks' streams restarted, or without the reduction made at the kill, the epochs
    after it differ (checked by disabling each)."""
    from keras_attn.saving import load_model

    cfg = TrainConfig(out=str(tmp_path), **RESUMED, verbose=0, **options)
    run_killed_after_epoch_1(cfg, monkeypatch)
    assert saved_seed_states(tmp_path)
    run(cfg)
    runs = {}
    for name, folder in (("straight", uninterrupted(**options)), ("killed", tmp_path)):
        rows = list(csv.DictReader(open(folder / "history.csv")))
        runs[name] = ([(r["loss"], r["val_loss"], r["learning_rate"]) for r in rows],
                      load_model(folder / "model.keras").get_weights())
    (straight_epochs, straight_weights), (killed_epochs, killed_weights) = runs["straight"], runs["killed"]
    assert len(straight_epochs) == 3 and killed_epochs == straight_epochs
    if "monitor" in options:
        assert float(straight_epochs[2][2]) < float(straight_epochs[1][2])
    for a, b in zip(straight_weights, killed_weights, strict=True):
        np.testing.assert_array_equal(a, b)


def test_a_kill_during_an_epochs_end_after_its_backup_resumes_after_that_epoch(tmp_path, monkeypatch, capsys,
                                                                              uninterrupted):
    """Killed after the backup of epoch 1 but before history.csv logged it (e.g. while
    validation BLEU decodes), the run resumes at epoch 2 with epoch 2's batch order
    and masks, as the backup's metadata counts epoch 1 finished, and says the row is
    missing."""
    cfg = TrainConfig(out=str(tmp_path), **RESUMED, verbose=2)
    run_killed_after_epoch_1(cfg, monkeypatch, right_after_the_backup=True)
    assert [r["epoch"] for r in csv.DictReader(open(tmp_path / "history.csv"))] == ["0"]
    capsys.readouterr()
    run(cfg)
    losses = {name: {r["epoch"]: r["loss"] for r in csv.DictReader(open(folder / "history.csv"))}
              for name, folder in (("straight", uninterrupted()), ("killed", tmp_path))}
    assert "the kill came during epoch 1's end, after its backup: history.csv lacks its row" in capsys.readouterr().out
    assert losses["killed"] == {e: loss for e, loss in losses["straight"].items() if e != "1"}


def interrupted_midway(write, where: str, call: int):
    """`write` (`keras.Model.save` or `save_weights`) that, at its `call`-th call on a
    path containing `where`, writes half the file and raises, as SIGTERM (which the
    commands raise where the program is) or a full disk does during the write."""
    calls = []

    def writing(model, *args, **kwargs):
        write(model, *args, **kwargs)
        path = args[0] if args else kwargs["filepath"]  # BackupAndRestore gave it by name
        if where in str(path):
            calls.append(path)
            if len(calls) == call:
                with open(path, "r+b") as handle:
                    handle.truncate(Path(path).stat().st_size // 2)
                raise KeyboardInterrupt("simulated kill during the write")

    return writing, calls


def test_a_kill_while_the_backup_is_written_resumes_from_the_epoch_before(tmp_path, monkeypatch, uninterrupted):
    """Killed while epoch 1's backup was being written, the same command resumes from
    epoch 0's backup and ends as an uninterrupted run does. Keras's BackupAndRestore
    rewrote its weights file in place: the half-written file failed the resume (h5py's
    "truncated file" here; "8 objects could not be loaded" when a real SIGTERM came as
    the file was opened), and every finished epoch was lost."""
    cfg = TrainConfig(out=str(tmp_path), **RESUMED, verbose=0)
    writing, calls = interrupted_midway(keras.Model.save, "/backup/", call=2)
    with monkeypatch.context() as patch:
        patch.setattr(keras.Model, "save", writing)
        with pytest.raises(KeyboardInterrupt, match="during the write"):
            run(cfg)
    assert len(calls) == 2
    backup = tmp_path / "backup"  # epoch 0's, and not the half-written file
    assert sorted(p.name for p in backup.iterdir()) == ["epoch_001.keras", "training_metadata.json"]
    run(cfg)
    losses = {name: [(r["epoch"], r["loss"]) for r in csv.DictReader(open(folder / "history.csv"))]
              for name, folder in (("straight", uninterrupted()), ("killed", tmp_path))}
    assert len(losses["straight"]) == 3 and losses["killed"] == losses["straight"]
    assert not backup.exists()


def test_a_kill_while_the_checkpoint_is_written_keeps_the_previous_one(tmp_path, monkeypatch):
    """Killed while a better epoch's model.keras was being written, the folder keeps the
    checkpoint it had, and no temporary file. Keras's ModelCheckpoint rewrote the file
    in place, leaving half a zip where the best model had been."""
    from keras_attn.saving import load_model

    cfg = TrainConfig(out=str(tmp_path), dates_train_size=200, batch_size=32, epochs=3,
                      embedding_dim=8, encoder_units=8, decoder_units=16, verbose=0)
    saved = []
    writing, calls = interrupted_midway(keras.Model.save, "model.keras", call=2)

    def keeping_a_copy(model, *args, **kwargs):  # the checkpoints' bytes, to compare (not the backups')
        writing(model, *args, **kwargs)
        path = Path(args[0] if args else kwargs["filepath"])
        if "model.keras" in path.name:
            saved.append(path.read_bytes())

    monkeypatch.setattr(keras.Model, "save", keeping_a_copy)
    with pytest.raises(KeyboardInterrupt, match="during the write"):
        run(cfg)
    monkeypatch.undo()
    assert len(calls) == 2
    assert (tmp_path / "model.keras").read_bytes() == saved[0]
    load_model(tmp_path / "model.keras")
    assert not [p.name for p in tmp_path.iterdir() if ".tmp" in p.name]


def test_a_kill_after_the_training_ended_finishes_the_run_without_training_again(tmp_path, monkeypatch, capsys):
    """Killed while it scored the held-out set (after `fit` returned, with the backup
    deleted), the same command started a new run, which deleted the trained model and
    trained again. It now finishes the run: the same checkpoint and history,
    metrics.json, no epoch trained, and no backup left."""
    import pipelines.train

    cfg = TrainConfig(out=str(tmp_path), dates_train_size=200, batch_size=32, epochs=2, embedding_dim=8,
                      encoder_units=8, decoder_units=16, average_last=2, verbose=2)

    def killed(*args, **kwargs):
        raise KeyboardInterrupt("simulated kill while scoring")

    with monkeypatch.context() as patch:
        patch.setattr(pipelines.train, "evaluate_held_out", killed)
        with pytest.raises(KeyboardInterrupt):
            run(cfg)
    trained = (tmp_path / "model.keras").read_bytes(), (tmp_path / "history.csv").read_text()
    assert not (tmp_path / "metrics.json").exists()
    capsys.readouterr()
    metrics = run(cfg)
    said = capsys.readouterr().out
    assert "the kill came after its training ended; finishing the run without training" in said
    assert "Epoch" not in said and "starting a new one" not in said and "[done] (trained before the kill)." in said
    assert metrics["epochs_this_process"] == 0 and metrics["epochs_run"] == 2
    assert ((tmp_path / "model.keras").read_bytes(), (tmp_path / "history.csv").read_text()) == trained
    assert (tmp_path / "metrics.json").is_file() and not (tmp_path / "backup").exists()


def test_resuming_from_a_backup_without_dropout_streams_says_the_masks_restart(tmp_path, monkeypatch, capsys):
    """A backup as Keras's BackupAndRestore wrote it (until 2026-12-07) still resumes:
    `latest.weights.h5`, and metadata without a weights file's name or the streams."""
    cfg = TrainConfig(out=str(tmp_path), dates_train_size=200, batch_size=32, epochs=3, embedding_dim=8,
                      encoder_units=8, decoder_units=16, verbose=2)
    run_killed_after_epoch_1(cfg, monkeypatch)
    backup = tmp_path / "backup"
    keras.models.load_model(backup / "epoch_002.keras").save_weights(backup / "latest.weights.h5")
    (backup / "epoch_002.keras").unlink()
    (backup / "training_metadata.json").write_text(json.dumps({"epoch": 2, "batch": 0}))
    capsys.readouterr()
    run(cfg)
    said = capsys.readouterr().out
    assert f"resuming {tmp_path} after 2 finished epochs" in said
    assert "the masks restart from --seed, so this run will not match an uninterrupted one" in said
    assert len(list(csv.DictReader(open(tmp_path / "history.csv")))) == 3


@pytest.mark.parametrize("finished, said", [(1, "after 1 finished epoch: passing over its batch order"),
                                             (3, "after 3 finished epochs: passing over their batch orders")])
def test_the_resume_note_counts_its_epochs(tmp_path, finished, said):
    (tmp_path / "backup").mkdir()
    (tmp_path / "backup" / "training_metadata.json").write_text(json.dumps(
        {"epoch": finished, "weights": "w.weights.h5", "seed_states": []}))
    (tmp_path / "history.csv").write_text("epoch,val_loss\n" + "".join(f"{e},1.0\n" for e in range(finished)))
    logged = []
    report_resume(tmp_path, finished, "val_loss", logged.append)
    assert logged == [f"[train] resuming {tmp_path} {said}"]


def test_an_interrupted_run_resumes_only_with_its_own_model_settings(dates_run, tmp_path, capsys):
    """Other model settings failed inside Keras's restore with a multi-line message about
    variables that could not be loaded, after rewriting config.json with the new settings."""
    import shutil

    out = tmp_path / "run"
    out.mkdir()
    for name in ("config.json", "src.spm.model", "tgt.spm.model"):
        shutil.copy(dates_run[0] / name, out / name)
    (out / "backup").mkdir()  # what a killed run leaves: `resuming` sees it
    before = (out / "config.json").read_bytes()
    status = cli.main(["train", "--dates-train-size", "6000", "--epochs", "4", "--embedding-dim", "16",
                       "--encoder-units", "32", "--decoder-units", "64", "--out", str(out)])
    err = capsys.readouterr().err
    assert status == 2 and len(err.strip().splitlines()) == 1
    assert f"{out} holds an interrupted run of another model (embedding_dim 32 there, 16 now)" in err
    assert (out / "config.json").read_bytes() == before


def workers(*states):
    """`common_epoch`'s states of workers 0, 1, ...: (finished epochs, training ended, the epoch before kept)."""
    return {f"worker {i}": state for i, state in enumerate(states)}


@pytest.mark.parametrize("states, epoch", [
    (workers((3, False, True), (3, False, True)), None), (workers((3, True, False), (3, True, False)), None),
    (workers(*[(0, False, False)] * 3), None), (workers((3, False, True), (2, False, True)), 2),
    (workers((2, False, True), (3, False, True), (3, False, True)), 2), (workers((1, False, False), (0, False, False)), 0)])
def test_workers_resume_from_the_epoch_all_their_backups_hold(states, epoch):
    """A kill between the workers' backups at an epoch's end left them an epoch apart: resumed
    as they were, they trained different epochs, and one failed when the other ended."""
    assert common_epoch(states) == epoch


@pytest.mark.parametrize("states, named", [
    (workers((3, True, False), (3, False, True)), "(worker 0: training ended after 3 epochs; worker 1: 3 epochs finished)"),
    ({"chief": (3, False, True), "worker 0": (1, False, False)}, "(chief: 3 epochs finished; worker 0: 1 epoch finished)"),
    (workers((2, True, False), (0, False, False)), "worker 1: no backup)"),
    (workers((3, False, False), (2, False, True)), "2 epochs finished), and those ahead keep no backup of the epoch before")])
def test_workers_backups_that_cannot_resume_together_are_refused(states, named):
    with pytest.raises(ValueError, match=re.escape(named)):
        common_epoch(states)


def test_a_multi_worker_backup_keeps_the_epoch_before_to_rewind_to(tmp_path):
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)])
    model.compile("adam", "mse")
    model.fit(np.ones((4, 3)), np.ones((4, 2)), verbose=0)
    history = ["epoch,loss\n", "0,1.0\n", "1,0.9\n", "2,0.8\n"]
    (tmp_path / "history.csv").write_text("".join(history))
    weights = {}
    for epochs in (1, 2, 3):
        model.set_weights([w + epochs for w in model.get_weights()])
        weights[epochs] = model.get_weights()
        write_backup(model, tmp_path, epochs, keep_previous=True)
    assert sorted(p.name for p in (tmp_path / "backup").glob("*.keras")) == ["epoch_002.keras", "epoch_003.keras"]
    assert read_backup(tmp_path)["previous"]["epoch"] == 2
    rewind_backup(tmp_path, 2)
    assert read_backup(tmp_path)["epoch"] == 2 and not (tmp_path / "backup" / "epoch_003.keras").exists()
    assert (tmp_path / "history.csv").read_text() == "".join(history[:3])
    restore_backup(model, tmp_path)
    assert all(np.array_equal(a, b) for a, b in zip(model.get_weights(), weights[2], strict=True))
    with pytest.raises(ValueError, match="holds no backup after epoch 1"):  # only one epoch back is kept
        rewind_backup(tmp_path, 1)
    rewind_backup(tmp_path, 0)
    assert read_backup(tmp_path) is None
    write_backup(model, tmp_path, 1)
    write_backup(model, tmp_path, 2)  # a single process keeps one
    assert [p.name for p in (tmp_path / "backup").glob("*.keras")] == ["epoch_002.keras"]
    assert read_backup(tmp_path)["previous"] is None
