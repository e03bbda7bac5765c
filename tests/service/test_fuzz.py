"""Schemathesis over the OpenAPI schema, two ways.

- Issue 22: the ``st`` command against the live gateway (uvicorn on a port, Postgres), every
  check (``--checks all``: server errors, status codes, content types, headers and bodies
  against the schema, schema-valid data accepted and schema-breaking data refused, missing
  required headers, unsupported methods and their ``Allow``, use after free, resources
  available after creation, ignored auth), every phase (examples, coverage, fuzzing, stateful:
  sequences of calls along the links it infers), on two seeds. The few exceptions are in
  ``schemathesis.toml`` beside this file, each with its reason.
- Issue 15: every operation in-process, sent with a key of each scope: every answer is a
  non-5xx with a status the schema documents, of the documented content type, whose body
  matches the documented schema (``{code, detail}`` for every error). Schemathesis's own
  pytest plugin does not run under the pinned pytest 9 (it reads a private attribute pytest
  removed), so the operations are walked here and each one's Hypothesis strategy is driven
  with ``@given``."""
import os
import re
import subprocess
import sys

import pytest
import schemathesis
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from schemathesis.generation import GenerationMode
from schemathesis.checks import (content_type_conformance, not_a_server_error, response_schema_conformance,
                                 status_code_conformance)

from app import security
from app.main import create_app

from .conftest import bearer, deployment_settings, make_key, seed, serving

CONFIG = os.path.join(os.path.dirname(os.path.abspath(__file__)), "schemathesis.toml")
SEEDS = (1, 2)
LIVE_EXAMPLES = 10  # per operation and phase: about 40 s a seed on two shared cores
CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance]
EXAMPLES = 20


@pytest.mark.slow  # about 80 s: 20 examples per operation, each sent with a key of every scope
def test_every_operation_with_every_scope(seeded, dispatcher):
    # limits off: a fuzzer is one caller sending thousands of requests
    s = seeded.model_copy(update={"rate_submit_per_min": 0, "rate_expensive_per_min": 0})
    app = create_app(s, dispatcher=dispatcher)
    with TestClient(app):  # the lifespan runs (first keys, threads)
        keys = [make_key(s, [scope], name=f"fuzz-{scope}") for scope in security.SCOPES]
        schema = schemathesis.openapi.from_asgi("/openapi.json", app)
        failures, operations = {}, 0
        for result in schema.get_all_operations():
            op = result.ok()
            operations += 1

            # valid data per the schema, and data that breaks it (which must be a documented 4xx)
            @given(case=op.as_strategy(GenerationMode.POSITIVE) | op.as_strategy(GenerationMode.NEGATIVE))
            @settings(max_examples=EXAMPLES, deadline=None, derandomize=True, database=None,
                      suppress_health_check=list(HealthCheck))
            def run(case):
                for key in keys:
                    case.call_and_validate(headers=bearer(key), checks=CHECKS)

            try:
                run()
            except (Exception, BaseExceptionGroup) as e:  # noqa: BLE001 - collect every operation's failure, then report them all
                failures[op.label] = f"{e.__class__.__name__}: {str(e)[:1500]}"
    assert operations >= 30
    assert not failures, "\n\n".join(f"{k}:\n{v}" for k, v in failures.items())


@pytest.mark.slow
@pytest.mark.parametrize("fuzz_seed", SEEDS)
def test_schemathesis_every_check_against_the_live_gateway(fuzz_seed, pg_url, tmp_path, dispatcher):
    # limits off: a fuzzer is one caller sending thousands of requests
    s = seed(deployment_settings(tmp_path, pg_url, rate_submit_per_min=0, rate_expensive_per_min=0))
    key = make_key(s, name="fuzz")  # every scope
    with serving(create_app(s, dispatcher=dispatcher)) as url:
        st = os.path.join(os.path.dirname(sys.executable), "st")
        cmd = [st, "--config-file", CONFIG, "run", f"{url}/openapi.json", "--checks", "all",
               "--phases", "examples,coverage,fuzzing,stateful", "--seed", str(fuzz_seed),
               "--max-examples", str(LIVE_EXAMPLES), "--workers", "1", "--request-timeout", "60", "--no-color",
               "-H", f"Authorization: Bearer {key}"]
        run = subprocess.run(cmd, capture_output=True, text=True, timeout=900, cwd=tmp_path)
    out = run.stdout + run.stderr
    assert run.returncode == 0, out[-20000:]
    tested = re.search(r"Tested: (\d+)", out)
    assert tested and int(tested.group(1)) >= 50 and "✅ Stateful" in out, out[-3000:]  # every operation, every phase


def test_schema_states_what_the_gateway_refuses(client):
    """What Schemathesis found (issue 22, finding 15), each answered as the schema says."""
    spec = client.app.openapi()
    for path, item in spec["paths"].items():  # control characters: refused in every path and query string
        for op in item.values():
            for p in op.get("parameters", []):
                alts = p["schema"].get("anyOf", [p["schema"]])
                if p["in"] in ("path", "query") and any(a.get("type") == "string" for a in alts):
                    assert "enum" in p["schema"] or all("pattern" in a or "enum" in a for a in alts
                                                        if a.get("type") == "string"), (path, p)
    forms = spec["components"]["schemas"]
    for name in ("Body_upload_model_v1_models_post", "Body_create_dataset_v1_datasets_post"):
        for field, prop in forms[name]["properties"].items():  # a form field cannot be null
            assert {"type": "null"} not in prop.get("anyOf", []), (name, field)
    assert forms["Body_upload_model_v1_models_post"]["properties"]["name"]["minLength"] == 1

    assert client.get("/v1/forget", params={"status": ""}).status_code == 422
    status = next(p for p in spec["paths"]["/v1/forget"]["get"]["parameters"] if p["name"] == "status")
    assert "" not in status["schema"]["enum"] and "queued" in status["schema"]["enum"]

    for bad in ("a\x7fb", "caf\xe9", "   ", "k" * 201):  # Idempotency-Key: 1-200 printable ASCII
        r = client.post("/v1/forget", json={"model": "toy-cnn", "subject_id": "alice"},
                        headers={"Idempotency-Key": bad.encode("latin-1")})
        assert (r.status_code, r.json()["code"]) == (422, "bad_idempotency_key"), bad
    assert client.post("/v1/forget", json={"model": "toy-cnn", "subject_id": "alice"},
                       headers={"Idempotency-Key": "ticket 42"}).status_code == 202

    # strict integers: a boolean is not 0, a string not a number; 3.0 is an integer
    for bad in (False, True, "5", 1.5):
        r = client.put("/v1/tenants/acme", json={"max_requests_per_day": bad})
        assert r.status_code == 422, bad
    assert client.put("/v1/tenants/acme", json={"max_requests_per_day": 3.0}).json()["max_requests_per_day"] == 3
    r = client.put("/v1/tenants/acme", json={"methods": ["nope"]})
    assert (r.status_code, r.json()["code"]) == (422, "unknown_method")
    assert client.get("/v1/tenants/ACME").status_code == 404  # outside the documented name pattern
    assert client.put("/v1/models/toy-cnn/aliases/production", json={"version": True}).status_code == 422

    # a NUL in the format field named the saved upload's file: a 500
    r = client.post("/v1/datasets", data={"name": "d1", "format": "parq\x00uet"}, files={"file": ("d.parquet", b"x")})
    assert (r.status_code, r.json()["code"]) == (422, "unknown_format"), r.text
