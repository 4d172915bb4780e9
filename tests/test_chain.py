"""animenb.chain without running a phase: the policy, the progress arithmetic, and one rule for the chain's own
parameters (`max_retries`, the gate thresholds) in `orchestrate()`, POST /orchestrate and the OpenAPI document."""
from __future__ import annotations

import json


import jsonschema
import pytest

from animenb.chain import (CHAIN, MAX_RETRIES, MAX_THRESHOLD, NextStep, ProgressPlan, attempt_dir, attempt_parameters,
                           attempt_seed, chain_inputs, eta_seconds, gate_decision, gate_failure_reason, next_step,
                           resolve_thresholds)
from animenb.orchestrate import orchestrate
from animenb.phases.spec import CHARACTER_SHEET
from animenb.server.openapi import orchestrate_request
from animenb.server.orchestrate_validation import validate_orchestrate
from animenb.server.validation import APIError


# ----------------------------------------------------------------------------- pure policy

def test_attempt_seed_is_the_base_seed_first_then_derived_deterministically():
    assert attempt_seed(42, 1, 1) == attempt_seed(42, 2, 1) == 42
    retries = [attempt_seed(42, phase, k) for phase in (1, 2, 3) for k in (2, 3, 4)]
    assert len(set(retries)) == len(retries) and 42 not in retries
    assert retries == [attempt_seed(42, phase, k) for phase in (1, 2, 3) for k in (2, 3, 4)]
    assert all(0 <= s < 2**32 for s in retries)
    assert attempt_seed(43, 1, 2) != attempt_seed(42, 1, 2)
    with pytest.raises(ValueError, match="attempt"):
        attempt_seed(42, 1, 0)


@pytest.mark.parametrize("given, expected", [
    (None, {"CHARACTER_SHEET": None, "ANIMATION_LOOP": None, "FULL_VIDEO": None}),
    (0.5, {"CHARACTER_SHEET": 0.5, "ANIMATION_LOOP": 0.5, "FULL_VIDEO": 0.5}),
    ({1: 0.9, "full_video": 1.01}, {"CHARACTER_SHEET": 0.9, "ANIMATION_LOOP": None, "FULL_VIDEO": 1.01}),
])
def test_resolve_thresholds(given, expected):
    assert resolve_thresholds(given) == expected


@pytest.mark.parametrize("bad", [-0.1, float("nan"), "0.8", True, {"phase9": 0.5}, {2: -1}])
def test_resolve_thresholds_rejects(bad):
    with pytest.raises(ValueError):
        resolve_thresholds(bad)


@pytest.mark.parametrize("passed, attempt, max_retries, expected", [
    (True, 1, 2, "advance"), (True, 3, 2, "advance"), (False, 1, 2, "retry"), (False, 2, 2, "retry"),
    (False, 3, 2, "fail"), (False, 1, 0, "fail"),
])
def test_gate_decision(passed, attempt, max_retries, expected):
    assert gate_decision(passed, attempt, max_retries) == expected


def test_gate_failure_reason_names_phase_attempts_seeds_and_scores():
    reason = gate_failure_reason("ANIMATION_LOOP", [{"seed": 1, "score": 0.5, "threshold": 0.8},
                                                    {"seed": 99, "score": 0.7123, "threshold": 0.8}])
    assert reason == ("ANIMATION_LOOP failed its quality gate (threshold 0.80) after 2 attempts: "
                      "seed 1 -> 0.500, seed 99 -> 0.712")


def test_gate_failure_reason_names_the_rules_that_failed_each_attempt():
    reason = gate_failure_reason("CHARACTER_SHEET", [
        {"seed": 1, "score": 0.133, "threshold": 0.1, "failures": ["pose_distinctness 0.212 < floor 0.5"]},
        {"seed": 7, "score": 0.05, "threshold": 0.1, "failures": ["score 0.050 < threshold 0.1"]}])
    assert reason == ("CHARACTER_SHEET failed its quality gate (threshold 0.10) after 2 attempts: "
                      "seed 1 -> 0.133 (pose_distinctness 0.212 < floor 0.5), seed 7 -> 0.050")


