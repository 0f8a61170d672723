"""The documentation's code runs: every code block of the quickstart, the example plugin package, and
the generated environment-variable page matches the trackers' declarations."""

from __future__ import annotations

import json
import os
import re
import shlex
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib  # type: ignore[no-redef]

ROOT = Path(__file__).resolve().parents[2]
DOCS = ROOT / "docs"
sys.path.insert(0, str(DOCS / "_ext"))


def _blocks(page: Path) -> list[tuple[str, str]]:
    """(language, code) of every fenced block of a markdown page."""
    return [(m.group(1), m.group(2)) for m in re.finditer(r"```(\w+)\n(.*?)```", page.read_text(), re.S)]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_http(url: str, proc: subprocess.Popen, timeout: float = 90) -> bytes:
    deadline = time.monotonic() + timeout
    while True:
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                return response.read()
        except OSError:
            assert proc.poll() is None, f"server exited: {proc.stderr.read() if proc.stderr else ''}"
            assert time.monotonic() < deadline, f"{url} did not answer"
            time.sleep(0.5)


@pytest.mark.sdk("tensorboard", "mlflow")
@pytest.mark.slow
def test_every_quickstart_block_runs(tmp_path: Path) -> None:
    blocks = _blocks(DOCS / "quickstart.md")
    assert [lang for lang, _ in blocks] == ["bash", "python", "bash", "bash", "python"]
    env = {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'mlflow.db'}"}

    # 1. the install command names extras that exist
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    install = shlex.split(blocks[0][1].strip())
    assert install[:2] == ["pip", "install"]
    requested = re.fullmatch(r"tracklink\[(.*)\]", install[2]).group(1).split(",")
    assert set(requested) <= set(extras)

    # 2. + 5. the Python blocks, run in order in one interpreter
    script = tmp_path / "quickstart.py"
    script.write_text(blocks[1][1] + "\n" + blocks[4][1])
    run = subprocess.run([sys.executable, str(script)], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    assert "eval_loss" in run.stdout
    assert (tmp_path / "quickstart-out" / "checkpoint-60").is_dir()

    # 3. tracklink doctor (run as `python -m tracklink`, the same command, whatever PATH says)
    command = shlex.split(blocks[2][1].strip())
    assert command[0] == "tracklink"
    doctor = subprocess.run([sys.executable, "-m", "tracklink", *command[1:]], cwd=tmp_path, env=env,
                            capture_output=True, text=True, timeout=120)
    assert doctor.returncode == 0, doctor.stdout + doctor.stderr
    assert "tensorboard" in doctor.stdout

    # 4. the dashboards (on loopback, a free port each) serve what the quickstart logged
    tb_cmd, mlflow_cmd = blocks[3][1].strip().splitlines()
    assert tb_cmd.startswith("tensorboard ") and mlflow_cmd.startswith("mlflow ")
    bin_dir = Path(sys.executable).parent  # the commands of this environment, whatever PATH says
    tb_cmd, mlflow_cmd = str(bin_dir / tb_cmd), str(bin_dir / mlflow_cmd)
    tb_port, mlflow_port = _free_port(), _free_port()
    tb = subprocess.Popen([*shlex.split(tb_cmd), "--host", "127.0.0.1", "--port", str(tb_port)], cwd=tmp_path,
                          env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    ml = subprocess.Popen([*shlex.split(mlflow_cmd), "--backend-store-uri", env["MLFLOW_TRACKING_URI"], "--host",
                           "127.0.0.1", "--port", str(mlflow_port), "--workers", "1"], cwd=tmp_path,
                          env={**env, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"},
                          stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        runs = json.loads(_wait_http(f"http://127.0.0.1:{tb_port}/data/runs", tb))
        assert runs, "TensorBoard found no run"
        _wait_http(f"http://127.0.0.1:{mlflow_port}/health", ml)
        request = urllib.request.Request(
            f"http://127.0.0.1:{mlflow_port}/api/2.0/mlflow/runs/search", method="POST",
            data=json.dumps({"experiment_ids": ["0"], "max_results": 10}).encode(),
            headers={"Content-Type": "application/json"},
        )
        with urllib.request.urlopen(request, timeout=10) as response:
            found = json.loads(response.read()).get("runs", [])
        assert len(found) == 1, "the resumed training logged into the same MLflow run"
    finally:
        for proc in (tb, ml):
            proc.terminate()
            proc.wait(20)


def test_example_plugin_package(tmp_path: Path) -> None:
    target = tmp_path / "site"
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation", "--target",
         str(target), str(DOCS / "examples" / "tracklink-jsonl")],
        check=True, capture_output=True, timeout=300,
    )
    code = f"""
import json, sys
sys.path.insert(0, {str(ROOT / 'tests')!r})
from pathlib import Path
from helpers import make_trainer
import tracklink
from tracklink.registry import discover
spec = discover()["jsonl"]
assert spec.source == "third-party", spec
class StopAt15(tracklink.TrainerCallback):
    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step == 15:
            control.should_training_stop = True
make_trainer("out", ["jsonl"], callbacks=[StopAt15()]).train()
make_trainer("out", ["jsonl"]).train(resume_from_checkpoint="out/checkpoint-10")
files = list(Path("jsonl-runs").glob("*.jsonl"))
records = [json.loads(line) for line in files[0].read_text().splitlines()]
print(json.dumps({{"files": len(files), "records": records}}))
"""
    env = {**os.environ, "PYTHONPATH": f"{target}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    run = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True,
                         timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    result = json.loads(run.stdout.strip().splitlines()[-1])
    assert result["files"] == 1, "resume appended to the same run file"
    records = result["records"]
    assert records[0]["type"] == "params" and records[0]["params"]["learning_rate"] == 0.1
    steps = [r["step"] for r in records if r["type"] == "metrics" and "train/loss" in r["metrics"]]
    assert steps == [5, 10, 15, 15, 20]  # the first run reached 15; the resumed one re-trains 11-15 and goes on
    assert [r["status"] for r in records if r["type"] == "end"] == ["success", "success"]


def test_environment_page_matches_the_declarations() -> None:
    import tracklink_tables

    committed = (DOCS / tracklink_tables.GENERATED).read_text()
    assert committed == tracklink_tables.environment_page(), (
        "docs/environment.md is out of date; regenerate it with `python docs/_ext/tracklink_tables.py`"
    )


def test_media_matrix_matches_the_declarations() -> None:
    import tracklink_tables

    committed = (DOCS / tracklink_tables.MEDIA_PAGE).read_text()
    assert committed == tracklink_tables.media_page(committed), (
        "the media matrix in docs/media.md is out of date; regenerate it with `python docs/_ext/tracklink_tables.py`"
    )
    from tracklink.cli import plugin_rows

    rows, _ = plugin_rows("none")
    cli = {row["name"]: row["media"] for row in rows}
    from tracklink.registry import BUILTIN_ORDER

    for name in BUILTIN_ORDER:
        assert tracklink_tables.media_row(name) == cli[name], f"docs and `tracklink plugins` agree on {name}"
        page = (DOCS / "trackers" / f"{name}.md").read_text()
        assert f"```{{tracklink-media}} {name}" in page, f"docs/trackers/{name}.md shows its media row"


def test_every_tracker_page_renders_its_declared_variables() -> None:
    import tracklink_tables

    from tracklink.registry import BUILTIN_ORDER

    for name in BUILTIN_ORDER:
        page = (DOCS / "trackers" / f"{name}.md").read_text()
        assert f"```{{tracklink-env-vars}} {name}" in page, name
        assert tracklink_tables.env_table_rows(name) is not None


def test_every_tracklink_variable_the_core_reads_is_documented() -> None:
    """Each ``TRACKLINK_*`` variable named in the core's source appears in the documentation of tracklink's own
    variables (the report_to page's table, or the generated environment page for the run journal's)."""
    import re

    names = set()
    for path in (ROOT / "core").glob("*.py"):
        names.update(re.findall(r"\bTRACKLINK_[A-Z][A-Z_]*[A-Z]\b", path.read_text()))
    documented = (DOCS / "report_to.md").read_text() + (DOCS / "environment.md").read_text()
    missing = sorted(name for name in names if f"`{name}`" not in documented)
    assert names and not missing, f"undocumented variables: {missing}"
