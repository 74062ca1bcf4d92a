"""Deployment-side translation with onnxruntime: no TensorFlow import here.

A deployment installs `onnxruntime`, `sentencepiece` and `numpy` only
(`pip install keras-attn[runtime]` or those three packages).
"""

from keras_attn.runtime.translator import BundleError, Translation, Translator

__all__ = ["BundleError", "Translation", "Translator"]
