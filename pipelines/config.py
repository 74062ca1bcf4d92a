"""`TrainConfig`: every setting of a training run, its help, its checks, its file.

Each field is both a `keras-attn train` flag (`--batch-tokens`) and a key of the
YAML/JSON `--config` file (`batch_tokens`, or `batch-tokens`); the help `train --help`
prints and the checks below come from the same field, so the flag and the key accept
the same values. The model's own settings (dropout, attention score) are checked by
`Seq2SeqConfig` and the batching's by `BatchingConfig`; `TrainConfig.validate` runs
those checks too, before any data is read, and names the flag in their errors.
"""

from __future__ import annotations

import dataclasses
import math
import re
from pathlib import Path

from keras_attn.config import SCORES  # no TensorFlow: keras_attn imports its layers lazily
from keras_attn.files import folder_problem, input_file_problem


def setting(default, help: str, *, choices: tuple = (), minimum: int = 1):
    """A field with its `--help` text, its allowed values (`choices`, strings) and, for
    integers, the smallest allowed value."""
    return dataclasses.field(default=default, metadata={"help": help, "choices": choices, "minimum": minimum})


@dataclasses.dataclass
class TrainConfig:
    """Everything a training run needs; CLI flags and config files set these keys."""

    corpus: str = setting("dates", "training data: dates (the built-in demo, generated), multi30k "
                                   "(from --data-dir), files (--train-src/--train-tgt or --train-tsv)",
                          choices=("dates", "multi30k", "files"))
    src_lang: str = setting("de", "multi30k: source language suffix of the files")
    tgt_lang: str = setting("en", "multi30k: target language suffix of the files")
    data_dir: str = setting("../shared/data/multi30k", "multi30k: folder of train/val/test_2016_flickr.{de,en}.gz")
    train_src: str | None = setting(None, "files: source sentences, one per line (.gz ok)")
    train_tgt: str | None = setting(None, "files: target sentences, aligned with --train-src")
    valid_src: str | None = setting(None, "files: validation sources (default: the last 5 % of the training "
                                          "pairs, at most 2,000, held out)")
    valid_tgt: str | None = setting(None, "files: validation targets, aligned with --valid-src")
    train_tsv: str | None = setting(None, "files: source<TAB>target pairs instead of two files")
    valid_tsv: str | None = setting(None, "files: validation pairs as TSV")
    limit_train: int | None = setting(None, "use only the first N training pairs (smoke runs)")
    dates_train_size: int = setting(20000, "dates: number of generated training pairs")
    # tokenization
    vocab_size: int | None = setting(None, "SentencePiece pieces per side, at most (default 8000; 400 "
                                           "source / 16 target for the dates demo); a text that gives fewer is "
                                           "trained with fewer, and the log says so")
    src_vocab_size: int | None = setting(None, "source pieces (overrides --vocab-size)")
    tgt_vocab_size: int | None = setting(None, "target pieces (overrides --vocab-size)")
    max_len: int = setting(100, "longest pair kept for training, in tokens per side (longer ones are skipped)")
    subword_alpha: float = setting(0.0, "> 0: sample a new segmentation of every training pair each epoch "
                                        "(subword regularization; smaller = noisier, at most 1)")
    # model
    embedding_dim: int = setting(64, "token embedding width, both sides")
    encoder_units: int = setting(64, "encoder LSTM units (per direction when bidirectional)")
    encoder_layers: int = setting(1, "stacked encoder LSTM layers")
    bidirectional: bool = setting(True, "bidirectional encoder")
    decoder_units: int = setting(128, "decoder LSTM units")
    decoder_layers: int = setting(1, "stacked decoder LSTM layers")
    attention: str = setting("general", "Luong score: general (h_t Wa H_src^T), dot, concat",
                             choices=SCORES)
    dropout: float = setting(0.1, "dropout on embeddings, encoder outputs and the fed-back attentional "
                                  "state, in [0, 1)")
    word_dropout: float = setting(0.0, "zero whole source/target token embeddings in training, in [0, 1)")
    # optimization
    epochs: int = setting(6, "most epochs (early stopping may end sooner)")
    batch_size: int | None = setting(64, "sentences per batch (ignored when --batch-tokens is given)")
    batch_tokens: int | None = setting(None, "target tokens per batch, padding included (token-budget "
                                             "batches; must exceed --max-len)")
    bucket_width: int = setting(4, "a batch holds pairs whose longer side is within this many tokens")
    lr: float = setting(3e-3, "Adam learning rate, > 0")
    label_smoothing: float = setting(0.0, "label smoothing of the loss, in [0, 1)")
    clipnorm: float = setting(5.0, "clip each weight's gradient to this L2 norm; 0 = no clipping")
    patience: int = setting(3, "early stopping: epochs without improvement of --monitor")
    lr_patience: int = setting(1, "plateau schedule: epochs without improvement before the rate is cut")
    lr_factor: float = setting(0.5, "plateau schedule: the cut multiplies the rate by this, in (0, 1)")
    min_lr: float = setting(1e-5, "the rate's floor (plateau) or end (cosine), >= 0")
    lr_schedule: str = setting("plateau", "plateau (cut when --monitor stalls) or cosine (from --lr to "
                                          "--min-lr over --epochs)", choices=("plateau", "cosine"))
    average_last: int = setting(0, "average the last N epochs' weights if that improves --monitor (0 = off)",
                                minimum=0)
    ema: float = setting(0.0, "keep an exponential moving average of the weights with this decay, in [0, 1) "
                              "(e.g. 0.998; 0 = off): validated, checkpointed and kept")
    val_bleu: bool = setting(False, "greedy sacreBLEU of the validation set after every epoch (history.csv)")
    monitor: str = setting("val_loss", "what picks the kept checkpoint, drives the plateau schedule and early "
                                       "stopping: val_loss, or val_bleu (needs --val-bleu true)",
                           choices=("val_loss", "val_bleu"))
    init_from: str | None = setting(None, "a training folder: start from its weights and tokenizers")
    seed: int = setting(0, "seed of the weights, batch orders and dropout masks, in [0, 2**32)", minimum=0)
    jit: bool = setting(False, "compile the training step with XLA")
    precision: str = setting("float32", "float32, or mixed_bfloat16 (bfloat16 matmuls, float32 weights; "
                                        "faster only on CPUs with bfloat16 instructions)",
                             choices=("float32", "mixed_bfloat16"))
    strategy: str = setting("none", "none, mirrored (the local devices) or multiworker (hosts from TF_CONFIG)",
                            choices=("none", "mirrored", "multiworker"))
    steps_per_epoch: int | None = setting(None, "batches per epoch (default: one pass over the training data)")
    out: str = setting("runs/dates", "the training folder (a killed run resumes from it)")
    verbose: int = setting(1, "0 silent; 1 a progress bar on a terminal, one line per epoch in a file; "
                              "2 one line per epoch", minimum=0)

    @classmethod
    def from_file(cls, path: str | Path) -> dict:
        """Keys from a YAML or JSON config file, each checked against its field's type;
        errors name the file and the key's line."""
        import yaml

        path = Path(path)
        problem = input_file_problem(path)
        if problem:
            raise ValueError(f"{path}: {problem} (the --config file)")
        try:
            text = path.read_text(encoding="utf-8")
            node = yaml.compose(text)
            values = yaml.safe_load(text) or {}
        except (yaml.YAMLError, UnicodeDecodeError) as error:
            raise ValueError(f"{path}: not valid YAML/JSON: {error}") from None
        if not isinstance(values, dict):
            raise ValueError(f"{path}: expected a mapping of keys to values")
        lines = {str(key.value): f":{key.start_mark.line + 1}" for key, _ in node.value} if values else {}
        fields = {f.name: f for f in dataclasses.fields(cls)}
        checked = {}
        for key, value in values.items():
            name = str(key).replace("-", "_")
            if name not in fields:
                raise ValueError(f"{path}{lines.get(str(key), '')}: unknown key {key!r}")
            try:
                checked[name] = typed(fields[name], value)
            except ValueError as error:
                raise ValueError(f"{path}{lines.get(str(key), '')}: {key}: {error}") from None
        if values:
            refuse_repeated_keys(path, node)
        return checked

    def validate(self):
        """Raise a ValueError naming the flag of the first bad setting (numbers given as
        text, as a YAML file may give them, become numbers)."""
        for field in dataclasses.fields(self):
            try:
                setattr(self, field.name, typed(field, getattr(self, field.name)))
            except ValueError as error:
                raise ValueError(f"{flag(field.name)}: {error}") from None
        self.check_ranges()
        self.check_combinations()

    def check_ranges(self):
        if self.verbose > 2:
            raise ValueError(f"--verbose must be 0, 1 or 2, got {self.verbose}")
        if self.seed >= 2**32:
            raise ValueError(f"--seed must be < 2**32, got {self.seed}")
        if self.lr <= 0:
            raise ValueError(f"--lr must be > 0, got {self.lr}")
        if not 0 < self.lr_factor < 1:
            raise ValueError(f"--lr-factor must be in (0, 1), got {self.lr_factor}")
        for name in ("min_lr", "clipnorm"):
            if getattr(self, name) < 0:
                raise ValueError(f"{flag(name)} must be >= 0, got {getattr(self, name)}")
        if not 0 <= self.subword_alpha <= 1:
            raise ValueError(f"--subword-alpha must be in [0, 1], got {self.subword_alpha}")
        if not 0 <= self.ema < 1:
            raise ValueError(f"--ema must be in [0, 1) (0 = off; e.g. 0.998), got {self.ema}")
        if not 0 <= self.label_smoothing < 1:
            raise ValueError(f"--label-smoothing must be in [0, 1), got {self.label_smoothing}")

    def check_combinations(self):
        from pipelines.train import batching_config, model_config

        if self.monitor == "val_bleu" and not self.val_bleu:
            raise ValueError("--monitor val_bleu needs --val-bleu true")
        out = Path(self.out)
        if problem := folder_problem(out):
            raise ValueError(f"--out {self.out}: {problem}")
        if self.init_from is not None and Path(self.init_from).resolve() == out.resolve():
            raise ValueError(f"--init-from and --out are the same folder ({self.out}); write the new run elsewhere")
        if self.init_from is not None:
            for name in ("model.keras", "src.spm.model", "tgt.spm.model"):
                if not (Path(self.init_from) / name).is_file():
                    raise ValueError(f"--init-from {self.init_from}: missing {name} (not a training folder?)")
        self.check_files()
        # The model's and the batching's own checks, now rather than after the data is
        # read; their messages name the field, the user wrote the flag.
        try:
            model_config(self, 4, 4)  # stand-in sizes (the tokenizers set them): 4 holds the special ids
            batching_config(self)
        except ValueError as error:
            raise ValueError(re.sub(r"Seq2SeqConfig\.(\w+)|\b([a-z]+_[a-z_]+)\b", self.flag_of_field,
                                    str(error))) from None

    def flag_of_field(self, match: re.Match) -> str:
        name = match.group(1) or match.group(2)
        return flag(name) if hasattr(self, name) else match.group(0)

    def check_files(self):
        """The file flags belong to `--corpus files`, and each pair of them goes together:
        a flag that would be ignored is an error, not a silent demo run."""
        given = [name for name in ("train_src", "train_tgt", "valid_src", "valid_tgt", "train_tsv", "valid_tsv")
                 if getattr(self, name) is not None]
        if given and self.corpus != "files":
            raise ValueError(f"{flag(given[0])} is for --corpus files (this run's corpus is {self.corpus})")
        if self.corpus == "files" and not (self.train_tsv or (self.train_src and self.train_tgt)):
            raise ValueError("--corpus files needs --train-src and --train-tgt (or --train-tsv)")
        for a, b in (("train_src", "train_tgt"), ("valid_src", "valid_tgt")):
            if (getattr(self, a) is None) != (getattr(self, b) is None):
                raise ValueError(f"{flag(a)} and {flag(b)} go together; got only "
                                 f"{flag(a) if getattr(self, a) is not None else flag(b)}")


def flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def integer_kind(minimum: int) -> str:
    """What an integer setting must be, in errors: from 1 or from 0."""
    return "a positive integer" if minimum == 1 else "a non-negative integer"


def typed(field: dataclasses.Field, value):
    """`value` as `field` takes it, or a ValueError saying what it takes: booleans are
    true/false, integers whole numbers from the field's minimum, floats finite numbers
    (`finite_number`), strings one of the field's choices when it has them; None only
    where the default is None."""
    kind, meta = str(field.type), field.metadata
    if value is None and "None" in kind:
        return None
    if "bool" in kind:
        if not isinstance(value, bool):
            raise ValueError(f"expected true or false, got {value!r}")
    elif "int" in kind:
        if not isinstance(value, int) or isinstance(value, bool) or value < meta["minimum"]:
            raise ValueError(f"expected {integer_kind(meta['minimum'])}, got {value!r}")
    elif "float" in kind:
        value = finite_number(value)
    elif not isinstance(value, str):
        raise ValueError(f"expected text, got {value!r} (in YAML, put it in quotes)")
    elif meta["choices"] and value not in meta["choices"]:
        raise ValueError(f"expected one of {', '.join(meta['choices'])}, got {value!r}")
    return value


def refuse_repeated_keys(path: Path, node) -> None:
    """A key given twice in a config file's top-level mapping `node` (also as
    `batch-size` and `batch_size`) is refused: YAML and JSON loaders keep the last
    silently, so an edit of the first would change nothing."""
    first = {}
    for key, _ in node.value:
        name, line = str(key.value).replace("-", "_"), key.start_mark.line + 1
        if name in first:
            raise ValueError(f"{path}:{line}: {key.value!r} repeats the key of line {first[name]}")
        first[name] = line


def finite_number(value) -> float:
    """`value` as a float. A string such as "1e-3", which YAML 1.1 reads as text, is read
    as the number; NaN and infinity are refused (a NaN passes every range check after
    this one, and `--lr nan` would train to NaN)."""
    if isinstance(value, bool) or not isinstance(value, str | int | float):
        raise ValueError(f"expected a number, got {value!r}")
    try:
        value = float(value)
    except ValueError:  # text that is not a number
        raise ValueError(f"expected a number, got {value!r}") from None
    except OverflowError:  # an integer beyond a float's range
        raise ValueError(f"expected a finite number, got {value!r}") from None
    if not math.isfinite(value):
        raise ValueError(f"expected a finite number, got {value!r}")
    return value
