"""``histoview.resources``: files the installed plugin reads at run time.

This folder is the package ``histoview.resources`` (pyproject.toml maps it with setuptools'
``package-dir``), so wheels and editable installs alike reach it through
``importlib.resources.files("histoview.resources")``. ``weights/`` holds the bundled synthetic
demo checkpoints (safetensors + JSON sidecars), trained on generated phantoms, not patient data.
"""
