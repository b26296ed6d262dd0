"""Recipes: the schema, loading with extends/overrides/interpolation, and strict validation."""
from __future__ import annotations

from framework.config.load import LoadedRecipe, display_path, load_recipe
from framework.config.schema import Component, Recipe

__all__ = ["Component", "LoadedRecipe", "Recipe", "display_path", "load_recipe"]
