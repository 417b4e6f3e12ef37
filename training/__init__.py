"""``histoview.recipes``: the training recipes (``*.yaml``) of this folder, as package data.

pyproject.toml maps this folder to the package ``histoview.recipes`` with setuptools'
``package-dir``, so a wheel ships the recipes and an editable install reads them from here;
:mod:`histoview.training.recipes` finds them with ``importlib.resources``. The recipes are
also ordinary config files: ``histoview train training/amil-phantom.yaml``.
"""
