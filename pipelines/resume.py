"""Resuming a killed run: the backup written after every epoch, and what reads it.

`OUT/backup/` holds the weights with the optimizer's state (`epoch_NNN.keras`), and
`training_metadata.json`: the number of finished epochs, the name of that weights
file and the dropout masks' random streams. A kill at any moment leaves a whole
backup: each epoch's weights go to a new file, which the metadata names only once the
file is complete (the metadata is replaced by a rename), and the previous epoch's file
is deleted after that (so for a moment two epochs' weights are on disk). Keras's
`BackupAndRestore` rewrote `latest.weights.h5` in place, so a SIGTERM (which the
commands raise where the program is) or a full disk during the write left a truncated
file, and the same command then failed in Keras's restore, with every finished epoch
lost.

When `fit` returns, the backup's weights are deleted and its metadata says the
training ended; the backup is removed once the run is reported (metrics.json). A kill
in between (while it averages checkpoints or scores the held-out set) is finished by
the same command without training again.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from keras_attn.files import atomic_save, atomic_write

METADATA = "training_metadata.json"
LEGACY_WEIGHTS = "latest.weights.h5"  # what `BackupAndRestore` wrote (backups until 2026-12-07)


def resuming(out: Path) -> bool:
    """Whether `out` holds an interrupted run that the backup will resume."""
    return (out / "backup").is_dir()


def read_backup(out: Path) -> dict | None:
    """The backup's metadata (`epoch`, `weights`, `seed_states` or None,
    `training_ended`, and `previous`: the epoch before's `epoch`, `weights` and
    `seed_states` where `write_backup` kept them, else None), or None when `out` has
    none. A backup from `BackupAndRestore` names no weights file and keeps no streams:
    its weights are `latest.weights.h5`, and the masks restart."""
    path = out / "backup" / METADATA
    if not path.is_file():
        return None
    metadata = json.loads(path.read_text(encoding="utf-8"))
    return {"epoch": int(metadata["epoch"]), "weights": metadata.get("weights", LEGACY_WEIGHTS),
            "seed_states": metadata.get("seed_states"), "training_ended": bool(metadata.get("training_ended")),
            "previous": metadata.get("previous")}


def training_ended(out: Path) -> bool:
    """Whether the run in `out` was killed after its training ended (`fit` returned)
    and before it was reported: the same command then finishes it without training.
    (The backup was deleted when `fit` returned, so the same command started a new run
    and deleted the trained model.)"""
    backup = read_backup(out)
    return bool(backup and backup["training_ended"])


def finished_epochs(out: Path) -> int:
    """How many epochs an interrupted run in `out` finished, where it resumes (0 without
    a backup, as for a new run)."""
    backup = read_backup(out)
    return backup["epoch"] if backup else 0


def saved_seed_states(out: Path):
    """The dropout streams' states in the backup of `out`, or None when it has none."""
    backup = read_backup(out)
    return None if backup is None else backup["seed_states"]


def check_resumable(out: Path, model_cfg) -> None:
    """An interrupted run in `out` resumes only with its own model settings: others
    failed inside Keras's restore, in a multi-line message about variables that "could
    not be loaded". Names each setting that differs from `out/config.json`'s."""
    if not resuming(out) or not (out / "config.json").is_file():
        return
    before = json.loads((out / "config.json").read_text(encoding="utf-8")).get("model", {})
    changed = [f"{key} {before[key]!r} there, {value!r} now" for key, value in model_cfg.to_dict().items()
               if key in before and before[key] != value]  # a key it lacks: a setting newer than the run
    if changed:
        raise ValueError(f"{out} holds an interrupted run of another model ({'; '.join(changed)}): run its own "
                         "command to resume it, choose another --out, or delete the folder to start afresh")


