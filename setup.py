"""The evaluator's two C kernels; everything else is in pyproject.toml.

``optional=True``: without a C compiler the build skips them and the evaluator uses pycocotools
and msgspec instead (same numbers, slower; ``tests/evaluation/test_eval_native.py`` says so).
"""
from setuptools import Extension, setup

setup(ext_modules=[
    Extension("ltseg.evaluation._rle", ["ltseg/evaluation/_rle.c"], optional=True),     # mask area / IoU
    Extension("ltseg.evaluation._scan", ["ltseg/evaluation/_scan.c"], optional=True),   # results scanner
])
