"""SentencePiece models: trained with the `sentencepiece` trainer, one per side.

Ids are fixed so the model, the tf.data pipeline and the runtime agree:
pad=0, unk=1, bos=2, eos=3.
"""

from __future__ import annotations

import io
import re
from pathlib import Path

import sentencepiece as spm

PAD_ID, UNK_ID, BOS_ID, EOS_ID = 0, 1, 2, 3


def train_sentencepiece(sentences: list[str], vocab_size: int, model_type: str = "unigram",
                        character_coverage: float = 1.0, seed_sentences: int = 2_000_000,
                        setting: str = "vocab_size") -> bytes:
    """Train a SentencePiece model on `sentences` and return the serialized model.

    `vocab_size` is an upper bound: on small or repetitive text (the dates demo) the
    trainer may stop below it rather than fail. Below the text's distinct characters
    plus the 4 special ids it cannot: a `ValueError` names `setting` (what set the size).
    """
    if not sentences:
        raise ValueError("train_sentencepiece: no sentences to train on")
    model = io.BytesIO()
    try:
        spm.SentencePieceTrainer.train(
            sentence_iterator=iter(sentences),
            model_writer=model,
            vocab_size=vocab_size,
            model_type=model_type,
            character_coverage=character_coverage,
            pad_id=PAD_ID, unk_id=UNK_ID, bos_id=BOS_ID, eos_id=EOS_ID,
            hard_vocab_limit=False,
            input_sentence_size=seed_sentences,
            shuffle_input_sentence=True,
            num_threads=2,
            minloglevel=2,
        )
    except RuntimeError as error:  # SentencePiece's check: "... smaller than required_chars. 8 vs 23. ..."
        needed = re.search(r"smaller than required_chars\. \d+ vs (\d+)", str(error))
        if not needed:
            raise
        raise ValueError(f"{setting}: too small for this text, which needs at least {needed.group(1)} "
                         "pieces (one per distinct character, and the 4 special ids)") from None
    return model.getvalue()


def load_processor(model: bytes | str | Path) -> spm.SentencePieceProcessor:
    if isinstance(model, (str, Path)):
        model = Path(model).read_bytes()
    return spm.SentencePieceProcessor(model_proto=model)

