"""One config object for every hyper-parameter of the model.

It round-trips through JSON so a trained model can be rebuilt (and an export bundle
can describe itself) from a single file.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

SCORES = ("general", "dot", "concat")


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
        for name in ("src_vocab_size", "tgt_vocab_size", "embedding_dim", "encoder_units",
                     "encoder_layers", "decoder_units", "decoder_layers"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"Seq2SeqConfig.{name} must be a positive int, got {value!r}")
        if self.attention not in SCORES:
            raise ValueError(f"Seq2SeqConfig.attention must be one of {SCORES}, got {self.attention!r}")
        for name in ("dropout", "word_dropout"):
            if not 0.0 <= getattr(self, name) < 1.0:
                raise ValueError(f"Seq2SeqConfig.{name} must be in [0, 1), got {getattr(self, name)!r}")

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
        Path(path).write_text(self.to_json() + "\n", encoding="utf-8")

    @classmethod
    def load(cls, path: str | Path) -> Seq2SeqConfig:
        return cls.from_json(Path(path).read_text(encoding="utf-8"))
