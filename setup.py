"""Build hook for the one optional C extension; everything else is in pyproject.toml.

``histoview.explain._occlusion_index`` speeds up the index bookkeeping of exact occlusion
importance (explain/graph.py) about 2.5x. It is optional: where no C compiler is available
the build skips it and histoview uses the NumPy implementation, which gives the same result.
"""

import sys

from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension(
            "histoview.explain._occlusion_index",
            sources=["src/histoview/explain/_occlusion_index.c"],
            define_macros=[("HISTOVIEW_PYTHON_MODULE", "1")],
            extra_compile_args=[] if sys.platform == "win32" else ["-O3"],
            optional=True,
        )
    ]
)
