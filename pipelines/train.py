"""`keras-attn train`: corpus → SentencePiece → tf.data → `model.fit` → artifacts."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import os
import sys
import time
from pathlib import Path

from keras_attn.files import atomic_write, lock_exclusively, save_figure
from pipelines.callbacks import (
    average_into_checkpoint,
    callbacks,
    dataset_end_is_epoch_end,
    epoch_files,
    read_history,
    validation_bleu_callback,
    validation_measure,
)
from pipelines.config import TrainConfig
from pipelines.evaluate import evaluate_held_out
from pipelines.resume import (
    check_resumable,
    common_epoch,
    epochs_text,
    finished_epochs,
    read_backup,
    remove_backup,
    resuming,
    rewind_backup,
    saved_seed_states,
    skip_finished_epochs,
    training_ended,
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


def cluster_resolver(strategy):
    """The cluster of a multi-worker strategy, or None for one process."""
    resolver = getattr(strategy, "cluster_resolver", None)
    return resolver if resolver is not None and resolver.cluster_spec().as_dict() else None


def worker_folder(strategy, out: Path) -> Path:
    """Where this process writes: `out` for a single process and for the chief of a
    multi-worker cluster (the task "chief", else worker 0), `out/worker_<i>` for the
    other workers, so that hosts sharing `out` do not write the same files. Every
    worker keeps its own backup, which is how each resumes after a kill."""
    resolver = cluster_resolver(strategy)
    if resolver is None:
        return out
    chief = resolver.task_type == "chief" or (
        resolver.task_type == "worker" and resolver.task_id == 0 and "chief" not in resolver.cluster_spec().jobs)
    return out if chief else out / f"{resolver.task_type}_{resolver.task_id}"


def common_resume_epoch(strategy, out: Path) -> int | None:
    """Where every worker of a multi-worker cluster resumes, when their backups differ
    (`pipelines.resume.common_epoch`, which refuses what cannot be resumed); None for a
    single process and for workers that agree. All workers call it at the same point:
    it gathers their backups' states."""
    resolver = cluster_resolver(strategy)
    if resolver is None:
        return None
    import tensorflow as tf

    backup = read_backup(out) or {"epoch": 0, "training_ended": False, "previous": None}
    task = -1 if resolver.task_type == "chief" else resolver.task_id
    state = tf.constant([[task, backup["epoch"], backup["training_ended"], backup["previous"] is not None]], tf.int64)

    @tf.function(autograph=False)  # eagerly, the strategy warns of its overhead
    def gather():
        return strategy.gather(strategy.run(tf.identity, args=(state,)), axis=0)

    return common_epoch({("chief" if task < 0 else f"worker {task}"): (finished, bool(ended), bool(kept))
                         for task, finished, ended, kept in gather().numpy().tolist()})


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


def fit_verbosity(verbose: int, stream=None) -> int:
    """`fit`'s verbose level: a progress bar (1) only on a terminal. Written to a file
    (`nohup keras-attn train > log`), Keras's bar writes every step's update, 200-300 kB
    a Multi30k epoch; one line per epoch (2) is what a log wants."""
    stream = sys.stdout if stream is None else stream
    return 2 if verbose == 1 and not stream.isatty() else verbose


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
            f"{cfg.subword_alpha}); the length filter, the buckets, the token budget and "
            "target_tokens_per_second count the deterministic segmentation's tokens")
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
    """An exclusive lock on `handle` (`lock_exclusively`), or a ValueError naming the
    process holding it."""
    if not lock_exclusively(handle, wait=False):
        handle.seek(0)
        raise ValueError(f"{out}: another keras-attn train (process {handle.read().strip() or '?'}) is "
                         "writing there; wait for it to end, or choose another --out")


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
    log(f"[model] {model.count_params():,} parameters; training for up to {epochs_text(cfg.epochs)}")
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
    rewind_to = common_resume_epoch(strategy, out)
    data = prepare_data(cfg, out, log)
    model = prepare_model(cfg, data, strategy, log)
    check_resumable(out, model.config)
    with sole_writer(out):
        if rewind_to is not None:
            start = f"resume after {epochs_text(rewind_to)}" if rewind_to else "start the run afresh"
            log(f"[train] a kill fell between the workers' backups at an epoch's end: all {start}")
            rewind_backup(out, rewind_to)
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
