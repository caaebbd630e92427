"""Members' models: Llama family (Llama, Mistral) and GPT-J, loaded from HF folders."""

from blendrt.models.config import ARCHITECTURES, ModelConfig
from blendrt.models.loaded import LoadedModel, load_model

__all__ = ["ARCHITECTURES", "LoadedModel", "ModelConfig", "load_model"]
