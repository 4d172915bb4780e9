"""One-shot GPU check of animenb on a lent CUDA machine (runs on CPU too, CUDA-only steps SKIP).

    python3 bench/gpu_check.py [--out DIR] [--budget 270] [--skip oom,jobs] [--size 64] [--steps 15]
                               [--large-size 512] [--fast-steps 10] [--jobs 10] [--job-skip quality,cold]

Steps, each timed and isolated (a failing step never stops the next one; a step that would start
after `--budget` seconds is skipped), one PASS/FAIL/SKIP line each, and DIR/gpu_check.json rewritten
after every step:

  env      torch/CUDA/device/memory, package versions, ffmpeg, papermill engine + kernelspec set-up
  build    the tiny random-weight models (animenb.tiny) into a fresh ANIMENB_HOME
  phases   character_sheet -> animation_loop -> full_video on the tiny profile at --size, twice
           (cold = first, with model load; warm = second); files exist, PNGs decode, pixels are not
           one flat value / mostly black (fp16 VAE NaN -> black), manifest device/dtype = the
           placement animenb resolved (CUDA + float16 when a GPU is present)
  finite   the cached pipelines called directly with output_type="np": every value finite (SD, SD + the
           OpenPose ControlNet on a built-in skeleton, AnimateDiff, SVD)
  large    the three phases at --large-size (default 512) with --large-steps (default 15), twice:
           seconds per denoising step for tiny models on this device (CUDA only unless --cpu-large);
           s/step = the manifest's generate_seconds / denoising steps (text/image encoders, VAE
           decode and scheduler included; 8 images x steps for the sheet)
  fast     each profile fast path (animenb.fast_paths) against the defaults at --large-size: steps/s
           of the three pipelines called through the backend (--fast-steps steps, warm: the second
           call) and their peak VRAM; then the three pipelines loaded together, allocated memory vs.
           the sum of each pipeline's parameter bytes (shared components; target <= 0.7).
           CUDA only unless --cpu-large; compile_unet and cpu_offload are CUDA-only by design
  quality  animenb.quality.score_output_dir (embed="auto", what jobs use) on every run directory:
           scoring time vs. generation time; then bench/quality_cost.py --generation-seconds with
           the measured large-size generation seconds (synthetic 512 px scoring vs. generation)
  oom      a real torch.cuda.OutOfMemoryError through DiffusersBackend._run: most of the free GPU
           memory is taken by a filler tensor, a 2048 px sheet is requested; expects animenb's
           OutOfMemoryError, an empty model cache, the memory given back, then a small run that
           succeeds with the filler still held (CUDA only)
  jobs     bench/job_overhead.py (real Tornado server + papermill warm kernels) as a subprocess

animenb registers its papermill engine itself when the job runner imports it (as well as by entry
point), so a checkout used without being installed (PYTHONPATH) needs no set-up for it; this script
writes a `python3` kernelspec for this interpreter into a temp JUPYTER_PATH dir, inherited by
subprocesses.

On a machine that has torch and transformers but none of animenb's other dependencies, carry
them as cp312 wheels (about 39 MiB: diffusers, papermill, nbclient, nbformat, ipykernel,
jupyter_client, pyzmq, tornado, ipython and their small pure-Python needs, imageio-ffmpeg 0.6.0
for a smaller ffmpeg) in a git-ignored `.whl/`, and run from the checkout:

    python3 -m pip install -q --no-index --no-deps --target /tmp/site .whl/*.whl \\
        && PYTHONPATH=/tmp/site:$PWD python3 bench/gpu_check.py --out $OUT
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
STEPS = ("env", "build", "phases", "finite", "large", "fast", "quality", "oom", "jobs")
PROMPT = "anime girl with blue hair"


class Skip(Exception):
    """Raised by a step that does not apply here (e.g. no CUDA)."""


class Check:
    def __init__(self, args):
        self.args = args
        self.out = Path(args.out or tempfile.mkdtemp(prefix="animenb-gpu-check-out-")).resolve()
        self.out.mkdir(parents=True, exist_ok=True)
        self.t0 = time.perf_counter()
        self.work = Path(tempfile.mkdtemp(prefix="animenb-gpu-check-"))
        self.results: list[dict] = []
        self.summary = {"script": "bench/gpu_check.py", "argv": sys.argv[1:], "budget_seconds": args.budget,
                        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "work_dir": str(self.work),
                        "steps": self.results}
        self.cuda = False
        self.runs: dict[str, dict] = {}      # label -> {"dir", "generate_seconds", ...}

    # ------------------------------------------------------------------ harness
    def elapsed(self) -> float:
        return time.perf_counter() - self.t0

    def remaining(self) -> float:
        return self.args.budget - self.elapsed()

    def step(self, name: str, fn) -> None:
        row: dict = {"step": name}
        if name in self.args.skip:
            row.update(status="SKIP", reason="--skip", seconds=0.0)
        elif self.remaining() <= 0:
            row.update(status="SKIP", reason=f"over the {self.args.budget:.0f} s budget", seconds=0.0)
        else:
            t = time.perf_counter()
            try:
                details = fn() or {}
                row.update(status="FAIL" if details.pop("_failed", None) else "PASS", **details)
            except Skip as exc:
                row.update(status="SKIP", reason=str(exc))
            except BaseException as exc:  # noqa: BLE001 - one step failing must not stop the others
                if isinstance(exc, KeyboardInterrupt):
                    raise
                row.update(status="FAIL", error=f"{type(exc).__name__}: {exc}"[:2000],
                           traceback=traceback.format_exc()[-4000:])
            row["seconds"] = round(time.perf_counter() - t, 3)
        self.results.append(row)
        self.summary["total_seconds"] = round(self.elapsed(), 3)
        self.write()
        why = row.get("reason") or row.get("error") or row.get("problems") or row.get("note") or ""
        if isinstance(why, list):
            why = "; ".join(map(str, why))
        print(f"[gpu_check] {row['status']:<4} {name:<8} {row['seconds']:8.2f} s  {str(why)[:300]}", flush=True)

    def write(self) -> None:
        path = self.out / "gpu_check.json"
        tmp = path.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(self.summary, indent=2, default=str))
        os.replace(tmp, path)

    # ------------------------------------------------------------------ set-up (before animenb imports)
    def setup_environment(self) -> dict:
        """Temp ANIMENB_HOME/OUTPUTS, offline hub, the checkout on PYTHONPATH and a python3 kernelspec."""
        info: dict = {}
        os.environ["ANIMENB_HOME"] = str(self.work / "home")
        os.environ["ANIMENB_OUTPUTS"] = str(self.work / "outputs")
        os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
        paths = [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
        if str(REPO) not in paths:
            paths.append(str(REPO))
        if str(REPO) not in sys.path:
            sys.path.insert(0, str(REPO))
        os.environ["PYTHONPATH"] = os.pathsep.join(paths)
        # A python3 kernelspec for *this* interpreter, first on JUPYTER_PATH (kernels inherit PYTHONPATH).
        spec_root = self.work / "jupyter"
        spec = spec_root / "kernels" / "python3"
        spec.mkdir(parents=True, exist_ok=True)
        (spec / "kernel.json").write_text(json.dumps({
            "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
            "display_name": "Python 3 (gpu_check)", "language": "python", "metadata": {"debugger": False}}))
        os.environ["JUPYTER_PATH"] = os.pathsep.join(
            [str(spec_root)] + [p for p in os.environ.get("JUPYTER_PATH", "").split(os.pathsep) if p])
        info["kernelspec"] = str(spec / "kernel.json")
        info["pythonpath"] = os.environ["PYTHONPATH"]
        return info

    # ------------------------------------------------------------------ 1. env
    def s_env(self) -> dict:
        info = {"python": platform.python_version(), "executable": sys.executable, "cpus": os.cpu_count(),
                "machine": platform.machine(), "setup": self.setup_environment()}
        t = time.perf_counter()
        import torch

        info["import_torch_seconds"] = round(time.perf_counter() - t, 2)
        info["torch"] = torch.__version__
        info["torch_cuda_build"] = torch.version.cuda
        self.cuda = torch.cuda.is_available() and not self.args.cpu
        info["cuda_available"] = torch.cuda.is_available()
        if self.cuda:
            t = time.perf_counter()
            torch.zeros(1, device="cuda")
            torch.cuda.synchronize()
            info["cuda_init_seconds"] = round(time.perf_counter() - t, 2)
            props = torch.cuda.get_device_properties(0)
            free, total = torch.cuda.mem_get_info()
            info.update(device_name=props.name, capability=f"{props.major}.{props.minor}",
                        multiprocessors=props.multi_processor_count, memory_total_gib=round(total / 2**30, 2),
                        memory_free_gib=round(free / 2**30, 2), device_count=torch.cuda.device_count())
            try:
                info["nvidia_smi"] = subprocess.run(
                    ["nvidia-smi", "--query-gpu=name,driver_version,memory.total,memory.used", "--format=csv,noheader"],
                    capture_output=True, text=True, timeout=20).stdout.strip()
            except Exception as exc:  # noqa: BLE001
                info["nvidia_smi"] = f"unavailable ({exc})"
        versions = {}
        for name in ("diffusers", "transformers", "huggingface_hub", "accelerate", "safetensors", "numpy", "PIL",
                     "cv2", "papermill", "nbclient", "ipykernel", "jupyter_client", "tornado", "zmq",
                     "imageio_ffmpeg", "yaml", "pandas", "matplotlib"):
            try:
                module = __import__(name)
                versions[name] = str(getattr(module, "__version__", getattr(module, "version", "?")))
            except Exception as exc:  # noqa: BLE001
                versions[name] = f"MISSING ({type(exc).__name__}: {exc})"[:200]
        info["versions"] = versions
        try:
            import imageio_ffmpeg

            info["ffmpeg"] = imageio_ffmpeg.get_ffmpeg_exe()
            info["ffmpeg_version"] = imageio_ffmpeg.get_ffmpeg_version()
        except Exception as exc:  # noqa: BLE001
            info["ffmpeg"] = f"MISSING ({exc})"
        from animenb.models import resolve_placement
        from animenb.profiles import load_profile

        placement = resolve_placement(load_profile("tiny"))
        info["animenb_placement"] = {"device": placement.device, "dtype": placement.dtype}
        self.placement = placement
        self.summary["device"] = info.get("device_name") or "cpu"
        missing = [k for k, v in versions.items() if str(v).startswith("MISSING")]
        problems = [f"missing: {', '.join(missing)}"] if missing else []
        if self.cuda and (placement.device, placement.dtype) != ("cuda", "float16"):
            problems.append(f"animenb resolved {placement.device}/{placement.dtype}, expected cuda/float16")
        if not self.cuda:
            info["note"] = "no CUDA: CUDA-only checks will SKIP"
        return verdict(info, problems)

    # ------------------------------------------------------------------ 2. build
    def s_build(self) -> dict:
        import diffusers
        import transformers

        from animenb.tiny import ensure_tiny_models

        transformers.utils.logging.disable_progress_bar()   # no "Writing model shards" bars in the log
        diffusers.utils.logging.disable_progress_bar()
        t = time.perf_counter()
        folders = ensure_tiny_models()
        seconds = time.perf_counter() - t
        sizes = {role: sum(f.stat().st_size for f in Path(p).rglob("*") if f.is_file()) for role, p in folders.items()}
        return {"build_seconds": round(seconds, 2), "bytes": sizes, "home": os.environ["ANIMENB_HOME"]}

    # ------------------------------------------------------------------ 3. phases
    def _sync(self):
        if self.cuda:
            import torch

            torch.cuda.synchronize()

    def _run_chain(self, label: str, size: int, steps: int, seed: int) -> dict:
        """character_sheet -> animation_loop -> full_video; returns per-phase timings + checks."""
        import torch

        from animenb.phases import animation_loop, character_sheet, full_video

        common = dict(models="tiny", steps=steps, width=size, height=size, display=None, seed=seed)
        base = self.work / "runs" / label
        rows = {}
        calls = (
            ("sheet", lambda: character_sheet(PROMPT, output_dir=base / "sheet", **common)),
            ("loop", lambda: animation_loop(PROMPT, reference_image=base / "sheet", output_dir=base / "loop",
                                            **common)),
            ("video", lambda: full_video(PROMPT, image=base / "loop", output_dir=base / "video",
                                         frames=self.args.video_frames, **common)),
        )
        for name, call in calls:
            if self.cuda:
                torch.cuda.reset_peak_memory_stats()
            self._sync()
            t = time.perf_counter()
            try:
                result = call()
                self._sync()
            except Exception as exc:  # noqa: BLE001
                rows[name] = {"ok": False, "error": f"{type(exc).__name__}: {exc}"[:1000],
                              "traceback": traceback.format_exc()[-2500:]}
                continue
            wall = time.perf_counter() - t
            timings = result.manifest.get("timings", {})
            gen = float(timings.get("generate_seconds") or wall)
            denoise_steps = steps * (8 if name == "sheet" else 1)
            row = {"ok": True, "wall_seconds": round(wall, 3), "generate_seconds": round(gen, 3),
                   "seconds_per_step": round(gen / denoise_steps, 4), "timings": timings,
                   "dir": str(result.output_dir)}
            if self.cuda:
                row["peak_gib"] = round(torch.cuda.max_memory_allocated() / 2**30, 3)
            row.update(check_outputs(result, self.placement, self.cuda))
            if row["problems"]:
                row["ok"] = False
            rows[name] = row
            self.runs[f"{label}/{name}"] = row
        return rows

    def _phases_at(self, size: int, steps: int, tag: str) -> dict:
        out: dict = {"size": size, "steps": steps, "video_frames": self.args.video_frames}
        problems = []
        for attempt in ("cold", "warm"):
            if attempt == "warm" and self.remaining() < 0:
                out["warm"] = "skipped: over budget"
                break
            rows = self._run_chain(f"{tag}-{attempt}", size, steps, seed=7)
            out[attempt] = rows
            for name, row in rows.items():
                if not row.get("ok"):
                    problems.append(f"{attempt} {name}: {row.get('error') or row.get('problems')}")
        out["summary"] = {
            attempt: {name: {k: r.get(k) for k in ("wall_seconds", "generate_seconds", "seconds_per_step",
                                                   "peak_gib", "device", "dtype")}
                      for name, r in out[attempt].items()}
            for attempt in ("cold", "warm") if isinstance(out.get(attempt), dict)}
        return verdict(out, problems)

    def s_phases(self) -> dict:
        out = self._phases_at(self.args.size, self.args.steps, "small")
        from animenb.models import cache_info

        out["cache"] = cache_info()
        return out

    # ------------------------------------------------------------------ 3b. finite
    def s_finite(self) -> dict:
        import numpy as np
        import torch
        from PIL import Image

        from animenb.models import pipeline
        from animenb.poses import builtin_skeletons
        from animenb.profiles import load_profile

        profile = load_profile("tiny")
        size, n = self.args.size, 2
        gen = lambda: torch.Generator("cpu").manual_seed(3)  # noqa: E731
        neutral = Image.new("RGB", (224, 224), (127, 127, 127))
        checks = {}
        sd = pipeline("sd", profile, self.placement)
        sd.set_ip_adapter_scale(0.0)
        checks["sd"] = sd(prompt=PROMPT, width=size, height=size, num_inference_steps=n, generator=gen(),
                          ip_adapter_image=neutral, output_type="np").images
        ad = pipeline("animatediff", profile, self.placement)
        ad.set_ip_adapter_scale(0.0)
        checks["animatediff"] = ad(prompt=PROMPT, num_frames=8, width=size, height=size, num_inference_steps=n,
                                   generator=gen(), ip_adapter_image=neutral, output_type="np").frames
        # The sheet's pose control: SD + ControlNet built from the warm SD pipeline (IP-Adapter kept).
        controlled = pipeline("sd_controlnet", profile, self.placement)
        controlled.set_ip_adapter_scale(0.0)
        skeleton = builtin_skeletons(["front"], size, size)[0]
        checks["sd_controlnet"] = controlled(prompt=PROMPT, image=skeleton, width=size, height=size,
                                             num_inference_steps=n, generator=gen(), ip_adapter_image=neutral,
                                             output_type="np").images
        svd = pipeline("svd", profile, self.placement)
        checks["svd"] = svd(image=Image.new("RGB", (size, size), (200, 120, 90)), width=size, height=size,
                            num_frames=4, num_inference_steps=n, decode_chunk_size=8, generator=gen(),
                            output_type="np").frames
        out, problems = {}, []
        for kind, arr in checks.items():
            arr = np.asarray(arr, dtype=np.float32)
            finite = bool(np.isfinite(arr).all())
            stats = {"shape": list(arr.shape), "finite": finite, "nan": int(np.isnan(arr).sum()),
                     "min": float(np.nanmin(arr)), "max": float(np.nanmax(arr)), "std": float(np.nanstd(arr))}
            pipe = {"sd": sd, "animatediff": ad, "sd_controlnet": controlled, "svd": svd}[kind]
            param = next(pipe.unet.parameters())
            stats["unet_param"] = f"{param.device}/{str(param.dtype).replace('torch.', '')}"
            vae = next(pipe.vae.parameters())
            stats["vae_param"] = f"{vae.device}/{str(vae.dtype).replace('torch.', '')}"
            if kind == "sd_controlnet":
                control = next(pipe.controlnet.parameters())
                stats["controlnet_param"] = f"{control.device}/{str(control.dtype).replace('torch.', '')}"
                if self.cuda and not stats["controlnet_param"].startswith("cuda"):
                    problems.append(f"{kind}: controlnet on {stats['controlnet_param']}")
            out[kind] = stats
            if not finite or stats["std"] == 0.0:
                problems.append(f"{kind}: finite={finite} std={stats['std']:.4g}")
            if self.cuda and not stats["unet_param"].startswith("cuda"):
                problems.append(f"{kind}: unet on {stats['unet_param']}")
        return verdict(out, problems)

    # ------------------------------------------------------------------ 4b. fast paths
    FAST_VARIANTS = (  # (label, fast_paths YAML lines); "defaults" first: every other row is compared to it
        ("defaults", ""),
        ("attention=eager", "attention: eager"),
        ("channels_last=false", "channels_last: false"),
        ("channels_last=true", "channels_last: true"),
        ("vae_slicing=false", "vae_slicing: false"),
        ("vae_tiling=true", "vae_tiling: true"),
        ("decode_chunk_size=2", "decode_chunk_size: 2"),
        ("decode_chunk_size=16", "decode_chunk_size: 16"),
        ("compile_unet=true", "compile_unet: true"),
        ("cpu_offload=true", "cpu_offload: true"),
    )

    def _fast_profile(self, label: str, lines: str):
        from animenb.profiles import load_profile

        text = (REPO / "parameters" / "models" / "tiny.yaml").read_text()
        name = "fast-" + label.replace("=", "-").replace("_", "-")
        path = self.work / "profiles" / f"{name}.yaml"
        path.parent.mkdir(parents=True, exist_ok=True)
        body = "\n".join(l for l in text.splitlines() if not l.startswith("name:"))
        path.write_text(f"name: {name}\n{body}\n" + (f"fast_paths:\n  {lines}\n" if lines else ""))
        return load_profile(path)

    def s_fast(self) -> dict:
        if not self.cuda and not self.args.cpu_large:
            raise Skip("no CUDA (pass --cpu-large to run it anyway)")
        import torch
        from PIL import Image

        from animenb.backends import ImageRequest, ImageToVideoRequest, VideoRequest
        from animenb.backends.diffusers_backend import DiffusersBackend
        from animenb.models import cache_info, clear_cache, pipeline

        size, steps = self.args.large_size, self.args.fast_steps
        calls = {
            "sd": lambda b: b.text_to_image(ImageRequest(prompt=PROMPT, width=size, height=size, steps=steps, seed=3)),
            "animatediff": lambda b: b.text_to_video(VideoRequest(prompt=PROMPT, width=size, height=size,
                                                                  steps=steps, seed=3, frames=16)),
            "svd": lambda b: b.image_to_video(ImageToVideoRequest(image=Image.new("RGB", (size, size), (90, 120, 200)),
                                                                  width=size, height=size, steps=steps, seed=3,
                                                                  frames=self.args.video_frames)),
        }
        rows, problems = {}, []
        for label, lines in self.FAST_VARIANTS:
            if self.remaining() < 0:
                rows[label] = "skipped: over budget"
                continue
            if not self.cuda and label.startswith(("compile_unet", "cpu_offload")):
                rows[label] = "skipped: CUDA only"
                continue
            clear_cache()
            row = {}
            try:
                backend = DiffusersBackend(self._fast_profile(label, lines))
                for kind, call in calls.items():
                    call(backend)  # first call: load (and compile), not timed
                    if self.cuda:
                        torch.cuda.reset_peak_memory_stats()
                    self._sync()
                    t = time.perf_counter()
                    call(backend)
                    self._sync()
                    seconds = time.perf_counter() - t
                    row[kind] = {"steps_per_s": round(steps / seconds, 2), "seconds": round(seconds, 3)}
                    if self.cuda:
                        row[kind]["peak_gib"] = round(torch.cuda.max_memory_allocated() / 2**30, 3)
            except Exception as exc:  # noqa: BLE001 - one variant failing must not hide the others
                row["error"] = f"{type(exc).__name__}: {exc}"[:500]
                problems.append(f"{label}: {row['error']}")
            rows[label] = row
        base = rows.get("defaults") or {}
        for label, row in rows.items():
            if isinstance(row, dict) and label != "defaults":
                for kind, figures in row.items():
                    if kind in base and isinstance(figures, dict) and "steps_per_s" in figures:
                        figures["vs_defaults"] = round(figures["steps_per_s"] / base[kind]["steps_per_s"], 3)
        # All three pipelines at once (defaults): allocated memory vs. the sum of each one's parameters.
        clear_cache()
        profile = self._fast_profile("defaults", "")
        before = torch.cuda.memory_allocated() if self.cuda else 0
        for kind in ("sd", "animatediff", "svd"):
            pipeline(kind, profile)
        loaded = {"pipelines": cache_info()}
        separate = sum(p["bytes"] for p in loaded["pipelines"])
        if self.cuda:
            together = torch.cuda.memory_allocated() - before
            loaded.update(together_gib=round(together / 2**30, 3), separate_gib=round(separate / 2**30, 3),
                          ratio=round(together / max(separate, 1), 3))
        clear_cache()
        out = {"size": size, "steps": steps, "variants": rows, "all_loaded": loaded}
        return verdict(out, problems)

    # ------------------------------------------------------------------ 4. large
    def s_large(self) -> dict:
        if not self.cuda and not self.args.cpu_large:
            raise Skip("no CUDA (pass --cpu-large to run it anyway)")
        if self.args.large_size <= 0:
            raise Skip("--large-size 0")
        return self._phases_at(self.args.large_size, self.args.large_steps, "large")

    # ------------------------------------------------------------------ 5. quality
    def s_quality(self) -> dict:
        from animenb.quality import score_output_dir

        if not self.runs:
            raise Skip("no phase outputs to score")
        rows, problems = {}, []
        for label, run in self.runs.items():
            if not run.get("dir"):
                continue
            try:
                for embed in ("auto", None):
                    key = "score_seconds" if embed == "auto" else "score_seconds_no_embed"
                    t = time.perf_counter()
                    report = score_output_dir(run["dir"], embed=embed)
                    seconds = time.perf_counter() - t
                    rows.setdefault(label, {}).update({key: round(seconds, 3)})
                    if embed == "auto":
                        rows[label].update(score=round(report.score, 4), passed=report.passed,
                                           metrics={k: round(v, 4) for k, v in report.metrics.items()})
                gen = run["generate_seconds"]
                rows[label]["generate_seconds"] = gen
                rows[label]["score_over_generate_percent"] = round(100 * rows[label]["score_seconds"] / gen, 1)
            except Exception as exc:  # noqa: BLE001
                problems.append(f"{label}: {type(exc).__name__}: {exc}"[:500])
        out: dict = {"runs": rows}
        # bench/quality_cost.py with this device's measured generation seconds (largest size, warm run)
        gens = {}
        for tag in ("large-warm", "large-cold", "small-warm", "small-cold"):
            for phase, name in ((1, "sheet"), (2, "loop"), (3, "video")):
                run = self.runs.get(f"{tag}/{name}")
                if phase not in gens and run and run.get("generate_seconds"):
                    gens[phase] = run["generate_seconds"]
        if gens and "quality_cost" not in self.args.skip and self.remaining() > 20:
            arg = ",".join(f"{k}={v:.3f}" for k, v in sorted(gens.items()))
            cmd = [sys.executable, str(REPO / "bench" / "quality_cost.py"), "--repeats", "1", "--no-generate",
                   "--generation-seconds", arg]
            res = run_logged(cmd, self.out / "quality_cost.txt", timeout=min(120, max(20, self.remaining())))
            out["quality_cost"] = res
            if res["rc"] != 0:
                problems.append(f"quality_cost.py rc={res['rc']}")
        return verdict(out, problems)

    # ------------------------------------------------------------------ 6. oom
    def s_oom(self) -> dict:
        if not self.cuda:
            raise Skip("no CUDA")
        import gc

        import torch

        from animenb.backends import OutOfMemoryError
        from animenb.models import cache_info, clear_cache, pipeline
        from animenb.phases import character_sheet
        from animenb.profiles import load_profile

        gib = lambda b: round(b / 2**30, 3)  # noqa: E731
        profile = load_profile("tiny")
        pipeline("sd", profile, self.placement)          # make sure something is cached
        before_cache = cache_info()
        gc.collect()
        torch.cuda.empty_cache()
        out: dict = {"cache_before": before_cache,
                     "allocated_before_gib": gib(torch.cuda.memory_allocated())}
        filler = None
        headroom = self.args.oom_headroom_mib * 2**20
        free, total = torch.cuda.mem_get_info()
        want = free - headroom
        for _ in range(8):                                # take nearly all free memory, leave `headroom`
            try:
                filler = torch.empty(want, dtype=torch.uint8, device="cuda")
                break
            except torch.OutOfMemoryError:
                want -= 256 * 2**20
        if filler is None:
            raise RuntimeError("could not allocate the filler tensor")
        filler_bytes = filler.numel()
        out["filler_gib"] = gib(filler_bytes)
        out["free_after_filler_gib"] = gib(torch.cuda.mem_get_info()[0])
        problems = []
        try:
            caught = None
            t = time.perf_counter()
            try:
                character_sheet(PROMPT, models="tiny", steps=2, width=self.args.oom_size, height=self.args.oom_size,
                                seed=1, display=None, output_dir=self.work / "runs" / "oom")
            except OutOfMemoryError as exc:
                caught = exc
                out["raised"] = f"{type(exc).__module__}.{type(exc).__name__}: {str(exc)[:300]}"
                out["cause"] = f"{type(exc.__cause__).__module__}.{type(exc.__cause__).__name__}"
                out["allocated_in_handler_gib"] = gib(torch.cuda.memory_allocated() - filler_bytes)
            except Exception as exc:  # noqa: BLE001
                out["raised"] = f"{type(exc).__module__}.{type(exc).__name__}: {str(exc)[:300]}"
                problems.append(f"expected animenb OutOfMemoryError, got {type(exc).__name__}")
            else:
                problems.append(f"no error at {self.args.oom_size}px with {self.args.oom_headroom_mib} MiB free")
            out["oom_seconds"] = round(time.perf_counter() - t, 3)
            del caught
            out["cache_after"] = cache_info()
            if out["cache_after"]:
                problems.append("model cache not empty after the OOM")
            gc.collect()
            out["allocated_after_gib"] = gib(torch.cuda.memory_allocated() - filler_bytes)
            out["reserved_after_gib"] = gib(torch.cuda.memory_reserved() - filler_bytes)
            if out["allocated_after_gib"] > out["allocated_before_gib"] + 0.0625:
                problems.append(f"memory not given back: {out['allocated_after_gib']} GiB allocated after the OOM "
                                f"vs {out['allocated_before_gib']} GiB before (filler excluded)")
            # the next small run, with the filler still held: only the freed memory is there for it
            t = time.perf_counter()
            try:
                result = character_sheet(PROMPT, models="tiny", steps=2, width=64, height=64, seed=1, display=None,
                                         output_dir=self.work / "runs" / "after-oom")
                out["small_run_after_oom"] = {"ok": True, "seconds": round(time.perf_counter() - t, 3),
                                              "device": result.manifest["backend"].get("device")}
            except Exception as exc:  # noqa: BLE001
                out["small_run_after_oom"] = {"ok": False, "error": f"{type(exc).__name__}: {exc}"[:500]}
                problems.append("small run after the OOM failed (filler held)")
        finally:
            del filler
            gc.collect()
            torch.cuda.empty_cache()
        if not out.get("small_run_after_oom", {}).get("ok"):
            try:  # does it work once the filler is gone?
                character_sheet(PROMPT, models="tiny", steps=2, width=64, height=64, seed=1, display=None,
                                output_dir=self.work / "runs" / "after-oom-2")
                out["small_run_without_filler"] = "ok"
            except Exception as exc:  # noqa: BLE001
                out["small_run_without_filler"] = f"{type(exc).__name__}: {exc}"[:300]
        out["allocated_end_gib"] = gib(torch.cuda.memory_allocated())
        clear_cache()
        return verdict(out, problems)

    # ------------------------------------------------------------------ 7. jobs
    def s_jobs(self) -> dict:
        from animenb.models import clear_cache

        clear_cache()                                     # leave the GPU to the server's kernels
        timeout = min(self.args.job_timeout, max(30.0, self.remaining() + 30))
        cmd = [sys.executable, str(REPO / "bench" / "job_overhead.py"), "--jobs", str(self.args.jobs),
               "--threads", str(self.args.job_threads), "--breakdown"]
        if self.args.job_skip:
            cmd += ["--skip", self.args.job_skip]
        res = run_logged(cmd, self.out / "job_overhead.txt", timeout=timeout)
        out = {"command": " ".join(cmd[1:]), **res}
        lines = res.get("tail", "").splitlines()
        out["figures"] = [ln for ln in lines if ln.strip().startswith(("warm", "cold", "direct", "job overhead", "mode",
                                                                       "target", "  warm"))][:12]
        return verdict(out, [f"job_overhead.py rc={res['rc']}"] if res["rc"] != 0 else [])

    # ------------------------------------------------------------------ main
    def run(self) -> int:
        for name in STEPS:
            if name == "env":
                self.step("env", self.s_env)
                if not any(r["step"] == "env" and r["status"] == "PASS" for r in self.results) \
                        and not hasattr(self, "placement"):
                    for rest in STEPS[1:]:
                        self.results.append({"step": rest, "status": "SKIP", "reason": "env failed", "seconds": 0})
                    break
                continue
            self.step(name, getattr(self, f"s_{name}"))
        self.copy_samples()
        try:
            self.summary["key_figures"] = self.key_figures()
            print("[gpu_check] key figures:\n" + json.dumps(self.summary["key_figures"], indent=1, default=str),
                  flush=True)
        except Exception as exc:  # noqa: BLE001
            print(f"[gpu_check] key figures failed: {exc}", flush=True)
        self.summary["total_seconds"] = round(self.elapsed(), 3)
        counts = {s: sum(r["status"] == s for r in self.results) for s in ("PASS", "FAIL", "SKIP")}
        self.summary["counts"] = counts
        self.write()
        print(f"[gpu_check] done in {self.elapsed():.1f} s on {self.summary.get('device')}: "
              f"{counts['PASS']} passed, {counts['FAIL']} failed, {counts['SKIP']} skipped -> "
              f"{self.out / 'gpu_check.json'}", flush=True)
        if not self.args.keep:
            shutil.rmtree(self.work, ignore_errors=True)
        return 1 if counts["FAIL"] else 0

    def key_figures(self) -> dict:
        """The few numbers worth reading first, pulled from the step results."""
        steps = {r["step"]: r for r in self.results}
        fig: dict = {"device": self.summary.get("device"),
                     "status": {r["step"]: r["status"] for r in self.results}}
        env = steps.get("env", {})
        fig["torch"] = env.get("torch")
        fig["placement"] = env.get("animenb_placement")
        for step in ("phases", "large"):
            summary = steps.get(step, {}).get("summary")
            if summary:
                size = steps[step].get("size")
                fig[f"{step}_{size}px"] = {
                    attempt: {name: f"{r.get('generate_seconds')} s gen, {r.get('seconds_per_step')} s/step, "
                                    f"{r.get('wall_seconds')} s wall, peak {r.get('peak_gib')} GiB"
                              for name, r in rows.items()}
                    for attempt, rows in summary.items()}
        fast = steps.get("fast", {})
        if fast.get("variants"):
            fig[f"fast_paths_{fast.get('size')}px"] = {
                label: ({kind: f"{f.get('steps_per_s')} steps/s" + (f" ({f['vs_defaults']}x)" if "vs_defaults" in f else "")
                         + (f", peak {f['peak_gib']} GiB" if "peak_gib" in f else "")
                         for kind, f in row.items() if isinstance(f, dict)} if isinstance(row, dict) else row)
                for label, row in fast["variants"].items()}
            fig["all_three_loaded"] = {k: v for k, v in (fast.get("all_loaded") or {}).items() if k != "pipelines"}
        runs = steps.get("quality", {}).get("runs") or {}
        if runs:
            fig["quality_percent_of_generation"] = {k: v.get("score_over_generate_percent") for k, v in runs.items()}
        oom = steps.get("oom", {})
        if oom.get("status") in ("PASS", "FAIL"):
            fig["oom"] = {k: oom.get(k) for k in ("raised", "cause", "allocated_before_gib", "allocated_in_handler_gib",
                                                  "allocated_after_gib", "cache_after", "small_run_after_oom",
                                                  "problems")}
        jobs = steps.get("jobs", {})
        if jobs.get("figures"):
            fig["jobs"] = jobs["figures"]
        return fig

    def copy_samples(self) -> None:
        """A sheet and a loop GIF from the largest run, for a look (≤ 8 files come back from $OUT)."""
        for tag in ("large-warm", "large-cold", "small-warm", "small-cold"):
            sheet, loop = self.runs.get(f"{tag}/sheet"), self.runs.get(f"{tag}/loop")
            if sheet or loop:
                try:
                    if sheet and sheet.get("dir"):
                        shutil.copy(Path(sheet["dir"]) / "sheet.png", self.out / "sample_sheet.png")
                    if loop and loop.get("dir"):
                        shutil.copy(Path(loop["dir"]) / "loop.gif", self.out / "sample_loop.gif")
                except OSError:
                    pass
                return


# ---------------------------------------------------------------------- helpers
def verdict(out: dict, problems: list[str]) -> dict:
    """A step's details, marked failed (`Check.step` reads `_failed`) when it found problems."""
    if problems:
        out["problems"] = problems
        out["_failed"] = True
    return out


