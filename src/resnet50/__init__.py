"""ResNet-50 toolkit: the ResNet family of He et al. (2015) and the life of a model around it."""

from .errors import UserError
from .factory import create_model
from .model import ResNet, ResNetConfig, list_models, model_config

__version__ = "0.1.0"
__all__ = ["ResNet", "ResNetConfig", "UserError", "create_model", "list_models", "model_config", "__version__"]
