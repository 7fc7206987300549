"""Property-based tests of the serve API from its own OpenAPI spec (schemathesis over ASGI, no network).

Every generated request, valid or not, must get an answer that is not a 5xx and that matches the documented
status codes and schemas; invalid ones must be refused (4xx).
"""

from __future__ import annotations

import pytest

from conftest import DEMO_DATA

schemathesis = pytest.importorskip("schemathesis")
pytest.importorskip("fastapi")
from hypothesis import HealthCheck, assume, given, settings  # noqa: E402
from schemathesis import GenerationMode  # noqa: E402
from schemathesis.checks import not_a_server_error  # noqa: E402
from schemathesis.specs.openapi.checks import (  # noqa: E402
    content_type_conformance,
    negative_data_rejection,
    response_schema_conformance,
    status_code_conformance,
)

from headstart.serve import create_app  # noqa: E402

CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance]
IMAGE = sorted((DEMO_DATA / "test").glob("*/*.jpg"))[0].read_bytes()


@pytest.fixture(scope="module")
def schema(tmp_path_factory):
    import headstart

    out = tmp_path_factory.mktemp("serve-schema") / "run"
    run = headstart.train(DEMO_DATA, image_size=64, epochs=3, report=False, out=str(out)).run_dir
    app = create_app(run, engine="torch", max_body_bytes=200_000, max_images=4)
    yield schemathesis.openapi.from_asgi("/openapi.json", app)
    app.state.batcher.close()


def _same_on_the_wire(case) -> bool:
    """A negative case that multipart cannot carry: a form field generated as a list of 0 or 1 values is sent
    as no field or as one valid field, so the server rightly accepts what was meant to be invalid."""
    body = case.body if isinstance(case.body, dict) else {}
    return (case.media_type or "").startswith("multipart/") and any(
        isinstance(value, list) and len(value) <= 1 for key, value in body.items() if key != "files")


def run_cases(strategy, examples: int, checks) -> None:
    @settings(max_examples=examples, deadline=None, database=None, derandomize=True,
              suppress_health_check=list(HealthCheck))
    @given(case=strategy)
    def check(case):
        if negative_data_rejection in checks:
            assume(not _same_on_the_wire(case))
        case.validate_response(case.call(), checks=checks)

    check()


@pytest.mark.parametrize("path, method, examples", [
    ("/predict", "POST", 40), ("/explain", "POST", 15), ("/health", "GET", 3), ("/model", "GET", 3),
])
def test_generated_requests_get_no_server_error(schema, path, method, examples):
    run_cases(schema[path][method].as_strategy(GenerationMode.POSITIVE), examples, CHECKS)


@pytest.mark.parametrize("path", ["/predict", "/explain"])
def test_invalid_requests_are_refused(schema, path):
    run_cases(schema[path]["POST"].as_strategy(GenerationMode.NEGATIVE), 30, [*CHECKS, negative_data_rejection])


@pytest.mark.parametrize("media_type", ["multipart/form-data", "application/json"])
def test_real_image_with_generated_options(schema, media_type):
    """Random bytes never decode, so the model path gets a real image and generated top_k/threshold."""
    import base64

    body = {"files": [IMAGE]} if media_type == "multipart/form-data" else {
        "images": [base64.b64encode(IMAGE).decode()]}
    strategy = schema["/predict"]["POST"].as_strategy(media_type=media_type, body=body)
    run_cases(strategy, 20, CHECKS)
