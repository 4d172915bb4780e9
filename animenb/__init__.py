"""animenb: Jupyter-first anime production research toolkit."""

import importlib.metadata

try:  # the version is written once, in pyproject.toml
    __version__ = importlib.metadata.version("animenb")
except importlib.metadata.PackageNotFoundError:  # a checkout on PYTHONPATH, never installed
    __version__ = "0+unknown"


def sweep(phase, parameters, axes, *, mode="grid", out_dir=None, models=None, show=True, **kwargs):
    """An X/Y/Z sweep of one phase in this kernel (`animenb.sweeps.local.run_sweep`): returns the DataFrame of
    every cell and, with `show`, displays the labelled grid image.

        df = animenb.sweep(1, {"prompt": "anime girl", "seed": 3}, {"steps": "8-24:8", "guidance_scale": [5, 7]})
    """
    from pathlib import Path

    from .sweeps.local import run_sweep

    df = run_sweep(phase, parameters, axes, mode=mode, out_dir=out_dir, models=models, **kwargs)
    if show:
        from IPython.display import Image, display

        display(Image(filename=str(Path(df.attrs["sweep_dir"]) / "grid.png")))
    return df
