"""MMT core: the trainable Multiscale Multimodal Transformer, its data pipeline and engine.

    import mmt_core
    model = mmt_core.create_model("mmt_tiny", num_classes=6)
    out = model(video=video, audio=audio)   # video (B,3,T,H,W), audio (B,1,mel,frames)
    out.logits, out.audio_embed, out.video_proj ...
"""
from .errors import ConfigError, MediaError, UserError

__all__ = ["create_model", "list_models", "load_foreign_weights", "UserError", "MediaError",
           "ConfigError"]


def __getattr__(name):  # lazy, so `mmt --help` and the data tools do not import the models
    if name in ("create_model", "list_models"):
        from . import registry

        return getattr(registry, name)
    if name == "load_foreign_weights":
        from .models.convert import load_foreign_weights

        return load_foreign_weights
    raise AttributeError(name)
