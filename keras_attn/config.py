"""One config object for every hyper-parameter of the model.

It round-trips through JSON so a trained model can be rebuilt (and an export bundle
can describe itself) from a single file.
"""

from __future__ import annotations

import dataclasses
import json
import numbers
from pathlib import Path

from keras_attn.files import atomic_write

SCORES = ("general", "dot", "concat")

# The widest beam search the runtime and the pipelines run, and the most hypotheses a
# batch holds (its sentences x the beam). With the Multi30k recipe's model one sentence
# at beam 4,096 took 5 s and 0.7 GB, and 64 of them in one batch failed in onnxruntime's
# allocator at 17.3 GB (under a 20 GB limit); a beam of 10**6 failed in onnxruntime even for the dates demo's
# model, and a fuzzing run of wide beams with it was killed for memory.
MAX_BEAM = 4096


@dataclasses.dataclass(frozen=True)
class Seq2SeqConfig:
    """Hyper-parameters of an attention seq2seq model.

    Special ids follow the SentencePiece models the pipelines train:
    pad=0, unk=1, bos=2, eos=3.
    """

    src_vocab_size: int
    tgt_vocab_size: int
    embedding_dim: int = 256
    encoder_units: int = 256  # per direction when bidirectional
    encoder_layers: int = 1
    bidirectional: bool = True
    decoder_units: int = 512
    decoder_layers: int = 1
    attention: str = "general"
    dropout: float = 0.3
    word_dropout: float = 0.0  # training: zero whole token embeddings with this probability
    pad_id: int = 0
    unk_id: int = 1
    bos_id: int = 2
    eos_id: int = 3

    def __post_init__(self):
        check_sizes("Seq2SeqConfig", **{name: getattr(self, name) for name in (
            "src_vocab_size", "tgt_vocab_size", "embedding_dim", "encoder_units", "encoder_layers",
            "decoder_units", "decoder_layers")})
        if self.attention not in SCORES:
            raise ValueError(f"Seq2SeqConfig.attention must be one of {SCORES}, got {self.attention!r}")
        check_flags("Seq2SeqConfig", bidirectional=self.bidirectional)
        check_rates("Seq2SeqConfig", dropout=self.dropout, word_dropout=self.word_dropout)
        self._check_special_ids()

    def _check_special_ids(self):
        """pad, unk, bos and eos: distinct ids below both vocabulary sizes (the
        embeddings and the generator index them)."""
        ids = {name: getattr(self, name) for name in ("pad_id", "unk_id", "bos_id", "eos_id")}
        listed = ", ".join(f"{name}={value!r}" for name, value in ids.items())
        if not all(is_int(value) and value >= 0 for value in ids.values()) or len(set(ids.values())) < 4:
            raise ValueError(f"Seq2SeqConfig special ids must be distinct ints >= 0, got {listed}")
        for name in ("src_vocab_size", "tgt_vocab_size"):
            if getattr(self, name) <= max(ids.values()):
                raise ValueError(f"Seq2SeqConfig.{name} must be larger than every special id ({listed}), "
                                 f"got {getattr(self, name)}")

    @property
    def memory_dim(self) -> int:
        """Width of the encoder outputs the decoder attends to."""
        return self.encoder_units * (2 if self.bidirectional else 1)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict) -> Seq2SeqConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"unknown Seq2SeqConfig keys: {unknown}")
        return cls(**values)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> Seq2SeqConfig:
        return cls.from_dict(json.loads(text))

    def save(self, path: str | Path) -> None:
        """Write the JSON whole or not at all (`atomic_write`): a failed or interrupted
        save leaves the file it replaces as it was."""
        atomic_write(path, self.to_json() + "\n")

    @classmethod
    def load(cls, path: str | Path) -> Seq2SeqConfig:
        return cls.from_json(Path(path).read_text(encoding="utf-8"))


def is_int(value) -> bool:
    """An int that is not a bool (`True` is an int to Python, not a size)."""
    return isinstance(value, int) and not isinstance(value, bool)


def check_sizes(owner: str, **sizes) -> None:
    """Each of `sizes` is a positive int, else a ValueError naming `owner.name`."""
    for name, value in sizes.items():
        if not is_int(value) or value < 1:
            raise ValueError(f"{owner}.{name} must be a positive int, got {value!r}")


def check_rates(owner: str, **rates) -> None:
    """Each of `rates` (a dropout or label smoothing) is a real number in [0, 1)."""
    for name, value in rates.items():
        if not (isinstance(value, numbers.Real) and not isinstance(value, bool) and 0.0 <= value < 1.0):
            raise ValueError(f"{owner}.{name} must be in [0, 1), got {value!r}")


def check_flags(owner: str, **flags) -> None:
    """Each of `flags` is a bool (a config file's "false", a string, is truthy)."""
    for name, value in flags.items():
        if not isinstance(value, bool):
            raise ValueError(f"{owner}.{name} must be true or false, got {value!r}")
