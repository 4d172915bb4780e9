"""Regenerate the small test notebooks of the job service: `python tests/notebooks/make_test_notebooks.py`."""
from pathlib import Path

import nbformat
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

HERE = Path(__file__).parent
META = {"kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"},
        "language_info": {"name": "python"}}
PARAMS = '''prompt = "test"
seed = 0
steps = 5
width = 64
height = 64
output_dir = ""
delay = 0.02
models = ""
backend = ""'''


def write(name, cells):
    nb = new_notebook(metadata=META)
    for i, cell in enumerate(cells):
        if cell is PARAMS:
            nb.cells.append(new_code_cell(cell, metadata={"tags": ["parameters"]}))
        elif cell.startswith("#md "):
            nb.cells.append(new_markdown_cell(cell[4:]))
        else:
            nb.cells.append(new_code_cell(cell))
        nb.cells[-1]["id"] = f"cell-{i}"
    nbformat.write(nb, HERE / f"{name}.ipynb")


DELAY = "delay = float(prompt.split()[1]) if len(prompt.split()) > 1 else delay  # 'test:<name> <delay>'\n"

write("progress", ["#md Per-step progress display data, one PNG and a manifest.", PARAMS,
DELAY + '''import time
from pathlib import Path
from animenb.progress import ProgressReporter
assert "leaked_by_previous_job" not in globals(), "namespace was not reset between jobs"
leaked_by_previous_job = True
out = Path(output_dir)
out.mkdir(parents=True, exist_ok=True)''',
'''reporter = ProgressReporter("TEST", total_steps=steps, stage_count=1, display="kernel")
reporter.start_stage("denoise")
for _ in range(steps):
    time.sleep(delay)
    reporter.on_step()
reporter.finish()''',
'''from PIL import Image
from animenb.manifest import file_entry, write_manifest
Image.new("RGB", (width, height), (seed % 256, 80, 160)).save(out / "image.png")
write_manifest(out, {"phase": {"id": 1, "name": "TEST"}, "parameters": {"prompt": prompt, "steps": steps},
                     "seed": seed, "outputs": {"image": "image.png"},
                     "files": [file_entry(out, out / "image.png", "image")]})
print("wrote", out)'''])

write("previews", ["#md Steps faster than the kernel's progress rate limit: each preview comes right after a "
                   "shown event, so it is one the rate limit skips.", PARAMS,
DELAY + '''import time
from animenb.progress import ProgressReporter
PREVIEW = "data:image/png;base64,iVBORw0KGgo="
reporter = ProgressReporter("TEST", total_steps=steps, stage_count=1, display="kernel")
reporter.start_stage("denoise")
for step in range(1, steps + 1):
    if step % 2:
        time.sleep(delay)  # longer than the rate limit: this event is shown
        reporter.on_step()
    else:
        reporter.on_step(preview=PREVIEW)  # at once: within the rate limit of the one shown
reporter.finish()'''])

write("crash", ["#md The kernel process exits in the middle of a job.", PARAMS,
'''import os, time
from animenb.progress import ProgressReporter
reporter = ProgressReporter("TEST", total_steps=steps, display="kernel")
reporter.start_stage("about to die")
reporter.on_step()
time.sleep(0.05)''',
"os._exit(1)"])

write("sleep", ["#md A long job made of short sleeps, for cancellation.", PARAMS,
DELAY + '''import time
from animenb.progress import ProgressReporter
reporter = ProgressReporter("TEST", total_steps=max(1, int(steps)), display="kernel")
reporter.start_stage("sleeping")
for _ in range(max(1, int(steps))):
    time.sleep(delay)
    reporter.on_step()''',
"print('finished sleeping')"])

write("stubborn", ["#md A job whose cell swallows interrupts: cancel must end its kernel.", PARAMS,
DELAY + '''import time
from animenb.progress import ProgressReporter
reporter = ProgressReporter("TEST", total_steps=max(1, int(steps)), display="kernel")
reporter.start_stage("ignoring interrupts")
for _ in range(max(1, int(steps))):
    try:
        time.sleep(delay)
    except KeyboardInterrupt:
        pass
    reporter.on_step()'''])

write("error", ["#md An ordinary Python error.", PARAMS, 'raise ValueError("bad things in cell 2")'])

write("echo", ["#md Writes its parameters back, to check what reached the kernel.", PARAMS,
'''import json
from pathlib import Path
from animenb.manifest import file_entry, write_manifest
out = Path(output_dir)
out.mkdir(parents=True, exist_ok=True)
(out / "params.json").write_text(json.dumps({"prompt": prompt, "seed": seed, "steps": steps}))
write_manifest(out, {"seed": seed, "files": [file_entry(out, out / "params.json", "data")]})'''])

write("oom", ["#md The real diffusers-backend OOM path: a cached pipeline, then torch.OutOfMemoryError in a call.",
              PARAMS,
'''from types import SimpleNamespace
import torch
from animenb import models
from animenb.backends.diffusers_backend import DiffusersBackend
models._CACHE[("test", "oom", "", "cpu", "float32", None)] = SimpleNamespace(components={})  # a loaded "pipeline"
assert models.cache_info()''',
'''def allocate():
    raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")
# DiffusersBackend._run with a stand-in `self` (only its placement is read): frees the cache, re-raises.
DiffusersBackend._run(SimpleNamespace(placement=SimpleNamespace(device="cuda:0")), allocate)'''])

write("cacheinfo", ["#md Writes the kernel's model cache (animenb.models.cache_info()) to the output directory.",
                    PARAMS,
'''import json, sys
from pathlib import Path
from animenb.manifest import file_entry, write_manifest
out = Path(output_dir)
out.mkdir(parents=True, exist_ok=True)
info = sys.modules["animenb.models"].cache_info() if "animenb.models" in sys.modules else []
(out / "cache.json").write_text(json.dumps(info))
write_manifest(out, {"seed": seed, "files": [file_entry(out, out / "cache.json", "data")]})'''])

write("fill", ["#md Writes until the disk is full ('test:fill' on a small filesystem), or raises ENOSPC itself "
               "past a quota in bytes ('test:fill <quota>').", PARAMS,
'''import errno, os
from pathlib import Path
parts = prompt.split()
quota = int(parts[1]) if len(parts) > 1 else None
out = Path(output_dir)
out.mkdir(parents=True, exist_ok=True)
written = 0
with open(out / "big.bin", "wb") as f:
    while True:
        if quota is not None and written >= quota:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(out / "big.bin"))
        f.write(b"\\0" * 65536)
        f.flush()
        os.fsync(f.fileno())
        written += 65536'''])
