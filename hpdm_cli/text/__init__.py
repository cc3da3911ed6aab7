"""Text conditioning for hpdm: prompt encoders (MiniLM default, local T5) and a caption-embedding cache.

Importing this package is cheap: transformers and the model packages load only
when an encoder is constructed.
"""

from .encoders import (
    EmbeddingCache,
    MiniLMEncoder,
    T5Encoder,
    TextEncoder,
    TextEncoderError,
    cached_embeddings,
    load_text_encoder,
    minilm_model_dir,
)

__all__ = [
    "EmbeddingCache",
    "MiniLMEncoder",
    "T5Encoder",
    "TextEncoder",
    "TextEncoderError",
    "cached_embeddings",
    "load_text_encoder",
    "minilm_model_dir",
]
