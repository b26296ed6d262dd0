"""Recipes from other tools' commands: `seqtune import open-instruct`."""
