"""featx: frozen pretrained Keras CNNs as cached feature extractors for classical ML.

Data flows one way::

    images -> extract (+ cache) -> embeddings -> heads / projection -> report

:func:`learn` takes embeddings; :func:`evaluate`, :func:`compare` and :func:`report`
take images or embeddings and extract each representation once. ``docs/architecture.md``
maps the modules.

Importing featx does not import TensorFlow; the network is built on first use.

Examples
--------
>>> import numpy as np
>>> from featx import Extractor
>>> images = np.random.default_rng(0).integers(0, 255, (3, 40, 40, 3), dtype=np.uint8)
>>> ex = Extractor("MobileNetV2", weights=None, input_size=32, cache_dir=None, verbose=False)
>>> ex.extract(images).X.shape
(3, 1280)
"""

from featx.backbones import Backbone, list_backbones
from featx.embeddings import Embeddings
from featx.extract import Extractor
from featx.images import DecodeError

__version__ = "0.1.0"
__all__ = [
    "Backbone",
    "DecodeError",
    "EmbeddingTransformer",
    "Embeddings",
    "Extractor",
    "__version__",
    "audit",
    "compare",
    "evaluate",
    "export",
    "fit_classifier",
    "iter_predictions",
    "learn",
    "list_backbones",
    "load_classifier",
    "make_head",
    "neighbours",
    "predict_top_k",
    "project",
    "report",
    "save_classifier",
    "tune",
]

# The learning half of the package imports scikit-learn; load it on first use so that
# `import featx` (and `featx backbones`) stays quick.
_LAZY = {
    "EmbeddingTransformer": "featx.transformer",
    "make_head": "featx.heads",
    "evaluate": "featx.evaluation",
    "compare": "featx.evaluation",
    "learn": "featx.learning",
    "audit": "featx.auditing",
    "neighbours": "featx.similar",
    "fit_classifier": "featx.classifier",
    "save_classifier": "featx.classifier",
    "load_classifier": "featx.classifier",
    "predict_top_k": "featx.classifier",
    "iter_predictions": "featx.classifier",
    "export": "featx.exporting",
    "project": "featx.projection",
    "report": "featx.reporting",
    "tune": "featx.tuning",
}


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'featx' has no attribute {name!r}")
