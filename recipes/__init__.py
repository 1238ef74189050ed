"""The shipped recipes (the YAML files in this folder), installed as the package ``ppcr.recipes``.

pyproject.toml maps this folder into the package so that an installed wheel carries the recipes;
this file only makes the folder importable in an editable install. Recipes are read with
``ppcr.config.loading`` (``ppcr recipes list``).
"""
