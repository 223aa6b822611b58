"""Build of the optional C accelerator; everything else is in pyproject.toml.

The extension is optional: without a C compiler the install still succeeds and the sidecar runs the
pure-Python parser (the same behaviour, slower). KPI_SIDECAR_NO_EXTENSIONS=1 skips building it.
"""

import os

from setuptools import Extension, setup

ext_modules = []
if not os.environ.get("KPI_SIDECAR_NO_EXTENSIONS"):
    ext_modules.append(
        Extension(
            "proxy.nats._speedups", ["proxy/nats/_speedups.c"], optional=True, extra_compile_args=["-O2"]
        )
    )

setup(ext_modules=ext_modules)
