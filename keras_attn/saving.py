"""Loading trained models safely."""

from __future__ import annotations

from pathlib import Path

import keras

# Importing the modules registers every keras_attn class as serializable.
from keras_attn import attention, decoder, encoder, model  # noqa: F401


def load_model(path: str | Path):
    """Load a `.keras` file written by `Seq2Seq.save` in Keras's safe mode.

    Safe mode refuses files that would run arbitrary code (Lambda layers), so loading
    a model someone sent you cannot execute their code.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no model file at {path}")
    return keras.models.load_model(path, safe_mode=True, compile=True)
