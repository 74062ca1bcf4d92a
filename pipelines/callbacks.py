"""The training run's Keras callbacks, in the order `callbacks` lists them (tokens/s,
the backup, the EMA swap, validation BLEU, the stop on a NaN loss, the kept
checkpoint, early stopping, the learning-rate schedule, the epochs' weights,
history.csv, TensorBoard), and the averaging of the epochs' weights they keep
(`--average-last`)."""

from __future__ import annotations

import contextlib
import math
import time
import warnings
from pathlib import Path

from keras_attn.files import atomic_save
from pipelines.config import TrainConfig
from pipelines.evaluate import evaluate_held_out
from pipelines.resume import epoch_backup, resuming, weights_files


def throughput_callback(target_tokens: int):
    """Adds `target_tokens_per_second` (training only, validation excluded) to the logs."""
    import keras

    class Throughput(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            self.start = time.perf_counter()

        def on_test_begin(self, logs=None):
            self.train_seconds = time.perf_counter() - self.start

        def on_epoch_end(self, epoch, logs=None):
            seconds = getattr(self, "train_seconds", None) or time.perf_counter() - self.start
            if logs is not None:
                logs["target_tokens_per_second"] = target_tokens / seconds
            self.train_seconds = None

    return Throughput()


def monitor_mode(monitor: str) -> str:
    """`min` for a loss, `max` for BLEU: how Keras's callbacks compare `monitor`."""
    return "max" if monitor == "val_bleu" else "min"


def validation_bleu_callback(corpus, src_sp, tgt_sp, max_len: int, log=print):
    """Adds `val_bleu` to the logs after every epoch: greedy translation of the
    validation set by an inference model sharing the weights being trained, scored
    like `evaluate_held_out`. Put it before the callbacks that read `val_bleu`. Says
    once (`log`) how many validation sources are longer than `max_len` pieces."""
    import keras

    from keras_attn.search import InferenceModel

    class ValidationBleu(keras.callbacks.Callback):
        def on_train_begin(self, logs=None):
            self.inference = InferenceModel(self.model)  # traced once, reused every epoch
            self.told = False

        def on_epoch_end(self, epoch, logs=None):
            if logs is None:
                return
            result = evaluate_held_out(self.model, corpus, src_sp, tgt_sp, max_len, limit=None,
                                       inference=self.inference)
            logs["val_bleu"] = result["bleu"]
            if result["truncated_sources"] and not self.told:
                log(f"[val_bleu] {result['truncated_sources']:,} {corpus.name} sources longer than max_len="
                    f"{max_len} tokens are translated from their first {max_len}")
                self.told = True

    return ValidationBleu()


def read_history(history_csv: Path) -> list[dict]:
    """The rows of a run's history.csv, one per finished epoch (of every process of a
    resumed run); empty when there is no file."""
    import csv

    if not history_csv.is_file():
        return []
    with open(history_csv, encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


def logged_epochs(out: Path, monitor: str) -> list[tuple[float, float]]:
    """`(monitor value, learning rate)` of every epoch in `out/history.csv` that logged
    a finite `monitor`."""
    rows = [(float(r[monitor]), float(r.get("learning_rate") or "nan"))
            for r in read_history(out / "history.csv") if r.get(monitor)]
    return [(value, lr) for value, lr in rows if math.isfinite(value)]


def best_checkpoint(out: Path, monitor: str, past: list[tuple[float, float]]):
    """Saves the model as `out/model.keras` whenever `monitor` is better than every
    earlier epoch's (in a resumed run, `past` from `logged_epochs` too), never for a
    non-finite value. The file is written whole (`atomic_save`): Keras's
    `ModelCheckpoint` rewrote it in place, so a kill or a full disk during the write
    left a truncated checkpoint where the best one had been."""
    import keras

    maximize = monitor_mode(monitor) == "max"

    class BestCheckpoint(keras.callbacks.Callback):
        def on_train_begin(self, logs=None):
            values = [value for value, _ in past]
            resumed = values and (out / "model.keras").is_file()
            self.best = (max(values) if maximize else min(values)) if resumed else None

        def on_epoch_end(self, epoch, logs=None):
            value = (logs or {}).get(monitor)
            if value is None or not math.isfinite(value):
                return
            if self.best is not None and not (value > self.best if maximize else value < self.best):
                return
            self.best = value
            atomic_save(self.model.save, out / "model.keras")

    return BestCheckpoint()


def early_stopping(cfg: TrainConfig, past: list[tuple[float, float]]):
    """EarlyStopping on `cfg.monitor` that, in a resumed run, counts the epochs of
    `past` (from `logged_epochs`) as if they had run in this process."""
    import keras

    class ResumableEarlyStopping(keras.callbacks.EarlyStopping):
        def on_train_begin(self, logs=None):
            super().on_train_begin(logs)
            if self.monitor_op is None:  # set once: it also flips min_delta's sign
                self._set_monitor_op()
            for value, _ in past:  # the same bookkeeping as EarlyStopping.on_epoch_end
                self.wait += 1
                if self._is_improvement(value, self.best):
                    self.best, self.wait = value, 0

    return ResumableEarlyStopping(monitor=cfg.monitor, mode=monitor_mode(cfg.monitor), patience=cfg.patience)


def plateau_schedule(cfg: TrainConfig, past: list[tuple[float, float]]):
    """ReduceLROnPlateau on `cfg.monitor` that, in a resumed run, replays `past`: the
    best value and the epochs waited since it or since the last reduction carry over.
    The reduced learning rate comes back with the optimizer's state, except a
    reduction made at the last finished epoch's end: the backup was written before
    this callback ran, so that reduction is made again here."""
    import keras
    import numpy as np

    class ResumablePlateau(keras.callbacks.ReduceLROnPlateau):
        def on_train_begin(self, logs=None):
            super().on_train_begin(logs)
            if self.monitor_op is None:  # set once: it also flips min_delta's sign
                self._set_monitor_op()
            reduced = False
            for value, lr in past:  # ReduceLROnPlateau.on_epoch_end without cooldown
                reduced = False
                if self._is_improvement(value, self.best):
                    self.best, self.wait = value, 0
                    continue
                self.wait += 1
                if self.wait >= self.patience and lr > np.float32(self.min_lr):  # it reduced the rate here
                    self.wait, reduced = 0, True
            restored = float(np.array(self.model.optimizer.learning_rate))
            if reduced and np.float32(restored) == np.float32(past[-1][1]):  # the backup's rate is pre-reduction
                self.model.optimizer.learning_rate = max(restored * self.factor, self.min_lr)

    return ResumablePlateau(monitor=cfg.monitor, mode=monitor_mode(cfg.monitor), factor=cfg.lr_factor,
                            patience=cfg.lr_patience, min_lr=cfg.min_lr)


def cosine_lr(epoch: int, epochs: int, lr: float, min_lr: float) -> float:
    """Learning rate of `epoch` (0-based) on a cosine from `lr` down to `min_lr`,
    reached at the last epoch."""
    progress = epoch / max(1, epochs - 1)
    return min_lr + 0.5 * (lr - min_lr) * (1.0 + math.cos(math.pi * progress))


def learning_rate_callback(cfg: TrainConfig, past: list[tuple[float, float]]):
    import keras

    if cfg.lr_schedule == "cosine":
        return keras.callbacks.LearningRateScheduler(
            lambda epoch, _: cosine_lr(epoch, cfg.epochs, cfg.lr, cfg.min_lr))
    return plateau_schedule(cfg, past)


def epoch_weights(folder: Path, keep: int):
    """Saves the model after every epoch as `epoch_NNN.keras` (written whole, as the
    backup is: `pipelines.resume.write_backup`), keeping the last `keep` files (for
    `average_checkpoints`); files survive a resumed run."""
    import keras

    class EpochWeights(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            folder.mkdir(parents=True, exist_ok=True)
            atomic_save(self.model.save, folder / f"epoch_{epoch:03d}.keras")
            for old in epoch_files(folder)[:-keep]:
                old.unlink()

    return EpochWeights()


def epoch_files(folder: Path) -> list[Path]:
    """The epochs' weights `epoch_weights` keeps in `folder`, oldest first (runs before
    2026-12-07 kept `epoch_NNN.weights.h5`)."""
    return sorted(p for p in weights_files(folder) if p.name.startswith("epoch_"))


def average_checkpoints(model, folder: Path, measure, log, monitor: str = "val_loss") -> dict | None:
    """Average the saved epoch weights; keep the average in `model` only if it scores
    better on `monitor` than the weights `model` holds. `measure(model)` returns the
    monitored value (validation loss or BLEU). Returns both values."""
    import numpy as np

    files = epoch_files(folder)
    if len(files) < 2:
        return None
    best = [w.copy() for w in model.get_weights()]
    best_value = measure(model)
    total = None
    for path in files:
        model.load_weights(path)
        weights = model.get_weights()
        total = weights if total is None else [t + w for t, w in zip(total, weights, strict=True)]
    model.set_weights([(t / len(files)).astype(b.dtype) for t, b in zip(total, best, strict=True)])
    average_value = measure(model)
    better = average_value > best_value if monitor_mode(monitor) == "max" else average_value < best_value
    kept = bool(np.isfinite(average_value) and better)
    if not kept:
        model.set_weights(best)
    log(f"[average] last {len(files)} epochs: {monitor} {average_value:.4f} vs best checkpoint "
        f"{best_value:.4f} -> {'average kept' if kept else 'best checkpoint kept'}")
    return {"epochs": [p.name for p in files], "monitor": monitor, "average": average_value,
            "best_checkpoint": best_value, "kept": kept}


@contextlib.contextmanager
def dataset_end_is_epoch_end():
    """The bucketed datasets' length is unknown until their first pass ends, which
    Keras reports as "Your input ran out of data; interrupting training": the end of
    an epoch or of an evaluation, not an error (with --steps-per-epoch the training
    dataset repeats)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Your input ran out of data", category=UserWarning)
        yield


def validation_measure(cfg: TrainConfig, valid_ds, valid, src_sp, tgt_sp):
    """`model -> value of cfg.monitor` on the validation set (for checkpoint averaging)."""
    if cfg.monitor == "val_bleu":
        return lambda model: evaluate_held_out(model, valid, src_sp, tgt_sp, cfg.max_len, limit=None)["bleu"]

    def validation_loss(model):
        with dataset_end_is_epoch_end():
            return model.evaluate(valid_ds, verbose=0, return_dict=True)["loss"]

    return validation_loss


def callbacks(cfg: TrainConfig, out: Path, target_tokens: int, validation_bleu=None):
    """The run's callbacks, in the order they must see the logs: `validation_bleu`
    (from `validation_bleu_callback`, required by `cfg.val_bleu`) adds `val_bleu`
    before anything reads it. With `cfg.ema`, the backup is written while the model
    holds the trained weights (the moving average stays in the optimizer), then the
    average is swapped in for the rest of the epoch's end: validation BLEU, the kept
    checkpoint, epoch weights; it is swapped out when the next epoch begins (and in
    for the validation loss)."""
    import keras

    if cfg.val_bleu and validation_bleu is None:
        raise ValueError("cfg.val_bleu needs the validation_bleu callback")
    # With a fixed steps_per_epoch an "epoch" is not the corpus, so tokens/s is unknown.
    throughput = [] if cfg.steps_per_epoch else [throughput_callback(target_tokens)]
    # A resumed run (a backup left by a killed one) continues the schedule and the
    # early-stopping count of the epochs already logged, not from scratch.
    past = logged_epochs(out, cfg.monitor) if resuming(out) else []
    return throughput + [
        epoch_backup(out, keep_previous=cfg.strategy == "multiworker"),
        *([keras.callbacks.SwapEMAWeights(swap_on_epoch=True)] if cfg.ema else []),
        *([validation_bleu] if cfg.val_bleu else []),
        keras.callbacks.TerminateOnNaN(),
        best_checkpoint(out, cfg.monitor, past),
        early_stopping(cfg, past),
        learning_rate_callback(cfg, past),
        *([epoch_weights(out / "epochs", cfg.average_last)] if cfg.average_last > 1 else []),
        keras.callbacks.CSVLogger(str(out / "history.csv"), append=True),
        keras.callbacks.TensorBoard(str(out / "logs"), write_graph=False, profile_batch=0),
    ]


def average_into_checkpoint(model, out: Path, measure, monitor: str, log) -> dict | None:
    """`--average-last`: load the best checkpoint's weights into `model`, average the
    kept epochs' weights, and make the average `model.keras` if `measure` scores it
    better on `monitor`; returns what `average_checkpoints` found."""
    from keras_attn.saving import load_model

    model.set_weights(load_model(out / "model.keras").get_weights())
    averaged = average_checkpoints(model, out / "epochs", measure, log, monitor)
    if averaged and averaged["kept"]:
        atomic_save(model.save, out / "model.keras")
    return averaged
