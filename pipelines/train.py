"""`keras-attn train`: corpus → SentencePiece → tf.data → `model.fit` → artifacts."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import os
import sys
import time
import warnings
from pathlib import Path

from keras_attn.files import atomic_save, atomic_write, save_figure
from pipelines.config import TrainConfig
from pipelines.resume import (
    check_resumable,
    epoch_backup,
    finished_epochs,
    remove_backup,
    resuming,
    saved_seed_states,
    skip_finished_epochs,
    training_ended,
    weights_files,
)


# --------------------------------------------------------------------- corpora
def load_corpora(cfg: TrainConfig):
    """`(train, valid, test_or_None)` ParallelCorpus objects for the configured corpus."""
    from pipelines import corpus as corpora

    if cfg.corpus == "dates":
        from pipelines.dates import date_splits

        splits = date_splits(train=cfg.dates_train_size, seed=cfg.seed)
        train, valid, test = splits["train"], splits["valid"], splits["test"]
    elif cfg.corpus == "multi30k":
        splits = corpora.load_multi30k(cfg.data_dir, cfg.src_lang, cfg.tgt_lang)
        train, valid, test = splits["train"], splits["val"], splits["test_2016_flickr"]
    else:
        train = (corpora.read_tsv(cfg.train_tsv) if cfg.train_tsv
                 else corpora.read_parallel(cfg.train_src, cfg.train_tgt))
        if cfg.valid_tsv:
            valid = corpora.read_tsv(cfg.valid_tsv)
        elif cfg.valid_src and cfg.valid_tgt:
            valid = corpora.read_parallel(cfg.valid_src, cfg.valid_tgt)
        else:
            train, valid = hold_out(train)
        test = None
    if cfg.limit_train:
        train = train.head(cfg.limit_train)
    if len(train) == 0:
        raise ValueError(f"{train.describe()}: no training pairs left")
    if len(valid) == 0:  # an empty --valid-tsv reached a TypeError inside the tokenizer op
        raise ValueError(f"{valid.name}: no validation pairs (no line has both sides)")
    return train, valid, test


def hold_out(train):
    """`(train, valid)`: the last 5 % of `train` (at most 2,000 pairs, at least 1) held out
    for validation. A corpus of a single pair is refused by name (all of it went to
    validation, and the error said only "no training pairs left")."""
    from pipelines.corpus import ParallelCorpus

    n = max(1, min(2000, len(train) // 20))
    if len(train) == n:
        raise ValueError(f"{train.describe()}: too few to hold out a validation pair and train on the rest; "
                         "give --valid-src and --valid-tgt (or --valid-tsv), or more pairs")
    return (ParallelCorpus(train.sources[:-n], train.targets[:-n], train.name, train.dropped_empty),
            ParallelCorpus(train.sources[-n:], train.targets[-n:], "held-out"))


def clear_previous_run(out: Path, log) -> None:
    """A new (not resumed) run in a folder holding a previous run's results replaces
    them: its history and epoch weights would mix with the new run's, and its
    checkpoint would not match the newly trained tokenizers."""
    stale = [out / name for name in ("model.keras", "history.csv", "metrics.json", "training_curve.png")
             if (out / name).is_file()] + epoch_files(out / "epochs")
    if stale:
        log(f"[train] {out} holds a previous run; starting a new one and replacing its "
            f"{', '.join(sorted({path.name for path in stale}))}")
    for path in stale:
        path.unlink()


def tokenizers(cfg: TrainConfig, train, out: Path) -> tuple[bytes, bytes, str | None]:
    """The two SentencePiece models and whose they are: trained now (None), or reused
    when resuming a run ("the interrupted run") or starting from another run's weights
    (`init_from`). `start_writing` writes them into `out`."""
    from pipelines.tokenizer import train_sentencepiece

    src_path, tgt_path = out / "src.spm.model", out / "tgt.spm.model"
    if src_path.is_file() and tgt_path.is_file() and resuming(out):
        return src_path.read_bytes(), tgt_path.read_bytes(), "the interrupted run"
    if cfg.init_from:
        src, tgt = ((Path(cfg.init_from) / f"{side}.spm.model").read_bytes() for side in ("src", "tgt"))
        return src, tgt, cfg.init_from
    (src_size, src_flag), (tgt_size, tgt_flag) = vocab_settings(cfg)
    return (train_sentencepiece(train.sources, src_size, setting=f"{src_flag} {src_size}"),
            train_sentencepiece(train.targets, tgt_size, setting=f"{tgt_flag} {tgt_size}"), None)


def vocab_settings(cfg: TrainConfig) -> tuple[tuple[int, str], tuple[int, str]]:
    """Source and target `(vocabulary size, what set it)`: the side's own flag, else
    `--vocab-size`, else the corpus default (dates: 400 subwords in, characters out;
    otherwise 8000)."""
    defaults = (400, 16) if cfg.corpus == "dates" else (8000, 8000)
    shared = [(size, f"the {cfg.corpus} default") for size in defaults]
    if cfg.vocab_size:
        shared = [(cfg.vocab_size, "--vocab-size")] * 2
    return ((cfg.src_vocab_size, "--src-vocab-size") if cfg.src_vocab_size else shared[0],
            (cfg.tgt_vocab_size, "--tgt-vocab-size") if cfg.tgt_vocab_size else shared[1])


def vocab_sizes(cfg: TrainConfig) -> tuple[int, int]:
    """Source and target vocabulary sizes (`vocab_settings`)."""
    (src_size, _), (tgt_size, _) = vocab_settings(cfg)
    return src_size, tgt_size


def vocab_report(cfg: TrainConfig, src_size: int, tgt_size: int, reused_from: str | None = None) -> str:
    """"source N, target M": for tokenizers trained now, each with a note when the text
    gave fewer pieces than a vocabulary flag asked for (SentencePiece then stops below
    it rather than fail); for reused ones, whose they are (the flags did not make them)."""
    if reused_from:
        return f"source {src_size}, target {tgt_size} ({reused_from}'s tokenizers; the vocabulary flags do not apply)"
    sides = []
    for side, size, (asked, setting) in zip(("source", "target"), (src_size, tgt_size), vocab_settings(cfg),
                                            strict=True):
        short = size < asked and setting.startswith("--")
        sides.append(f"{side} {size}" + (f" (below {setting} {asked}: all the pieces this text gives)"
                                         if short else ""))
    return ", ".join(sides)


# ----------------------------------------------------------------------- model
def model_config(cfg: TrainConfig, src_vocab_size: int, tgt_vocab_size: int):
    """The model settings of `cfg` for tokenizers of these vocabulary sizes."""
    from keras_attn.config import Seq2SeqConfig

    return Seq2SeqConfig(
        src_vocab_size=src_vocab_size, tgt_vocab_size=tgt_vocab_size,
        embedding_dim=cfg.embedding_dim, encoder_units=cfg.encoder_units,
        encoder_layers=cfg.encoder_layers, bidirectional=cfg.bidirectional,
        decoder_units=cfg.decoder_units, decoder_layers=cfg.decoder_layers,
        attention=cfg.attention, dropout=cfg.dropout, word_dropout=cfg.word_dropout)


def batching_config(cfg: TrainConfig):
    from pipelines.dataset import BatchingConfig

    return BatchingConfig(max_len=cfg.max_len, batch_size=cfg.batch_size, batch_tokens=cfg.batch_tokens,
                          bucket_width=cfg.bucket_width, subword_alpha=cfg.subword_alpha)


def distribution_strategy(name: str):
    import tensorflow as tf

    if name == "mirrored":
        return tf.distribute.MirroredStrategy()
    if name == "multiworker":  # hosts and roles come from the TF_CONFIG variable
        try:
            strategy = tf.distribute.MultiWorkerMirroredStrategy()
        except ValueError as error:  # TensorFlow's message names neither the variable nor the strategy
            raise ValueError(f"--strategy multiworker: the TF_CONFIG variable: {error}") from None
        stop_on_sigterm()
        return strategy
    return tf.distribute.get_strategy()


def stop_on_sigterm():
    """Let SIGTERM end the process again (the CLI's `Terminated` in a single process).

    With a multi-worker cluster TensorFlow's coordination service installs a C handler
    for SIGTERM that only records a preemption notice for `PreemptionCheckpointHandler`,
    which Keras's `fit` never asks for: the workers trained on to the end. A killed
    run resumes from its last finished epoch (`pipelines.resume`), so the default
    action is what `kill`, a scheduler's stop or a pod's eviction should get."""
    import signal
    import threading

    if threading.current_thread() is threading.main_thread():  # signal handlers belong to the main thread
        signal.signal(signal.SIGTERM, signal.SIG_DFL)


def worker_folder(strategy, out: Path) -> Path:
    """Where this process writes: `out` for a single process and for the chief of a
    multi-worker cluster (the task "chief", else worker 0), `out/worker_<i>` for the
    other workers, so that hosts sharing `out` do not write the same files. Every
    worker keeps its own backup, which is how each resumes after a kill."""
    resolver = getattr(strategy, "cluster_resolver", None)
    if resolver is None or not resolver.cluster_spec().as_dict():
        return out
    chief = resolver.task_type == "chief" or (
        resolver.task_type == "worker" and resolver.task_id == 0 and "chief" not in resolver.cluster_spec().jobs)
    return out if chief else out / f"{resolver.task_type}_{resolver.task_id}"


def build_model(cfg: TrainConfig, model_cfg, steps_per_execution: int = 1):
    from keras_attn.model import Seq2Seq

    model = Seq2Seq(model_cfg)
    model.compile_for_training(cfg.lr, cfg.label_smoothing, cfg.clipnorm, ema=cfg.ema, jit_compile=cfg.jit,
                               steps_per_execution=steps_per_execution)
    return model


def start_from(model, folder: Path):
    """Copy the weights of `folder/model.keras` into `model` (same architecture; the
    dropout rates may differ, they only act in training)."""
    from keras_attn.saving import load_model

    source = load_model(folder / "model.keras")
    if dataclasses.replace(source.config, dropout=model.config.dropout,
                           word_dropout=model.config.word_dropout) != model.config:
        raise ValueError(f"--init-from {folder}: its model ({source.config}) differs from this run's "
                         f"({model.config}); use the same model settings")
    model.set_weights(source.get_weights())


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


def fit_verbosity(verbose: int, stream=None) -> int:
    """`fit`'s verbose level: a progress bar (1) only on a terminal. Written to a file
    (`nohup keras-attn train > log`), Keras's bar writes every step's update, 200-300 kB
    a Multi30k epoch; one line per epoch (2) is what a log wants."""
    stream = sys.stdout if stream is None else stream
    return 2 if verbose == 1 and not stream.isatty() else verbose


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


def validation_measure(cfg: TrainConfig, valid_ds, valid, src_sp, tgt_sp):
    """`model -> value of cfg.monitor` on the validation set (for checkpoint averaging)."""
    if cfg.monitor == "val_bleu":
        return lambda model: evaluate_held_out(model, valid, src_sp, tgt_sp, cfg.max_len, limit=None)["bleu"]

    def validation_loss(model):
        with dataset_end_is_epoch_end():
            return model.evaluate(valid_ds, verbose=0, return_dict=True)["loss"]

    return validation_loss


@contextlib.contextmanager
def dataset_end_is_epoch_end():
    """The bucketed datasets' length is unknown until their first pass ends, which
    Keras reports as "Your input ran out of data; interrupting training": the end of
    an epoch or of an evaluation, not an error (with --steps-per-epoch the training
    dataset repeats)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Your input ran out of data", category=UserWarning)
        yield


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
        epoch_backup(out),
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


def plot_history(history_csv: Path, png: Path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = read_history(history_csv)
    if not rows:
        return
    epochs = [int(r["epoch"]) + 1 for r in rows]
    panels = [("loss", ("loss", "val_loss")), ("token accuracy", ("token_accuracy", "val_token_accuracy"))]
    if rows[0].get("val_bleu"):
        panels.append(("validation BLEU (greedy)", ("val_bleu",)))
    fig, axes = plt.subplots(1, len(panels), figsize=(5 * len(panels), 4))
    for axis, (title, keys) in zip(axes, panels, strict=True):
        for key in keys:
            axis.plot(epochs, [float(r[key]) for r in rows], marker="o", label=key)
        axis.set_xlabel("epoch")
        axis.set_title(title)
        axis.legend()
        axis.grid(alpha=0.3)
    fig.tight_layout()
    save_figure(fig, png, dpi=100)
    plt.close(fig)


# ------------------------------------------------------------------- the run
def evaluate_held_out(model, corpus, src_sp, tgt_sp, max_len, limit=1000, inference=None) -> dict:
    """Greedy translation of (up to `limit`, None = all) held-out pairs: sacreBLEU,
    chrF, exact match, and how many sources were longer than `max_len` pieces (translated
    from their first `max_len`; counted, not warned about). `inference`: an
    `InferenceModel` of `model` to reuse."""
    from keras_attn.search import InferenceModel
    from pipelines.decode import translate_tf
    from pipelines.evaluate import score
    from pipelines.translate import collecting_truncations

    sources, refs = corpus.sources[:limit], corpus.targets[:limit]
    start = time.perf_counter()
    inference = InferenceModel(model) if inference is None else inference
    with collecting_truncations() as cut:
        hyps = translate_tf(inference, sources, src_sp, tgt_sp, max_len=max_len)
    seconds = time.perf_counter() - start
    return {
        "split": corpus.name, "sentences": len(sources), **score(hyps, refs),
        "truncated_sources": len(cut),
        "sentences_per_second": len(sources) / seconds,
        "examples": [{"source": s, "hypothesis": h, "reference": r}
                     for s, h, r in list(zip(sources, hyps, refs))[:5]],
    }


def training_target_tokens(cfg: TrainConfig, train, valid, src_model: bytes, tgt_model: bytes, log) -> int:
    """The target tokens one epoch trains on (for `target_tokens_per_second`); says how
    many pairs `max_len` skips and, with subword regularization, what the count means.
    Refuses a `max_len` that leaves no training or no validation pair (the run trained
    on nothing and ended in "training ended without a checkpoint")."""
    from pipelines.dataset import length_statistics, tokenized_pairs

    too_long, target_tokens = length_statistics(tokenized_pairs(train, src_model, tgt_model), cfg.max_len)
    if too_long:
        log(f"[data] {too_long:,} training pairs longer than max_len={cfg.max_len} tokens are skipped")
    valid_too_long, _ = length_statistics(tokenized_pairs(valid, src_model, tgt_model), cfg.max_len)
    for corpus, skipped in ((train, too_long), (valid, valid_too_long)):
        if skipped == len(corpus):
            raise ValueError(f"{corpus.name}: every pair has a side longer than --max-len {cfg.max_len} "
                             "tokens, so none is left; raise --max-len")
    if cfg.subword_alpha > 0:
        log(f"[data] subword regularization: training segmentations sampled every epoch (alpha "
            f"{cfg.subword_alpha}); target_tokens_per_second counts the deterministic segmentation's tokens")
    return target_tokens


def report_resume(out: Path, finished: int, monitor: str, log) -> None:
    """Say that (and how) a run goes on after `finished` epochs, and what it cannot restore."""
    if not finished:
        return
    epochs = "1 finished epoch: passing over its batch order" if finished == 1 else \
        f"{finished} finished epochs: passing over their batch orders"
    log(f"[train] resuming {out} after {epochs}")
    if len(read_history(out / "history.csv")) < finished:
        log(f"[train] the kill came during epoch {finished - 1}'s end, after its backup: history.csv lacks "
            f"its row, so the schedule and early stopping go on without its {monitor}")
    if saved_seed_states(out) is None:
        log("[train] the backup holds no dropout streams for its epoch: the masks restart from --seed, "
            "so this run will not match an uninterrupted one")


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


@dataclasses.dataclass
class TrainingData:
    """A run's corpora (`test` may be None), tokenizers and `tf.data` pipelines."""

    train: object
    valid: object
    test: object
    src_model: bytes  # the serialized SentencePiece models
    tgt_model: bytes
    src_sp: object
    tgt_sp: object
    train_ds: object
    valid_ds: object
    target_tokens: int  # target tokens per epoch, for the throughput callback


def prepare_data(cfg: TrainConfig, out: Path, log) -> TrainingData:
    """Load the corpora, train (or reuse) the tokenizers, build the pipelines."""
    from pipelines.dataset import make_dataset
    from pipelines.tokenizer import load_processor

    train, valid, test = load_corpora(cfg)
    for corpus in (train, valid, test):
        if corpus is not None:
            log(f"[data] {corpus.describe()}")
    src_model, tgt_model, reused_from = tokenizers(cfg, train, out)
    src_sp, tgt_sp = load_processor(src_model), load_processor(tgt_model)
    sizes = src_sp.get_piece_size(), tgt_sp.get_piece_size()
    log(f"[tokenizer] sentencepiece vocab: {vocab_report(cfg, *sizes, reused_from)}")
    batching = batching_config(cfg)
    target_tokens = training_target_tokens(cfg, train, valid, src_model, tgt_model, log)
    train_ds = make_dataset(train, src_model, tgt_model, batching, training=True, seed=cfg.seed)
    valid_ds = make_dataset(valid, src_model, tgt_model, batching, training=False)
    return TrainingData(train, valid, test, src_model, tgt_model, src_sp, tgt_sp, train_ds, valid_ds,
                        target_tokens)


@contextlib.contextmanager
def sole_writer(out: Path):
    """Create `out` and hold `out/.train.lock` while this process writes there: a second
    `train` into the same folder (the same command started twice) is refused, instead
    of writing the same checkpoints, backup and history as this one. The lock is the
    operating system's (`flock`), released when the process ends however it ends;
    where there is none (Windows, some network file systems) runs are not guarded."""
    out.mkdir(parents=True, exist_ok=True)
    with open(out / ".train.lock", "a+", encoding="utf-8") as handle:
        lock_or_refuse(handle, out)
        handle.truncate(0)
        handle.write(f"{os.getpid()}\n")
        handle.flush()
        yield


def refuse_if_being_written(out: Path) -> None:
    """`sole_writer`'s refusal, made before the data's preparation (a refused run spent
    it first) when `out` has a lock file: nothing is created or written, and the lock
    is released at once (`sole_writer` takes it when the writing starts)."""
    if (out / ".train.lock").is_file():
        with open(out / ".train.lock", encoding="utf-8") as handle:
            lock_or_refuse(handle, out)


def lock_or_refuse(handle, out: Path) -> None:
    """An exclusive `flock` on `handle`, or a ValueError naming the process holding it."""
    try:
        import fcntl
    except ImportError:
        return
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.seek(0)
        raise ValueError(f"{out}: another keras-attn train (process {handle.read().strip() or '?'}) is "
                         "writing there; wait for it to end, or choose another --out") from None
    except OSError:  # a file system without locks
        pass


def start_writing(cfg: TrainConfig, data: TrainingData, model_cfg, out: Path, log) -> None:
    """Clear the previous run in `out` (a new run) and write this run's tokenizers and
    config.json. `run` calls it, and creates `out` (`sole_writer`), once the data and
    the model have passed every check (files, vocabulary, lengths, `--init-from`): a run
    stopped by one of them leaves `out` as it was, or not created (a mistyped corpus
    path deleted the previous run's model.keras when the clearing came first)."""
    if not resuming(out):
        clear_previous_run(out, log)
    atomic_write(out / "src.spm.model", data.src_model)
    atomic_write(out / "tgt.spm.model", data.tgt_model)
    atomic_write(out / "config.json", json.dumps(
        {"model": model_cfg.to_dict(), "train": dataclasses.asdict(cfg)}, indent=2) + "\n")


def prepare_model(cfg: TrainConfig, data: TrainingData, strategy, log):
    """Build the model (from `--init-from`'s weights if set)."""
    model_cfg = model_config(cfg, data.src_sp.get_piece_size(), data.tgt_sp.get_piece_size())
    with strategy.scope():
        model = build_model(cfg, model_cfg)
    if cfg.init_from:
        start_from(model, Path(cfg.init_from))
        log(f"[model] starting from the weights of {cfg.init_from}/model.keras")
    epochs = f"{cfg.epochs} epoch" + ("s" if cfg.epochs != 1 else "")
    log(f"[model] {model.count_params():,} parameters; training for up to {epochs}")
    return model


def fit_model(cfg: TrainConfig, model, data: TrainingData, out: Path, log):
    """`model.fit` from the first epoch not yet finished in `out`; returns `(history, seconds)`,
    `(None, 0.0)` for a run killed after its training ended (nothing to train)."""
    if training_ended(out):
        log(f"[train] {out}: the kill came after its training ended; finishing the run without training")
        return None, 0.0
    train_ds = data.train_ds.repeat() if cfg.steps_per_epoch else data.train_ds
    finished = finished_epochs(out)
    report_resume(out, finished, cfg.monitor, log)
    train_ds = skip_finished_epochs(train_ds, finished, cfg.steps_per_epoch)
    start = time.perf_counter()
    bleu = (validation_bleu_callback(data.valid, data.src_sp, data.tgt_sp, cfg.max_len, log)
            if cfg.val_bleu else None)
    with dataset_end_is_epoch_end():
        history = model.fit(train_ds, validation_data=data.valid_ds, epochs=cfg.epochs,
                            shuffle=False,  # make_dataset shuffles pairs and batches itself
                            steps_per_epoch=cfg.steps_per_epoch, verbose=fit_verbosity(cfg.verbose),
                            callbacks=callbacks(cfg, out, data.target_tokens, bleu))
    train_seconds = time.perf_counter() - start
    if not (out / "model.keras").is_file():
        raise RuntimeError("training ended without a checkpoint (was the loss NaN from the start?)")
    if not all(math.isfinite(v) for v in history.history.get("loss", [])):
        log("[train] stopped on a NaN loss; the last good checkpoint is kept")
    return history, train_seconds


def report(cfg: TrainConfig, out: Path, data: TrainingData, history, train_seconds: float,
           averaged: dict | None, log) -> dict:
    """Score the best checkpoint on the held-out split (test, else validation) and
    write metrics.json; returns the metrics."""
    import keras

    from keras_attn.saving import load_model

    keras.mixed_precision.set_global_policy("float32")
    best = load_model(out / "model.keras")
    held_out = data.test if data.test is not None else data.valid
    # A resumed run's history.csv holds the epochs of every process; `history` only this one's.
    metrics = {"train_seconds": train_seconds, "epochs_run": len(read_history(out / "history.csv")),
               "epochs_this_process": len(history.history.get("loss", [])) if history else 0,
               "checkpoint_average": averaged,
               "held_out": evaluate_held_out(best, held_out, data.src_sp, data.tgt_sp, cfg.max_len)}
    atomic_write(out / "metrics.json", json.dumps(metrics, indent=2, ensure_ascii=False) + "\n")
    h = metrics["held_out"]
    log(f"[eval] {h['split']}: exact match {h['exact_match']:.2%}, BLEU {h['bleu']:.1f} "
        f"on {h['sentences']} sentences (greedy)")
    if h["truncated_sources"]:
        log(f"[eval] {h['truncated_sources']:,} of its sources longer than max_len={cfg.max_len} tokens were "
            f"translated from their first {cfg.max_len}")
    trained = f"in {train_seconds:.0f} s of training" if history is not None else "(trained before the kill)"
    log(f"[done] {trained}. Wrote to {out}/: model.keras, src.spm.model, "
        "tgt.spm.model, config.json, history.csv, training_curve.png, metrics.json, logs/ (TensorBoard)")
    sys.stdout.flush()
    return metrics


def run(cfg: TrainConfig) -> dict:
    """Train as `cfg` says, into `cfg.out`: tokenizers, `fit`, checkpoints, metrics."""
    cfg.validate()
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import keras

    # First, before any TensorFlow op: a multi-worker strategy configures the collective
    # ops, which TensorFlow allows only at program startup.
    strategy = distribution_strategy(cfg.strategy)
    out = worker_folder(strategy, Path(cfg.out))
    keras.utils.set_random_seed(cfg.seed)
    keras.mixed_precision.set_global_policy(cfg.precision)
    log = print if cfg.verbose else (lambda *a, **k: None)
    refuse_if_being_written(out)
    data = prepare_data(cfg, out, log)
    model = prepare_model(cfg, data, strategy, log)
    check_resumable(out, model.config)
    with sole_writer(out):
        start_writing(cfg, data, model.config, out, log)
        history, train_seconds = fit_model(cfg, model, data, out, log)
        plot_history(out / "history.csv", out / "training_curve.png")
        averaged = None
        if cfg.average_last > 1:
            measure = validation_measure(cfg, data.valid_ds, data.valid, data.src_sp, data.tgt_sp)
            averaged = average_into_checkpoint(model, out, measure, cfg.monitor, log)
        metrics = report(cfg, out, data, history, train_seconds, averaged, log)
        remove_backup(out)
        return metrics
