"""Deployment-side translation with onnxruntime: no TensorFlow import here.

A deployment installs `onnxruntime`, `sentencepiece` and `numpy` only: they are
keras-attn's own dependencies (`pip install keras-attn`); training needs
`pip install 'keras-attn[train]'`.
"""

from keras_attn.runtime.translator import BundleError, Translation, Translator, TruncationWarning

__all__ = ["BundleError", "Translation", "Translator", "TruncationWarning"]
