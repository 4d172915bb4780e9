"""One parameter spec per phase (animenb.phases.spec): the notebooks, parameters/*.yaml and the phase functions
hold to it, and every boundary of every rule gets the same answer through POST /generate and the phase function."""
from __future__ import annotations

import ast
import inspect
import json
from pathlib import Path

import nbformat
import pytest
import pytest_asyncio
import yaml

from animenb import config
from animenb.phases import PHASE_FUNCTIONS, get_phase
from animenb.phases.spec import SPECS, SpecError, phase_spec
from serverkit import call, submit, wait_done

REPO = Path(__file__).resolve().parent.parent
API = "/api/anime"
aio = pytest.mark.asyncio(loop_scope="module")
SHARED = ("prompt", "negative_prompt", "seed", "steps", "width", "height", "guidance_scale", "scheduler", "models",
          "backend", "comfyui_url", "output_dir")


def notebook_parameters(phase) -> dict:
    nb = nbformat.read(config.notebooks_dir() / phase.notebook, as_version=4)
    cells = [c for c in nb.cells if "parameters" in c.metadata.get("tags", [])]
    assert len(cells) == 1
    return {node.targets[0].id: ast.literal_eval(node.value) for node in ast.parse(cells[0].source).body}


def test_a_phases_model_family_is_published_as_engine():
    """`Phase.model_family` keeps its published name in GET /phases (and the contract): "engine"."""
    phases = [get_phase(i) for i in (1, 2, 3)]
    assert [p.model_family for p in phases] == ["IPAdapter", "AnimateDiff", "SVD"]
    assert [p.as_dict()["engine"] for p in phases] == [p.model_family for p in phases]
    assert all("model_family" not in p.as_dict() for p in phases)


@pytest.mark.parametrize("phase_id", sorted(SPECS))
def test_notebook_and_yaml_hold_to_the_spec(phase_id):
    spec, phase = phase_spec(phase_id), get_phase(phase_id)
    shown = {p.name: p.example if p.example is not None else p.default for p in spec.params}
    declared = notebook_parameters(phase)
    assert list(declared) and set(declared) == set(spec.names)
    assert declared == shown
    from_yaml = yaml.safe_load((REPO / "parameters" / phase.parameters_file).read_text())
    assert set(from_yaml) <= set(spec.names)
    assert from_yaml == {name: shown[name] for name in from_yaml}
    spec.check(declared)  # the notebook's own values pass


@pytest.mark.parametrize("phase_id", sorted(SPECS))
def test_phase_functions_take_the_spec_defaults(phase_id):
    spec, function = phase_spec(phase_id), PHASE_FUNCTIONS[get_phase(phase_id).name]
    signature = inspect.signature(function).parameters
    for param in spec.params:
        if param.name == "comfyui_url":  # the functions take backend_options={"url": ...}
            assert "backend_options" in signature
            continue
        default = signature[param.name].default
        if param.name in ("models", "output_dir"):
            assert default is None and param.default == ""  # None and "" both mean "the default"
        elif param.required:
            assert default is inspect.Parameter.empty
        else:
            assert default == param.default, param.name


def test_shared_parameters_have_one_range_in_every_phase():
    def rule(param):
        return {k: v for k, v in param.as_dict().items() if k not in ("default", "description", "example", "required",
                                                                       "blank")}
    for name in SHARED:
        ranges = [rule(spec.param(name)) for spec in SPECS.values()]
        assert all(r == ranges[0] for r in ranges), name


def test_the_spec_is_plain_json():
    data = json.loads(json.dumps([spec.as_dict() for spec in SPECS.values()]))
    frames = next(p for p in data[1]["params"] if p["name"] == "frames")
    assert frames == {**frames, "type": "integer", "default": 16, "minimum": 2, "maximum": 64, "api": True}
    assert {r["expression"] for r in data[1]["rules"]} == {"loop_overlap <= frames // 2",
                                                            "frames + loop_overlap <= 64",
                                                            "motion_lora == null or backend != 'comfyui'"}
    assert next(p for p in data[0]["params"] if p["name"] == "scheduler")["enum"][0] == "dpmpp_2m"


