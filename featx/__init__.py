"""featx: frozen pretrained Keras CNNs as cached feature extractors for classical ML.

Data flows one way::

    images -> extract (+ cache) -> embeddings -> heads / projection -> report

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
from featx.extract import Embeddings, Extractor
from featx.images import DecodeError

__version__ = "0.1.0"
__all__ = ["Backbone", "DecodeError", "Embeddings", "Extractor", "__version__", "list_backbones"]
