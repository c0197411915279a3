from .loading import default_model_dir, load_base_model

__all__ = ["default_model_dir", "load_base_model"]
