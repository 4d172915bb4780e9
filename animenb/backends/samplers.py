"""The samplers people name (A1111's names), each as a diffusers scheduler and a ComfyUI KSampler pair.

A request's `scheduler` is an A1111 name (`"DPM++ 2M Karras"`, `"Euler a"`...) or one of animenb's
older ids (`dpmpp_2m_karras`...), which are aliases of the same samplers. PNG info writes A1111's
`Sampler` and `Schedule type` fields, so A1111, Civitai and sd-parsers read the recipe back.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class Sampler:
    name: str  # A1111's sampler as people write it
    a1111: tuple[str, str]  # (Sampler, Schedule type) as A1111 >= 1.6 writes them
    diffusers: str  # diffusers scheduler class
    options: dict = field(default_factory=dict)  # its from_config overrides
    comfyui: tuple[str, str] = ("euler", "normal")  # KSampler (sampler_name, scheduler)
    model_calls: int = 1  # UNet evaluations per step (what a step costs: animenb.phases.cost)


_SAMPLERS = (
    Sampler("Euler", ("Euler", "Uniform"), "EulerDiscreteScheduler", comfyui=("euler", "normal")),
    Sampler(
        "Euler a", ("Euler a", "Uniform"), "EulerAncestralDiscreteScheduler", comfyui=("euler_ancestral", "normal")
    ),
    Sampler(
        "DPM++ 2M",
        ("DPM++ 2M", "Uniform"),
        "DPMSolverMultistepScheduler",
        {"algorithm_type": "dpmsolver++", "solver_order": 2},
        ("dpmpp_2m", "normal"),
    ),
    Sampler(
        "DPM++ 2M Karras",
        ("DPM++ 2M", "Karras"),
        "DPMSolverMultistepScheduler",
        {"algorithm_type": "dpmsolver++", "solver_order": 2, "use_karras_sigmas": True},
        ("dpmpp_2m", "karras"),
    ),
    # k-diffusion's DPM++ SDE, as A1111 and ComfyUI run it: two model calls per step, Brownian-tree noise (torchsde).
    Sampler(
        "DPM++ SDE Karras",
        ("DPM++ SDE", "Karras"),
        "DPMSolverSDEScheduler",
        {"use_karras_sigmas": True},
        ("dpmpp_sde", "karras"),
        model_calls=2,
    ),
    Sampler("DDIM", ("DDIM", "DDIM"), "DDIMScheduler", comfyui=("ddim", "ddim_uniform")),
    Sampler("UniPC", ("UniPC", "Uniform"), "UniPCMultistepScheduler", comfyui=("uni_pc", "normal")),
    Sampler("LCM", ("LCM", "Uniform"), "LCMScheduler", comfyui=("lcm", "normal")),
)
SAMPLERS: dict[str, Sampler] = {s.name: s for s in _SAMPLERS}
# animenb's first scheduler ids, kept so earlier requests, notebooks and YAML still run.
ALIASES = {
    "dpmpp_2m": "DPM++ 2M",
    "dpmpp_2m_karras": "DPM++ 2M Karras",
    "ddim": "DDIM",
    "euler": "Euler",
    "euler_a": "Euler a",
}
SCHEDULER_NAMES = (*ALIASES, *SAMPLERS)


def sampler(name: str) -> Sampler:
    """The sampler `name` (an A1111 name or an alias) means; ValueError naming the choices otherwise."""
    found = SAMPLERS.get(ALIASES.get(name, name)) if isinstance(name, str) else None
    if found is None:
        raise ValueError(f"`scheduler` must be one of {', '.join(SCHEDULER_NAMES)}, got {name!r}.")
    return found


def model_calls(name: str | None) -> int:
    """UNet evaluations per step of the sampler `name` (1 for none, or for a name the spec will refuse)."""
    found = SAMPLERS.get(ALIASES.get(name, name)) if isinstance(name, str) else None
    return found.model_calls if found else 1
