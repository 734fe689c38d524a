from __future__ import annotations

import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from schemathesis import GenerationMode


def test_openapi_fuzz_never_gets_a_server_error(server) -> None:
    """Every operation of the published schema, fed valid and invalid generated input: no 5xx,
    and every error body is the standard JSON shape."""
    schema = schemathesis.openapi.from_url(f"{server.url}/openapi.json")
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) >= 12
    failures: list[str] = []
    statuses: list[int] = []
    for operation in operations:
        strategy = st.one_of(
            operation.as_strategy(GenerationMode.POSITIVE),
            operation.as_strategy(GenerationMode.NEGATIVE),
        )

        @given(case=strategy)
        @settings(max_examples=20, deadline=None, database=None, derandomize=True, suppress_health_check=list(HealthCheck))
        def exercise(case) -> None:
            response = case.call(base_url=server.url, timeout=30)
            statuses.append(response.status_code)
            if response.status_code >= 500:
                failures.append(f"{case.method} {case.formatted_path} -> {response.status_code}: {response.text[:200]}")
            elif response.status_code >= 400:
                body = response.json()
                if set(body) != {"error", "detail"}:
                    failures.append(f"{case.method} {case.formatted_path} -> non-standard error body {body}")

        exercise()
    assert failures == []
    assert len(statuses) >= 150 and 422 in statuses and any(s < 300 for s in statuses)
