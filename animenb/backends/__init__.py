"""Backend registry: `get_backend("diffusers" | "comfyui", **options)`."""

from __future__ import annotations

from typing import Callable

from .base import Backend, BackendError, ImageRequest, ImageToVideoRequest, OutOfMemoryError, VideoRequest

_REGISTRY: dict[str, Callable[..., Backend]] = {}


def register_backend(name: str, factory: Callable[..., Backend]) -> None:
    _REGISTRY[name] = factory


def _builtin(name: str) -> Callable[..., Backend]:
    # Imported lazily: the ComfyUI backend must not pull torch/diffusers and vice versa.
    if name == "diffusers":
        from .diffusers_backend import DiffusersBackend

        return DiffusersBackend
    if name == "comfyui":
        from .comfyui import ComfyUIBackend

        return ComfyUIBackend
    raise KeyError(name)


def backend_names() -> list[str]:
    return sorted({"diffusers", "comfyui", *_REGISTRY})


def get_backend(name: str = "diffusers", **options) -> Backend:
    if name in _REGISTRY:
        return _REGISTRY[name](**options)
    try:
        factory = _builtin(name)
    except KeyError:
        raise ValueError(f"`backend` must be one of {', '.join(backend_names())}, got {name!r}.") from None
    return factory(**options)


__all__ = [
    "Backend",
    "BackendError",
    "ImageRequest",
    "ImageToVideoRequest",
    "OutOfMemoryError",
    "VideoRequest",
    "backend_names",
    "get_backend",
    "register_backend",
]
