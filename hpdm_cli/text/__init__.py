"""Text conditioning for hpdm: prompt encoders (MiniLM default, local T5) and a caption-embedding cache; MiniLM
run in plain torch (`bert`); stored embedding tables for encoder-free training and sampling (`tables`).

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
    encode_texts,
    load_text_encoder,
    minilm_model_dir,
    spec_family,
)

__all__ = [
    "EmbeddingCache",
    "MiniLMEncoder",
    "T5Encoder",
    "TextEncoder",
    "TextEncoderError",
    "cached_embeddings",
    "encode_texts",
    "load_text_encoder",
    "minilm_model_dir",
    "spec_family",
]