def test_advisory_gates_run_the_chain_through():
    assert gate_decision(False, 1, 2, advisory=True) == "advance"
    history = [_h("CHARACTER_SHEET", False)]
    assert next_step(history, 2, advisory=True) == NextStep("run", "ANIMATION_LOOP", 1)
    history += [_h("ANIMATION_LOOP", True, score=0.9), _h("FULL_VIDEO", False, seed=5, score=0.2)]
    assert next_step(history, 2, advisory=True) == NextStep(
        "succeeded", reason="ran through with advisory gates in 3 attempts; failed: CHARACTER_SHEET seed 1 -> 0.500, "
                            "FULL_VIDEO seed 5 -> 0.200")


def _h(phase, passed, seed=1, score=0.5):
    return {"phase": phase, "passed": passed, "seed": seed, "score": score, "threshold": 0.8}


@pytest.mark.parametrize("history, expected", [
    ([], NextStep("run", "CHARACTER_SHEET", 1)),
    ([_h("CHARACTER_SHEET", False)], NextStep("run", "CHARACTER_SHEET", 2)),
    ([_h("CHARACTER_SHEET", False), _h("CHARACTER_SHEET", True)], NextStep("run", "ANIMATION_LOOP", 1)),
    ([_h("CHARACTER_SHEET", True), _h("ANIMATION_LOOP", False), _h("ANIMATION_LOOP", False)],
     NextStep("failed", "ANIMATION_LOOP", 2, "ANIMATION_LOOP failed its quality gate (threshold 0.80) after 2 "
                                            "attempts: seed 1 -> 0.500, seed 1 -> 0.500")),
    ([_h("CHARACTER_SHEET", True, score=0.9), _h("ANIMATION_LOOP", True, score=0.85),
      _h("FULL_VIDEO", True, score=0.8)],
     NextStep("succeeded", reason="all 3 gates passed in 3 attempts (CHARACTER_SHEET 0.900, ANIMATION_LOOP 0.850, "
                                  "FULL_VIDEO 0.800)")),
])
def test_next_step_is_the_chain_policy(history, expected):
    assert next_step(history, max_retries=1) == expected


def test_attempt_parameters_are_plain_json_notebook_parameters(tmp_path):
    params = attempt_parameters("ANIMATION_LOOP", 2, prompt="p", seed=42, root=tmp_path, steps=2,
                                passed={"CHARACTER_SHEET": tmp_path / "1_character_sheet" / "attempt_1"},
                                phase_options={"ANIMATION_LOOP": {"frames": 8}})
    assert params == {"prompt": "p", "seed": attempt_seed(42, 2, 2), "steps": 2, "width": None, "height": None,
                      "models": "", "output_dir": str(tmp_path / "2_animation_loop" / "attempt_2"),
                      "reference_image": str(tmp_path / "1_character_sheet" / "attempt_1"), "frames": 8}
    assert json.loads(json.dumps(params)) == params


def test_progress_plan_re_budgets_a_retry_without_going_back():
    plan = ProgressPlan.for_chain()
    assert plan.percent(0) == 0 and plan.percent(0.5) == pytest.approx(100 / 6)
    seen = [plan.percent(f) for f in (0, 0.5, 1)]
    plan = plan.retry()                       # phase 1 failed once: 4 units planned from 33.3 %
    assert plan.base_percent == pytest.approx(100 / 3) and plan.units == (1.0, 1.0, 1.0)
    seen += [plan.percent(f) for f in (0, 0.5, 1)]
    plan = plan.advance()                     # phase 1 passed
    seen += [plan.percent(f) for f in (0, 1)]
    plan = plan.retry()                       # phase 2 failed once
    seen += [plan.percent(f) for f in (0, 1)]
    plan = plan.advance().advance()
    seen.append(plan.percent(0.3))
    assert seen == sorted(seen) and seen[-1] == 100.0
    assert plan.remaining_units() == 0.0


def test_eta_from_the_measured_rate():
    assert eta_seconds(0.0, 3.0, 5.0) is None
    assert eta_seconds(1.0, 2.0, 4.0) == pytest.approx(8.0)


