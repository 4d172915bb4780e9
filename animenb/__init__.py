"""animenb: Jupyter-first anime production research toolkit."""
import importlib.metadata

try:  # the version is written once, in pyproject.toml
    __version__ = importlib.metadata.version("animenb")
except importlib.metadata.PackageNotFoundError:  # a checkout on PYTHONPATH, never installed
    __version__ = "0+unknown"