def check_outputs(result, placement, cuda: bool) -> dict:
    """Files exist, PNGs decode with varied, finite, not-black pixels; manifest device/dtype."""
    import numpy as np
    from PIL import Image

    out_dir = result.output_dir
    manifest = json.loads((out_dir / "manifest.json").read_text())
    backend = manifest.get("backend") or {}
    problems = []
    files = manifest.get("files") or []
    missing = [f["path"] for f in files if not (out_dir / f["path"]).is_file()]
    if missing:
        problems.append(f"missing files: {missing[:5]}")
    pngs = [f["path"] for f in files if f["path"].endswith(".png")]
    drawn_on_black = {f["path"] for f in files if f.get("kind") in ("skeleton", "skeletons")}  # OpenPose's own
    flat, black, worst_black = [], [], 0.0
    for rel in pngs:
        with Image.open(out_dir / rel) as im:
            arr = np.asarray(im.convert("RGB"), dtype=np.float32)
        if not np.isfinite(arr).all() or arr.std() == 0.0:
            flat.append(rel)
        if rel in drawn_on_black:
            continue
        frac_black = float((arr.max(axis=2) == 0).mean())
        worst_black = max(worst_black, frac_black)
        if frac_black > 0.5:
            black.append(rel)
    if flat:
        problems.append(f"{len(flat)} flat images, e.g. {flat[:3]}")
    if black:
        problems.append(f"{len(black)} images mostly black (fp16 NaN?), e.g. {black[:3]}")
    device, dtype = backend.get("device"), backend.get("dtype")
    if (device, dtype) != (placement.device, placement.dtype):
        problems.append(f"manifest says {device}/{dtype}, resolved {placement.device}/{placement.dtype}")
    if cuda and (not str(device).startswith("cuda") or dtype != "float16"):
        problems.append(f"manifest says {device}/{dtype}, expected cuda/float16")
    media = {}
    outputs = manifest.get("outputs") or {}
    try:
        from animenb.media import video_frames_and_seconds

        if "mp4" in outputs:
            frames, seconds = video_frames_and_seconds(out_dir / outputs["mp4"])
            media["mp4"] = [frames, round(seconds, 3)]
            if outputs.get("duration_seconds") and abs(seconds - outputs["duration_seconds"]) > 0.05:
                problems.append(f"mp4 lasts {seconds} s, manifest says {outputs['duration_seconds']}")
    except Exception as exc:  # noqa: BLE001
        problems.append(f"mp4 check: {type(exc).__name__}: {exc}"[:300])
    return {"device": device, "dtype": dtype, "files": len(files), "pngs": len(pngs),
            "worst_black_fraction": round(worst_black, 4), "media": media, "problems": problems}


