"""Feature extraction for recbole-mm: frozen encoders, resumable sharded extraction, atomic files.

Needs the ``encoders`` extra (transformers, pillow, sentence-transformers); importing this package
does not import them, the encoder classes do when built.
"""
from recbole_mm.encoders.extract import ExtractionResult, extract_features
from recbole_mm.encoders.io import (atomic_save_npy, atomic_write_json, atomic_write_lines,
                                    atomic_write_text, feature_paths, write_feature,
                                    write_raw_float32)
from recbole_mm.encoders.items import encode_item_images, encode_item_texts, find_images, open_image
from recbole_mm.encoders.models import (CLIPImageEncoder, CLIPTextEncoder, EncoderUnavailable,
                                        HFImageEncoder, HFTextEncoder, SentenceTransformerEncoder,
                                        build_image_encoder, build_text_encoder,
                                        packaged_minilm_path, pick_device, resolve_model)

__all__ = [
    "ExtractionResult", "extract_features", "atomic_save_npy", "atomic_write_json",
    "atomic_write_lines", "atomic_write_text", "feature_paths", "write_feature", "write_raw_float32",
    "encode_item_images", "encode_item_texts", "find_images", "open_image", "CLIPImageEncoder",
    "CLIPTextEncoder", "EncoderUnavailable", "HFImageEncoder", "HFTextEncoder",
    "SentenceTransformerEncoder", "build_image_encoder", "build_text_encoder",
    "packaged_minilm_path", "pick_device", "resolve_model",
]
