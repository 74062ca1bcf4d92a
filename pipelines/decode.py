"""Corpus-level translation with the TensorFlow inference model (training side).

The deployment path (`keras_attn.runtime`) mirrors this with onnxruntime.
"""

from __future__ import annotations

from keras_attn.runtime.translator import (
    decode_limit,
    encode_sources,
    length_sorted_batches,
    pre_pad,
    strip_special,
)
from pipelines.tokenizer import EOS_ID, PAD_ID


def translate_tf(inference, sources: list[str], src_sp, tgt_sp, max_len: int = 100,
                 batch_size: int = 128, beam_size: int = 1, alpha: float = 0.6) -> list[str]:
    """Translate sentences with an `InferenceModel`; output order = input order. Sources
    are normalized and cut to `max_len` pieces as the runtime does (`encode_sources`:
    a `TruncationWarning` pointing at the caller names the ones cut)."""
    encoded = encode_sources(sources, src_sp, max_len, stacklevel=3)
    outputs = [""] * len(sources)
    for batch in length_sorted_batches([len(e) for e in encoded], batch_size, beam_size):
        rows = [encoded[i] for i in batch]
        limit = decode_limit([len(r) for r in rows], max_len)  # one cap per sentence, as the runtime
        result = inference.translate_ids(pre_pad(rows), limit, beam_size, alpha)
        for i, ids in zip(batch, result["ids"].numpy()):
            outputs[i] = tgt_sp.decode(strip_special(ids, EOS_ID, PAD_ID)) if encoded[i] else ""
    return outputs
