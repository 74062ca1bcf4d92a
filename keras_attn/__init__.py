"""keras-attn: Luong-attention sequence-to-sequence models in Keras 3.

The layers are imported lazily, so `import keras_attn.runtime` (the onnxruntime
translator) never pulls in TensorFlow.
"""

from __future__ import annotations

import importlib

__version__ = "0.1.0"

_EXPORTS = {
    "masked_softmax": "keras_attn.attention",
    "LuongAttention": "keras_attn.attention",
    "Encoder": "keras_attn.encoder",
    "InputFeedingDecoder": "keras_attn.decoder",
    "Generator": "keras_attn.decoder",
    "Seq2Seq": "keras_attn.model",
    "MaskedSparseCrossEntropy": "keras_attn.model",
    "MaskedTokenAccuracy": "keras_attn.model",
    "Seq2SeqConfig": "keras_attn.config",
    "load_model": "keras_attn.saving",
    "InferenceModel": "keras_attn.search",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name):
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'keras_attn' has no attribute {name!r}")