def run_logged(cmd: list[str], log: Path, timeout: float) -> dict:
    """Run `cmd` in the repo with a timeout, whole output to `log`, last lines returned."""
    t = time.perf_counter()
    with open(log, "w") as f:
        f.write("$ " + " ".join(cmd) + "\n")
        f.flush()
        proc = subprocess.Popen(cmd, cwd=REPO, stdout=f, stderr=subprocess.STDOUT, env=os.environ.copy(),
                                start_new_session=True)
        try:
            rc = proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            import signal

            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            proc.wait()
            rc = "timeout"
    text = log.read_text(errors="replace")
    tail = "\n".join(text.splitlines()[-40:])
    print(tail, flush=True)
    return {"rc": rc, "seconds": round(time.perf_counter() - t, 2), "timeout": round(timeout, 1), "tail": tail}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=None, help="folder for gpu_check.json and logs (e.g. $OUT; default a temp dir)")
    ap.add_argument("--budget", type=float, default=270.0, help="seconds; steps that would start later are skipped")
    ap.add_argument("--skip", default="", help=f"comma list of steps: {','.join(STEPS)} (and quality_cost)")
    ap.add_argument("--size", type=int, default=64, help="small run size (px)")
    ap.add_argument("--steps", type=int, default=15, help="small run steps")
    ap.add_argument("--video-frames", type=int, default=25, help="SVD frames")
    ap.add_argument("--large-size", type=int, default=512)
    ap.add_argument("--large-steps", type=int, default=15)
    ap.add_argument("--cpu-large", action="store_true", help="run the large and fast steps without CUDA too")
    ap.add_argument("--fast-steps", type=int, default=10, help="denoising steps per fast-path measurement")
    ap.add_argument("--cpu", action="store_true", help="treat CUDA as absent (animenb's placement still decides)")
    ap.add_argument("--oom-size", type=int, default=2048, help="sheet size requested with the memory filled")
    ap.add_argument("--oom-headroom-mib", type=int, default=192, help="free memory left beside the filler")
    ap.add_argument("--jobs", type=int, default=10, help="job_overhead.py --jobs")
    ap.add_argument("--job-skip", default="quality,cold", help="job_overhead.py --skip")
    ap.add_argument("--job-threads", type=int, default=1, help="job_overhead.py --threads")
    ap.add_argument("--job-timeout", type=float, default=150.0)
    ap.add_argument("--keep", action="store_true", help="keep the temp work dir")
    args = ap.parse_args()
    args.skip = set(filter(None, args.skip.split(",")))
    unknown = args.skip - set(STEPS) - {"quality_cost"}
    if unknown:
        ap.error(f"unknown steps in --skip: {', '.join(sorted(unknown))}")
    return Check(args).run()


if __name__ == "__main__":
    sys.exit(main())