def skip_finished_epochs(train_ds, finished: int, steps_per_epoch: int | None):
    """`train_ds` as the killed process would have gone on iterating it, so that a
    resumed run draws the batch orders an uninterrupted one draws. Keras makes a new
    iterator every epoch, and each new iterator of a seeded, reshuffling dataset draws
    the next epoch's shuffle seeds when it is first read: one pass per finished epoch
    brings the draws to epoch `finished` (the first pass also fills the tokenized
    pairs' cache, which the rest replay). With `steps_per_epoch` the repeated dataset
    is one iterator for the whole run, so the finished epochs' batches are skipped."""
    if steps_per_epoch:
        return train_ds.skip(finished * steps_per_epoch)
    for _ in range(finished):
        for _ in train_ds:
            pass
    return train_ds


def seed_generators(model) -> list:
    """The model's dropout streams: every dropout draws from a seed generator whose
    state (a seed and a counter) is a model variable but not a weight, so the weights
    file does not hold it; restored, a resumed run draws the masks an uninterrupted
    one draws."""
    return [v for v in model.variables if v.name == "seed_generator_state"]


def restore_backup(model, out: Path) -> None:
    """Load the backup of `out` into `model` (weights, optimizer, streams) and make `fit`
    start at its first unfinished epoch; nothing without a backup, or with one whose
    training ended (it holds no weights: `run` does not train again, and another `fit`
    in the folder trains on from the model's weights)."""
    import numpy as np

    backup = read_backup(out)
    if backup is None or backup["training_ended"]:
        return
    if model.optimizer is not None and not model.optimizer.built:  # its variables must exist to be loaded
        model.optimizer.build(model.trainable_variables)
    model.load_weights(out / "backup" / backup["weights"])
    if backup["seed_states"] is not None:
        generators = seed_generators(model)
        if len(backup["seed_states"]) != len(generators):
            raise ValueError(f"{out / 'backup'}: {len(backup['seed_states'])} seed generator states, "
                             f"the model has {len(generators)}")
        for variable, state in zip(generators, backup["seed_states"], strict=True):
            variable.assign(np.array(state, dtype=variable.dtype))
    model._initial_epoch = backup["epoch"]  # where `fit` starts, as Keras's BackupAndRestore tells it


def write_backup(model, out: Path, epochs: int, keep_previous: bool = False) -> None:
    """The backup of `model` after `epochs` finished epochs, committed by the rename of
    the metadata that names its weights file; then the earlier weights are deleted, except,
    with `keep_previous`, the epoch before's, which the metadata names as `previous`
    (a multi-worker run: `rewind_backup`).

    The weights are a Keras archive (`model.save`; `load_weights` reads it), whose HDF5
    part Keras writes in memory. `save_weights` has HDF5 write the disk itself, and
    after a write that found no room (a full disk) the library kept the file open and
    the process died with a segmentation fault, at exit or when the file was closed."""
    folder = out / "backup"
    folder.mkdir(parents=True, exist_ok=True)
    before = read_backup(out) if keep_previous else None
    weights = f"epoch_{epochs:03d}.keras"
    # Whole, or removed (a full disk keeps its space); in force once the metadata names it.
    atomic_save(model.save, folder / weights)
    metadata = {"epoch": epochs, "weights": weights,
                "seed_states": [v.numpy().tolist() for v in seed_generators(model)]}
    if before and not before["training_ended"] and before["epoch"] == epochs - 1:
        metadata["previous"] = {key: before[key] for key in ("epoch", "weights", "seed_states")}
    atomic_write(folder / METADATA, json.dumps(metadata) + "\n")
    kept = {weights, metadata.get("previous", {}).get("weights")}
    for old in weights_files(folder):
        if old.name not in kept:
            old.unlink()


def rewind_backup(out: Path, epochs: int) -> None:
    """Make the backup of `out` the one after `epochs` finished epochs: the epoch before
    its own, which a multi-worker run keeps (`write_backup`), or none for 0 (a new run);
    history.csv's rows after it go too, as the epochs are trained again. What a cluster
    does when a kill fell between its workers' backups at an epoch's end."""
    backup = read_backup(out)
    if backup is None or backup["epoch"] == epochs:
        return
    if epochs == 0:
        remove_backup(out)  # the new run clears the rest
        return
    previous = backup["previous"]
    if not previous or previous["epoch"] != epochs:
        raise ValueError(f"{out / 'backup'}: holds no backup after epoch {epochs}, where the other workers resume")
    atomic_write(out / "backup" / METADATA, json.dumps(previous) + "\n")
    (out / "backup" / backup["weights"]).unlink(missing_ok=True)
    keep_history(out / "history.csv", epochs)


