"""animenb: Jupyter-first anime production research toolkit."""
__version__ = "0.1.0"
