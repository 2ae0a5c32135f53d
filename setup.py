"""The one compiled piece, which pyproject.toml cannot yet declare stably: serving/_restparse.c (REST predict's JSON
numbers in, TF Serving's float text out).  Optional: without a compiler the install goes on and numpy serves."""

from setuptools import Extension, setup

setup(ext_modules=[Extension("odal.serving._restparse", ["serving/_restparse.c"], optional=True)])
