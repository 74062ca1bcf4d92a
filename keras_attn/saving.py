"""Loading trained models safely."""

from __future__ import annotations

from pathlib import Path

import keras

# Importing the modules registers every keras_attn class as serializable.
from keras_attn import attention, decoder, encoder, model  # noqa: F401


def load_model(path: str | Path, float32: bool = True):
    """Load a `.keras` file written by `Seq2Seq.save` in Keras's safe mode.

    Safe mode refuses files that would run arbitrary code (Lambda layers), so loading
    a model someone sent you cannot execute their code. With `float32=True` (the
    default) the model computes in float32 whatever precision it was trained in:
    inference and export are float32. Weights are float32 either way.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no model file at {path}")
    previous = keras.mixed_precision.dtype_policy()
    if float32:  # sub-layers take the global policy when the model is rebuilt
        keras.mixed_precision.set_global_policy("float32")
    try:
        return keras.models.load_model(path, safe_mode=True, compile=True)
    finally:
        keras.mixed_precision.set_global_policy(previous)
