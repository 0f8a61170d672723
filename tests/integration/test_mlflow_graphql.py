"""MLflow's GraphQL endpoint, which the MLflow UI's run pages query, works in the environment tracklink builds.

Bad behaviour caught: a resolver pairing graphene 2.0 with graphql-core 3.3 (MLflow allows ``graphene<4``;
gql 4.1+ wants graphql-core 3.3, which graphene 3 refuses). ``pip check`` passes, but
``mlflow.server.graphql.graphql_schema_extensions`` fails to import, and the server answers every
``/graphql`` request with 500 Internal Server Error: the UI shows no runs. The lock and the ``mlflow``,
``dagshub`` and ``all`` extras ask for ``graphene>=3``.
"""

from __future__ import annotations

import importlib
import importlib.metadata as metadata
import json
import urllib.error
import urllib.request

import pytest
from mlflow_server import MlflowServer, mlflow_server  # noqa: F401 - the session fixture

pytestmark = pytest.mark.sdk("mlflow")


def _full_mlflow() -> bool:
    """The MLflow server (and its GraphQL module) ships with ``mlflow``, not with ``mlflow-skinny``."""
    try:
        metadata.version("mlflow")
    except metadata.PackageNotFoundError:
        return False
    return True


needs_server = pytest.mark.skipif(not _full_mlflow(), reason="only mlflow-skinny is installed (no server)")


@needs_server
def test_graphql_schema_extensions_import() -> None:
    module = importlib.import_module("mlflow.server.graphql.graphql_schema_extensions")
    assert module.schema is not None
    major = int(metadata.version("graphene").split(".")[0])
    assert major >= 3, f"graphene {metadata.version('graphene')} does not work with graphql-core 3"


def _graphql(server: MlflowServer, query: str, variables: dict | None = None) -> dict:
    request = urllib.request.Request(
        f"{server.uri}/graphql", method="POST", headers={"Content-Type": "application/json"},
        data=json.dumps({"query": query, "variables": variables or {}}).encode(),
    )
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            assert response.status == 200
            return json.loads(response.read())
    except urllib.error.HTTPError as exc:  # the broken environment answers 500
        pytest.fail(f"/graphql answered {exc.code}: {exc.read()[:500]!r}\n{server.log_tail()}")


@needs_server
@pytest.mark.slow
def test_server_answers_the_ui_graphql_queries(mlflow_server: MlflowServer) -> None:  # noqa: F811
    client = mlflow_server.client()
    experiment_id = client.create_experiment("graphql-check")
    run = client.create_run(experiment_id)
    client.log_metric(run.info.run_id, "loss", 0.25, step=3)
    client.set_terminated(run.info.run_id)

    echo = _graphql(mlflow_server, 'query testQuery { test(inputString: "abc") { output } }')
    assert echo == {"data": {"test": {"output": "abc"}}, "errors": None}

    # the shape of the run page's query: runs of an experiment with their info and metrics
    found = _graphql(mlflow_server, """
        query SearchRuns($input: MlflowSearchRunsInput) {
          mlflowSearchRuns(input: $input) {
            runs { info { runId status } data { metrics { key value step } } experiment { name } }
          }
        }""", {"input": {"experimentIds": [experiment_id]}})
    assert found["errors"] is None, found
    runs = found["data"]["mlflowSearchRuns"]["runs"]
    assert [r["info"]["runId"] for r in runs] == [run.info.run_id]
    assert runs[0]["info"]["status"] == "FINISHED"
    assert runs[0]["data"]["metrics"] == [{"key": "loss", "value": 0.25, "step": "3"}]
    assert runs[0]["experiment"] == {"name": "graphql-check"}