# -- every boundary through both entry points ------------------------------------------------------------------
def boundary_cases() -> list[tuple[int, dict]]:
    """(phase, values) just inside and just outside every range, enum, length and cross-field rule."""
    cases: list[tuple[int, dict]] = []
    for spec in SPECS.values():
        for p in spec.api_params:
            if p.name in ("backend",):  # comfyui needs a ComfyUI server: tests/test_comfyui_backend.py
                continue
            if p.type in ("integer", "number") and p.minimum is not None:
                step = 1 if p.type == "integer" else 0.01
                values = [p.minimum, p.maximum, p.minimum - step, p.maximum + step]
                if p.multiple_of:
                    values.append(p.minimum + p.multiple_of // 2)
                cases += [(spec.phase, {p.name: v}) for v in values]
            if p.enum:
                cases += [(spec.phase, {p.name: p.enum[-1]}), (spec.phase, {p.name: "bogus"})]
            if p.max_length:
                text = "test:echo " if p.name == "prompt" else ""
                cases += [(spec.phase, {p.name: text.ljust(p.max_length, "x")}),
                          (spec.phase, {p.name: text.ljust(p.max_length + 1, "x")}), (spec.phase, {p.name: None})]
                if not p.blank:
                    cases.append((spec.phase, {p.name: "  "}))
    cases += [(2, {"frames": 7}), (2, {"frames": 8}), (2, {"frames": 60}), (2, {"frames": 61}),
              (3, {"seconds": 1.0, "fps": 1}), (3, {"seconds": 1.0, "fps": 2}), (3, {"prompt": ""}),
              (3, {"seconds": 0.5}), (3, {"seconds": 0.999})]
    return cases


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def srv(tmp_path_factory, start_live_server):
    async with start_live_server(tmp_path_factory.mktemp("spec"), max_queue=10_000) as server:
        server.admin = server.service.tokens.create("admin1", "admin")[1]
        image_job = await submit(server, prompt="test:progress", steps=1)  # writes image.png and a manifest
        assert (await wait_done(server, image_job["job_id"])).status.value == "succeeded"
        server.image_job = image_job["job_id"]
        yield server


class Reached(Exception):
    """The phase function got past its checks (its first progress event): nothing is generated."""


def stop(_event):
    raise Reached


def through_function(phase_id: int, values: dict, tmp_path: Path) -> str | None:
    """None if the function accepts `values`, else the field its SpecError names."""
    function = PHASE_FUNCTIONS[get_phase(phase_id).name]
    args = {"width": 64, "height": 64, "steps": 1, "prompt": "test:echo spec", **values}
    try:
        function(**args, models="tiny", output_dir=tmp_path / "out", on_progress=stop, display=None)
    except Reached:
        return None
    except SpecError as exc:
        return exc.field
    raise AssertionError(f"phase {phase_id} ran {values} to the end")


async def through_generate(srv, phase_id: int, values: dict) -> str | None:
    body = {"phase": phase_id, "width": 64, "height": 64, "steps": 1, "prompt": "test:echo spec", **values}
    code, data, _ = await call(srv, "POST", f"{API}/generate", body, token=srv.admin)
    if code == 202:
        return None
    assert code == 422, data
    return data["error"]["field"]


@aio
@pytest.mark.timeout(600)
async def test_every_boundary_gets_one_answer_from_generate_and_the_function(srv, tmp_path):
    job = srv.image_job
    outputs = srv.service.outputs_dir
    refs = [(1, {"reference_image": f"{job}/image.png"}, {"reference_image": str(outputs / job / "image.png")}),
            (3, {"image": f"{job}/image.png"}, {"image": str(outputs / job / "image.png")}),
            (3, {"image": f"{job}/manifest.json"}, {"image": str(outputs / job / "manifest.json")}),
            (2, {"reference_image": f"{job}/params.json"}, {"reference_image": str(outputs / job / "params.json")}),
            (3, {"image": job}, {"image": str(outputs / job)})]  # a run without a `reference` image
    cases = [(phase, values, values) for phase, values in boundary_cases()] + refs
    assert len(cases) > 80
    answers = []
    for phase_id, api_values, function_values in cases:
        api = await through_generate(srv, phase_id, api_values)
        function = through_function(phase_id, function_values, tmp_path)
        answers.append((phase_id, api_values, api, function))
    disagree = [a for a in answers if a[2] != a[3]]
    assert not disagree, disagree
    refused = {(phase, json.dumps(values)) for phase, values, field, _ in answers if field is not None}
    for phase, values in [(2, {"frames": 7}), (3, {"seconds": 0.5}), (3, {"prompt": None}), (1, {"prompt": None}),
                          (3, {"image": f"{job}/manifest.json"}), (1, {"width": 2049}), (1, {"steps": 151})]:
        assert (phase, json.dumps(values)) in refused, (phase, values)
    accepted = [a for a in answers if a[2] is None]
    assert len(accepted) > 20


@aio
async def test_an_accepted_job_runs_what_the_spec_says(srv):
    """Defaults are filled in from the phase's spec (the record says what ran), a seed is drawn."""
    code, job, _ = await call(srv, "POST", f"{API}/generate", {"prompt": "test:echo defaults", "phase": 2})
    assert code == 202, job
    record = await wait_done(srv, job["job_id"])
    echoed = json.loads((srv.service.outputs_dir / job["job_id"] / "params.json").read_text())
    spec = phase_spec(2)
    for name in ("negative_prompt", "guidance_scale", "frames", "fps", "scheduler", "steps"):
        assert record.parameters[name] == spec.defaults[name], name
    assert echoed["seed"] == record.parameters["seed"] and isinstance(echoed["seed"], int)
    assert "backend" not in record.parameters  # the server's --backend applies


@aio
async def test_phases_endpoint_publishes_the_spec(srv):
    code, body, _ = await call(srv, "GET", f"{API}/phases")
    assert code == 200
    loop = next(p for p in body["phases"] if p["id"] == 2)
    fields = {f["name"]: f for f in loop["request_fields"]}
    assert set(fields) == {p.name for p in phase_spec(2).api_params}
    assert fields["frames"]["minimum"] == 2 and fields["frames"]["default"] == 16
    assert {r["field"] for r in loop["rules"]} == {"frames", "motion_lora"}


@aio
async def test_a_motion_lora_is_refused_on_comfyui_however_the_backend_is_chosen(srv, tmp_path):
    """ComfyUI's core nodes cannot apply an AnimateDiff motion LoRA: a 422 naming the backend, from the request's
    `backend`, from the server's own --backend, and the same SpecError from the phase function."""
    from animenb.server.validation import APIError, validate_generate

    zoom = {"motion_lora": "zoom", "motion_lora_weight": 0.8}
    assert await through_generate(srv, 2, {**zoom, "backend": "comfyui"}) == "motion_lora"
    assert await through_generate(srv, 2, {**zoom, "backend": "diffusers"}) is None
    assert through_function(2, {**zoom, "backend": "comfyui"}, tmp_path) == "motion_lora"
    body = {"phase": 2, "prompt": "a girl", **zoom}
    assert validate_generate(body, tmp_path, lambda _: False, "diffusers")[1]["motion_lora"] == "zoom"
    with pytest.raises(APIError) as refused:
        validate_generate(body, tmp_path, lambda _: False, "comfyui")
    assert (refused.value.status_code, refused.value.field) == (422, "motion_lora")
    assert "comfyui backend" in refused.value.message
    # a sweep on a ComfyUI server is checked against the same rule
    from animenb.server.sweeps import validate_sweep

    sweep = {"phase": 2, "parameters": {"prompt": "a girl", **zoom}, "axes": {"seed": [1, 2]}}
    assert validate_sweep(sweep, tmp_path, lambda _: False, "diffusers")[0].parameters["motion_lora"] == "zoom"
    with pytest.raises(APIError) as refused:
        validate_sweep(sweep, tmp_path, lambda _: False, "comfyui")
    assert (refused.value.status_code, refused.value.field) == (422, "parameters.motion_lora")
