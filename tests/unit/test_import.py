"""``import tracklink`` is light: neither torch nor any tracker SDK is imported by the hub, the integrations
package, report_to resolution or the CLI's plugin listing. Each check runs in a fresh interpreter."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest

HEAVY = ("torch", "wandb", "mlflow", "comet_ml", "neptune", "clearml", "dvclive", "codecarbon", "azureml",
         "dagshub", "flytekit", "tensorboard", "trackio", "swanlab", "transformers", "tensorflow",
         # optional heavy inputs of media values (tracklink.media imports them only when a value needs them)
         "numpy", "PIL", "pandas", "matplotlib")


def heavy_modules_after(code: str) -> list[str]:
    script = textwrap.dedent(code) + textwrap.dedent(f"""
        import json, sys
        heavy = {HEAVY!r}
        loaded = sorted(m for m in sys.modules if m.split(".")[0] in heavy)
        print("\\n@@" + json.dumps(loaded))
    """)
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120,
                            env={**os.environ})
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout.rsplit("@@", 1)[1])


def test_import_tracklink_and_integrations() -> None:
    assert heavy_modules_after("import tracklink\nimport tracklink.integrations\n") == []


def test_public_names_are_importable_without_heavy_modules() -> None:
    code = """
        import tracklink
        for name in tracklink.__all__:
            getattr(tracklink, name)
        from tracklink import CallbackHandler, TrainerState, hookimpl
        from tracklink import delivery, events, flow, hookspecs, process, redact, state
    """
    assert heavy_modules_after(code) == []


def test_resolve_all_imports_no_sdk() -> None:
    code = """
        import tracklink
        resolution = tracklink.resolve_report_to("all")
        print(resolution.banner())
        for spec in resolution.specs.values():
            spec.availability(); spec.ready({}); spec.env_vars
    """
    assert heavy_modules_after(code) == []


def test_cli_plugin_listing_and_doctor_import_no_sdk() -> None:
    code = """
        import contextlib, io
        from tracklink import cli
        with contextlib.redirect_stdout(io.StringIO()):
            cli.main(["plugins", "--json"])
            cli.main(["plugins"])
            cli.main(["doctor", "--json"])
    """
    assert heavy_modules_after(code) == []


def test_doctor_telling_which_trackers_run_in_processes_imports_no_sdk() -> None:
    """With TRACKLINK_DELIVERY=process the doctor builds each selected tracker (its settings tell whether it
    uploads checkpoints); building one reads settings only, Flyte's included (it is never inside a task here)."""
    code = """
        import contextlib, io, os
        os.environ["TRACKLINK_DELIVERY"] = "process"
        from tracklink import cli
        with contextlib.redirect_stdout(io.StringIO()):
            cli.main(["doctor", "--json"])
            cli.main(["doctor", "--report-to", "tensorboard,mlflow,wandb,dvclive,comet_ml,codecarbon,flyte"])
    """
    assert heavy_modules_after(code) == []


def test_the_check_itself_detects_heavy_imports() -> None:
    pytest.importorskip("torch")
    assert "torch" in heavy_modules_after("import tracklink\nimport torch\n")
