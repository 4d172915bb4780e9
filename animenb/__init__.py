"""animenb: Jupyter-first anime production research toolkit."""
__version__ = "0.1.0"


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
