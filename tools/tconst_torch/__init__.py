"""Our own PyTorch implementation of the tconst SPEC (sections 2-4, 6)."""

from .export import export_model, load_model_file, write_model_file
from .model import ARCHITECTURES, ModelConfig, TConstModel, build_model
from .safetensors_io import SafetensorsError, read_safetensors, write_safetensors

__all__ = [
    "ARCHITECTURES",
    "ModelConfig",
    "SafetensorsError",
    "TConstModel",
    "build_model",
    "export_model",
    "load_model_file",
    "read_safetensors",
    "write_model_file",
    "write_safetensors",
]