def test_chain_inputs_and_layout(tmp_path):
    assert [link.phase for link in CHAIN] == ["CHARACTER_SHEET", "ANIMATION_LOOP", "FULL_VIDEO"]
    assert chain_inputs("CHARACTER_SHEET", {}) == {}
    assert chain_inputs("character_sheet".upper(), {}, "ref.png") == {"reference_image": "ref.png"}
    assert chain_inputs("ANIMATION_LOOP", {"CHARACTER_SHEET": tmp_path}) == {"reference_image": str(tmp_path)}
    with pytest.raises(ValueError, match="ANIMATION_LOOP"):
        chain_inputs("FULL_VIDEO", {"CHARACTER_SHEET": tmp_path})
    assert attempt_dir(tmp_path, "ANIMATION_LOOP", 2) == tmp_path / "2_animation_loop" / "attempt_2"


# ----------------------------------------------------------------------------- one rule everywhere

def _in_process_accepts(tmp_path, **chain_kwargs) -> bool:
    """Whether `orchestrate()` accepts these chain arguments: an unknown phase in `phase_options`, checked
    after them and before any work, makes an accepted call stop there."""
    try:
        orchestrate("girl", models="tiny", output_dir=tmp_path / "x", display=None,
                    phase_options={"PHASE_9": {}}, **chain_kwargs)
    except ValueError as exc:
        assert not (tmp_path / "x").exists()
        return "PHASE_9" in str(exc)
    raise AssertionError("orchestrate ran a chain with an unknown phase")


def _server_accepts(body: dict, tmp_path) -> bool:
    try:
        validate_orchestrate({"prompt": "girl", **body}, tmp_path, "tiny", readable=lambda job_id: False)
    except APIError as exc:
        assert exc.status_code == 422 and exc.field in body, (body, exc)
        return False
    return True


def _schema_accepts(body: dict) -> bool:
    return jsonschema.Draft202012Validator(orchestrate_request()).is_valid({"prompt": "girl", **body})


@pytest.mark.parametrize("max_retries", [-1, 0, 2, MAX_RETRIES.maximum, MAX_RETRIES.maximum + 1, 1.5, True, "2", None])
def test_max_retries_one_rule_in_function_server_and_openapi(max_retries, tmp_path):
    verdicts = (_in_process_accepts(tmp_path, max_retries=max_retries),
                _server_accepts({"max_retries": max_retries}, tmp_path), _schema_accepts({"max_retries": max_retries}))
    assert len(set(verdicts)) == 1, verdicts
    assert verdicts[0] == (type(max_retries) is int and 0 <= max_retries <= MAX_RETRIES.maximum)


def test_the_chain_defaults_are_the_specs():
    assert orchestrate.__kwdefaults__["max_retries"] == MAX_RETRIES.default
    assert orchestrate.__kwdefaults__["steps"] == CHARACTER_SHEET.defaults["steps"]
    assert orchestrate_request()["properties"]["max_retries"]["default"] == MAX_RETRIES.default
    values, _ = validate_orchestrate({"prompt": "girl"}, ".", "tiny", readable=lambda job_id: False)
    assert values["max_retries"] == MAX_RETRIES.default


@pytest.mark.parametrize("gate", [-0.1, 0, 0.5, 1.01, MAX_THRESHOLD, MAX_THRESHOLD + 0.5, "0.8", True, None])
def test_thresholds_one_rule_in_function_server_and_openapi(gate, tmp_path):
    good = gate is None or (type(gate) in (int, float) and 0 <= gate <= MAX_THRESHOLD)
    for in_process, body in ((gate, {"threshold": gate}), ({2: gate}, {"thresholds": {"2": gate}}),
                             ({"FULL_VIDEO": gate}, {"thresholds": {"FULL_VIDEO": gate}})):
        verdicts = (_in_process_accepts(tmp_path, thresholds=in_process), _server_accepts(body, tmp_path),
                    _schema_accepts(body))
        assert verdicts == (good, good, good), (gate, body, verdicts)


def test_the_server_stores_the_gates_the_function_resolves(tmp_path):
    for body, given in (({"threshold": 0.7}, 0.7), ({"thresholds": {"1": 0.9, "full_video": 1.01}},
                                                     {1: 0.9, "full_video": 1.01}), ({}, None)):
        values, _ = validate_orchestrate({"prompt": "girl", **body}, tmp_path, "tiny", readable=lambda job_id: False)
        assert values["thresholds"] == resolve_thresholds(given)
