"""Members' models: Llama family (Llama, Mistral) and GPT-J, loaded from HF folders. A lazy
face: importing the package loads no model code."""

from blendrt._lazy import lazy_exports

_EXPORTS = {
    "ARCHITECTURES": "blendrt.models.config",
    "ModelConfig": "blendrt.models.config",
    "LoadedModel": "blendrt.models.loaded",
    "load_model": "blendrt.models.loaded",
}
__all__ = sorted(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