def keep_history(history_csv: Path, epochs: int) -> None:
    """history.csv without its rows after the first `epochs`."""
    if not history_csv.is_file():
        return
    lines = history_csv.read_text(encoding="utf-8").splitlines(keepends=True)
    if len(lines) > epochs + 1:  # the header, then one row per epoch
        atomic_write(history_csv, "".join(lines[:epochs + 1]))


def common_epoch(states: dict[str, tuple[int, bool, bool]]) -> int | None:
    """Where the workers of a cluster resume, from each one's backup: `{"worker 0":
    (finished epochs, training ended, the epoch before kept), ...}`, 0 epochs for none.
    None when they agree. A kill that fell between their backups at an epoch's end
    leaves some one epoch ahead: all resume from the epoch before (`rewind_backup`),
    which those ahead keep. Anything else is refused: resumed as they were, the workers
    trained different epochs and failed when one ended."""
    epochs = [finished for finished, _, _ in states.values()]
    if len({(finished, ended) for finished, ended, _ in states.values()}) == 1:
        return None
    one_apart = not any(ended for _, ended, _ in states.values()) and max(epochs) - min(epochs) == 1
    ahead_kept = all(kept for finished, _, kept in states.values() if finished == max(epochs))
    if one_apart and (ahead_kept or min(epochs) == 0):
        return min(epochs)
    described = "; ".join(f"{worker}: {backup_state(finished, ended)}"
                          for worker, (finished, ended, _) in states.items())
    why = ", and those ahead keep no backup of the epoch before" if one_apart else ""
    raise ValueError(f"the workers' backups do not agree ({described}){why}, so they cannot resume together; "
                     "their folders keep what they have: delete each one's backup/ to start the run afresh")


def backup_state(finished: int, ended: bool) -> str:
    """A worker's backup as `common_epoch`'s refusal names it."""
    if not finished:
        return "no backup"
    return f"training ended after {epochs_text(finished)}" if ended else f"{epochs_text(finished)} finished"


def epochs_text(count: int) -> str:
    """"1 epoch", "2 epochs"."""
    return f"{count} epoch" + ("s" if count != 1 else "")


def weights_files(folder: Path) -> list[Path]:
    """The Keras weights files in `folder` (archives, or `.weights.h5` files as
    `BackupAndRestore` and runs before 2026-12-07 wrote them)."""
    return [*folder.glob("*.keras"), *folder.glob("*.weights.h5")]


def end_training(out: Path) -> None:
    """Mark the backup of `out` as of a run whose training ended, and delete its weights:
    what remains to do (averaging, the held-out score, metrics.json) reads the folder's
    checkpoints, and `remove_backup` deletes the rest once it is done."""
    backup = read_backup(out)
    if backup is None:  # no epoch ended (a NaN at the first step)
        return
    atomic_write(out / "backup" / METADATA, json.dumps({"epoch": backup["epoch"], "training_ended": True}) + "\n")
    for weights in weights_files(out / "backup"):
        weights.unlink()


def remove_backup(out: Path) -> None:
    """The run in `out` is complete: nothing is left to resume."""
    shutil.rmtree(out / "backup", ignore_errors=True)


def epoch_backup(out: Path, keep_previous: bool = False):
    """The callback that restores the backup of `out` as training begins (when it holds
    an interrupted run), writes it at every epoch's end (`keep_previous`: see
    `write_backup`), and marks it when training ends (`end_training`)."""
    import keras

    class EpochBackup(keras.callbacks.Callback):
        def on_train_begin(self, logs=None):
            restore_backup(self.model, out)

        def on_epoch_end(self, epoch, logs=None):
            write_backup(self.model, out, epoch + 1, keep_previous)

        def on_train_end(self, logs=None):
            end_training(out)

    return EpochBackup()
