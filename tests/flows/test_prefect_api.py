"""flows.prefect_api.PrefectAPI reads a real Prefect API: flow runs, their task runs, artifacts."""

from __future__ import annotations

import uuid


def test_reads_flow_runs_task_runs_and_artifacts(prefect_server):
    from prefect import flow, task
    from prefect.artifacts import create_markdown_artifact

    from flows.prefect_api import PrefectAPI, prefect_api_url

    key = f"api-test-{uuid.uuid4().hex[:8]}"

    @task
    def step(x: int) -> int:
        create_markdown_artifact(f"step {x}", key=key)
        return x + 1

    @flow(name="prefect-api-test")
    def tiny() -> int:
        return step(step(1))

    state = tiny(return_state=True)
    assert state.is_completed()
    run_id = str(state.state_details.flow_run_id)
    assert prefect_api_url().startswith("http")
    with PrefectAPI() as api:
        runs = api.flow_runs({"flow_runs": {"id": {"any_": [run_id]}}})
        assert [r["id"] for r in runs] == [run_id]
        assert api.flow_run(run_id)["state"]["type"] == "COMPLETED"
        tasks = api.task_runs(run_id)
        assert len(tasks) == 2 and {t["state"]["type"] for t in tasks} == {"COMPLETED"}
        assert sorted(a["data"] for a in api.artifacts([key])) == ["step 1", "step 2"]
        assert [a["data"] for a in api.artifacts([key], latest=True)] == ["step 2"]
