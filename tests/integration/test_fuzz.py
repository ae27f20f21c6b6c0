"""Fuzzing: schemathesis generates requests for every route from the live server's ``/openapi.json``;
no answer may be a 5xx or an error outside OpenAI's envelope."""

from __future__ import annotations

import pytest

schemathesis = pytest.importorskip("schemathesis")
from hypothesis import HealthCheck, given, settings  # noqa: E402 (schemathesis brings hypothesis)
from hypothesis.errors import Unsatisfiable  # noqa: E402

from tuneloop.config import Settings  # noqa: E402
from tuneloop.models import Catalog  # noqa: E402

from helpers import ServerProcess  # noqa: E402

#: Examples per route, method and mode (valid or not by the schema): ~25 operations, well under a minute.
EXAMPLES = 25


@pytest.fixture(scope="module")
def fuzzed(tmp_path_factory, tiny_model_dir):
    home = tmp_path_factory.mktemp("fuzz") / "home"
    Catalog(Settings(home=home)).add("tiny-llama", tiny_model_dir)
    env = {"TUNELOOP_API_KEY": "test", "TUNELOOP_MAX_UPLOAD_BYTES": "100000"}
    server = ServerProcess(home, "--no-worker", env=env).wait_ready()
    yield server
    server.stop()


def check(case) -> None:
    response = case.call(headers={"Authorization": "Bearer test"}, timeout=60)
    where = f"{case.method} {case.formatted_path} -> {response.status_code}: {response.text[:300]}"
    assert response.status_code < 500, where
    if response.status_code >= 400:
        error = response.json().get("error")
        assert isinstance(error, dict) and isinstance(error.get("message"), str) and error.get("type"), where
        assert set(error) == {"message", "type", "param", "code"}, where


def test_no_request_gets_a_5xx_or_an_error_outside_the_envelope(fuzzed):
    url = f"http://127.0.0.1:{fuzzed.port}/openapi.json"
    schema = schemathesis.openapi.from_url(url, headers={"Authorization": "Bearer test"})
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) >= 20  # every route is fuzzed

    fuzz = settings(
        max_examples=EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck), database=None, derandomize=True
    )  # the same requests in every run: a red CI is a real bug, found again
    for operation in operations:
        for mode in schemathesis.GenerationMode:  # requests that follow the schema, and ones that break it

            @fuzz
            @given(operation.as_strategy(mode))
            def run(case) -> None:
                check(case)

            try:
                run()
            except Unsatisfiable:  # nothing to break in a route without parameters
                assert mode == schemathesis.GenerationMode.NEGATIVE
