"""The one thing pyproject.toml cannot declare: an optional C extension.

``dataset._native`` reads an increment's small files and decodes its plain 28x28 grayscale
PNGs in C threads (``dataset/native.py`` says when and why). It needs a C compiler, Python's
headers and zlib's (Debian: gcc, python3.X-dev, zlib1g-dev); where one is missing, ``pip
install`` goes on without it and the same work is done in Python.
"""

from setuptools import Extension, setup

setup(ext_modules=[
    Extension("dataset._native", ["dataset/_native.c", "dataset/_native_pool.c",
                                  "dataset/_native_read.c", "dataset/_native_scan.c"],
              depends=["dataset/_native.h"], libraries=["z"], optional=True,
              extra_compile_args=["-O2", "-std=c11", "-Wall", "-Wextra", "-Werror=implicit"]),
])
