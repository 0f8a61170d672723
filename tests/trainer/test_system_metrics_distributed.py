"""System metrics under torchrun: two "nodes" on one machine (two ``torchrun --nnodes 2`` launches of one
process each, gloo), ``TRACKLINK_SYSTEM_METRICS`` on.

Bad behaviours caught:
- only node 0's metrics reaching the tracker on world rank 0 (the other node's sample not gathered), or the
  nodes' metrics under one name (not named by node);
- a node without its own sampler (one per node: each node's local main process samples);
- system metrics in ``log_history`` on any rank;
- a sampler thread left running after training.
"""

from __future__ import annotations

import json
import os
import textwrap
from pathlib import Path

import pytest
from trainer_testlib import run_two_nodes

pytestmark = [pytest.mark.distributed, pytest.mark.slow, pytest.mark.sdk("psutil")]

SCRIPT = textwrap.dedent('''
    import json, os, sys, threading
    from pathlib import Path

    sys.path.insert(0, sys.argv[2])
    from helpers import ClassificationDataset, TinyClassifier

    import tracklink
    from tracklink import TrainerCallback
    from tracklink.trainer import Trainer, TrainingArguments

    root, rank = Path(sys.argv[1]), int(os.environ["RANK"])


    class Recorder(tracklink.Tracker):
        name = "system-recorder"
        metric_style = "raw"

        def setup(self, run):
            self.metrics = []

        def log_metrics(self, metrics, step, epoch):
            self.metrics.append([step, metrics])

        def finish(self, status):
            (root / "tracker.json").write_text(json.dumps(self.metrics))


    class FreshSample(TrainerCallback):
        """Each step ends once this node's sampler has a sample not logged yet (no timing assumptions)."""

        def __init__(self):
            self.samplers = []

        def on_step_end(self, args, state, control, **kwargs):
            sampler = trainer.run.system
            self.samplers.append(sampler is not None and sampler.prefix)
            if sampler is not None:
                assert sampler.wait(20)


    fresh = FreshSample()
    args = TrainingArguments(
        output_dir=str(root / "out"), report_to="none", disable_tqdm=True, max_steps=4,
        per_device_train_batch_size=4, logging_steps=2, save_strategy="no", seed=5, use_cpu=True,
    )
    trainer = Trainer(model=TinyClassifier(dropout=0.0), args=args, train_dataset=ClassificationDataset(length=32),
                      callbacks=[Recorder(), fresh])
    trainer.train()
    Path(root / f"rank{rank}.json").write_text(json.dumps({
        "samplers": fresh.samplers,
        "history_keys": sorted({k for entry in trainer.state.log_history for k in entry}),
        "threads": [t.name for t in threading.enumerate()],
    }))
''')


def test_each_node_samples_and_rank_zero_logs_both_nodes(tmp_path: Path) -> None:
    script = tmp_path / "train_nodes.py"
    script.write_text(SCRIPT)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TRACKLINK_LOG_LEVEL": "warning", "TRACKLINK_SYSTEM_METRICS": "0.1"}
    env.pop("CUDA_VISIBLE_DEVICES", None)
    run_two_nodes(script, tmp_path, env)

    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert ranks[0]["samplers"] == ["system/node0/"] * 4
    assert ranks[1]["samplers"] == ["system/node1/"] * 4
    for info in ranks:
        assert not [k for k in info["history_keys"] if k.startswith("system/")], info["history_keys"]
        assert "tracklink-system-metrics" not in info["threads"]

    logged = json.loads((tmp_path / "tracker.json").read_text())
    training = [(step, metrics) for step, metrics in logged if "loss" in metrics]
    assert [step for step, _ in training] == [2, 4]
    for _, metrics in training:
        for node in (0, 1):
            for key in ("cpu_percent", "memory_percent", "process_rss_mb"):
                assert f"system/node{node}/{key}" in metrics, (node, key, sorted(metrics))
        assert not [k for k in metrics if k.startswith("system/") and not k.startswith(("system/node0/",
                                                                                      "system/node1/"))]
