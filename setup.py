"""The setuptools entry; the package's metadata and the tools' settings are in pyproject.toml."""
from setuptools import setup

setup()
