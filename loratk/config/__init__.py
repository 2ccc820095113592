"""The configuration layer: the training options, their validation, and YAML recipes."""

from loratk.config.train_config import TrainConfig
from loratk.config.recipes import find_recipe, list_recipes, load_recipe, resolve_config

__all__ = ["TrainConfig", "find_recipe", "list_recipes", "load_recipe", "resolve_config"]
