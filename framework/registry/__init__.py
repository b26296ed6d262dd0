"""The plugin host: loads built-in, third-party and recipe plugins, and binds a recipe's selections."""
from __future__ import annotations

from framework.registry.factories import check_options, declared
from framework.registry.manager import FAMILIES, Entry, Registry, build_registry
from framework.registry.selection import Parts, bind_parts, load_and_bind

__all__ = ["FAMILIES", "Entry", "Parts", "Registry", "bind_parts", "build_registry", "check_options", "declared",
           "load_and_bind"]
