"""GET /api/anime/openapi.json documents every route, and real responses and socket messages fit it."""
from __future__ import annotations

import asyncio
import json

import jsonschema
import pytest
import pytest_asyncio
from tornado.routing import PathMatches
from tornado.websocket import websocket_connect

from animenb.phases.spec import SPECS
from animenb.server.handlers import default_handlers
from animenb.server.openapi import openapi_document, openapi_handlers
from animenb.server.orchestrate_validation import ACCEPTED
from animenb.server.sweeps import sweep_handlers

pytestmark = [pytest.mark.timeout(600)]
DIALECT = "https://json-schema.org/draft/2020-12/schema"
SAMPLE_ID = "0123456789abcdef0123456789abcdef"


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def srv(tmp_path_factory, start_live_server):
    async with start_live_server(tmp_path_factory.mktemp("openapi"), models="tiny") as server:
        yield server


@pytest.fixture(scope="module")
def doc():
    return openapi_document()


def check(doc: dict, schema: dict, instance) -> None:
    """Validate `instance` against `schema`, whose $refs point into the document's components."""
    jsonschema.validate(instance, {"$schema": DIALECT, **schema, "components": doc["components"]},
                        cls=jsonschema.Draft202012Validator)


def response_schema(doc: dict, path: str, method: str, status: int) -> dict:
    response = doc["paths"][path][method]["responses"][str(status)]
    return response["content"]["application/json"]["schema"]


def fits(doc, path, method, code, body) -> None:
    assert str(code) in doc["paths"][path][method]["responses"], (path, method, code, body)
    check(doc, response_schema(doc, path, method, code), body)


def test_the_document_is_valid_and_documents_every_route(doc):
    jsonschema.Draft202012Validator.check_schema({"$schema": DIALECT, "components": doc["components"]})
    for schema in doc["components"]["schemas"].values():
        jsonschema.Draft202012Validator.check_schema(schema)
    routes = [(PathMatches(pattern), handler) for pattern, handler, *_ in default_handlers + sweep_handlers + openapi_handlers]
    documented = set()
    for template in doc["paths"]:
        url = template.replace("{job_id}", SAMPLE_ID).replace("{path}", f"{SAMPLE_ID}/sheet.png").replace(
            "{rel}", "sheet.png")
        handlers = [handler for matcher, handler in routes if matcher.match(type("R", (), {"path": url})())
                    is not None]
        assert handlers, f"documented but not served: {template}"
        documented.add(handlers[0])
    served = {handler for _pattern, handler, *_ in default_handlers + sweep_handlers + openapi_handlers}
    assert served == documented, f"served but not documented: {served - documented}"


def test_request_schemas_come_from_the_specs(doc):
    schemas = doc["components"]["schemas"]
    for spec in SPECS.values():
        body = next(s for s in schemas.values() if s.get("title", "").endswith(spec.name.title().replace("_", "")))
        assert set(body["properties"]) == {p.name for p in spec.api_params} | {"phase", "visibility"}
        steps = body["properties"]["steps"]
        assert (steps["minimum"], steps["maximum"], steps["default"]) == (
            spec.param("steps").minimum, spec.param("steps").maximum, spec.param("steps").default)
    assert set(schemas["Orchestrate"]["properties"]) == set(ACCEPTED)
    generate = doc["paths"]["/api/anime/generate"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    check(doc, generate, {"prompt": "a fox", "steps": 2})
    check(doc, generate, {"phase": 3, "seconds": 2.0, "fps": 8})
    for bad in ({"prompt": "a fox", "steps": 0}, {"prompt": "a fox", "frames": 8}, {"phase": 2, "prompt": ""},
                {"prompt": "a fox", "scheduler": "lms"}, {"prompt": "a fox", "width": 65}):
        with pytest.raises(jsonschema.ValidationError):
            check(doc, generate, bad)


@pytest.mark.asyncio(loop_scope="module")
async def test_real_responses_fit_the_document(srv, doc):
    code, served, headers = await srv.request("GET", "/api/anime/openapi.json")
    assert code == 200 and headers["Content-Type"].startswith("application/json") and served == doc
    for path in ("/api/anime/health", "/api/anime/jobs", "/api/anime/gallery", "/api/anime/phases"):
        code, body, _ = await srv.request("GET", path)
        fits(doc, path, "get", code, body)

    # Errors: bad bodies, bad queries, unknown jobs, missing auth.
    code, body, _ = await srv.request("POST", "/api/anime/generate", {"prompt": "a fox", "steps": 0})
    fits(doc, "/api/anime/generate", "post", code, body)
    assert code == 422 and body["error"]["field"] == "steps"
    code, body, _ = await srv.request("POST", "/api/anime/generate", raw=b"{not json")
    fits(doc, "/api/anime/generate", "post", code, body)
    code, body, _ = await srv.request("GET", "/api/anime/jobs?status=bogus")
    fits(doc, "/api/anime/jobs", "get", code, body)
    code, body, _ = await srv.request("GET", f"/api/anime/generation/{SAMPLE_ID}/status")
    fits(doc, "/api/anime/generation/{job_id}/status", "get", code, body)
    code, body, _ = await srv.request("GET", "/api/anime/admin/stats")
    fits(doc, "/api/anime/admin/stats", "get", code, body)
    code, body, _ = await srv.request("POST", "/api/anime/orchestrate", {"prompt": "a fox"})
    fits(doc, "/api/anime/orchestrate", "post", code, body)

    # A job: 202, its socket's messages, its status while and after it runs, the gallery with it.
    code, accepted, _ = await srv.request("POST", "/api/anime/generate",
                                          {"prompt": "a fox", "phase": 1, "steps": 1, "seed": 3})
    fits(doc, "/api/anime/generate", "post", code, accepted)
    messages_schema = doc["paths"]["/ws/job/{job_id}"]["get"]["x-websocket-messages"]
    ws = await websocket_connect(f"ws://127.0.0.1:{srv.port}/ws/job/{accepted['job_id']}")
    kinds = []
    for _ in range(500):
        message = await asyncio.wait_for(ws.read_message(), 300)
        assert message is not None, "the socket closed before `finished`"
        message = json.loads(message)
        check(doc, messages_schema, message)
        kinds.append(message["event"])
        if message["event"] == "finished":
            break
    ws.close()
    assert kinds[0] == "state" and kinds[-1] == "finished" and "progress" in kinds
    code, status, _ = await srv.request("GET", accepted["status_url"])
    fits(doc, "/api/anime/generation/{job_id}/status", "get", code, status)
    assert status["status"] == "succeeded", status
    code, body, _ = await srv.request("DELETE", f"/api/anime/generation/{accepted['job_id']}")
    fits(doc, "/api/anime/generation/{job_id}", "delete", code, body)
    for path in ("/api/anime/jobs", "/api/anime/gallery"):
        code, body, _ = await srv.request("GET", path)
        fits(doc, path, "get", code, body)
        assert body["count"] >= 1
