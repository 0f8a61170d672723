"""Two "nodes" on one machine: two ``torchrun --nnodes 2 --node_rank N`` launches of one process each,
meeting at a rendezvous on 127.0.0.1.

Bad behaviours caught:
- a ``rank_policy="local_main"`` tracker running only once in the world instead of once per node
  (``LOCAL_RANK`` ignored), or a ``"main"`` tracker running on the second node;
- ``is_local_process_zero`` false on the second node's first process;
- the nodes training different models (gradients not reduced across nodes);
- ``fsdp="hybrid_shard"`` (shard within a node, replicate across nodes) not training like DDP.
"""

from __future__ import annotations

import json
import os
import textwrap
from pathlib import Path

import pytest
from trainer_testlib import run_two_nodes

pytestmark = [pytest.mark.distributed, pytest.mark.slow]

SCRIPT = textwrap.dedent('''
    import json, os, sys
    from pathlib import Path

    sys.path.insert(0, sys.argv[2])
    from helpers import ClassificationDataset, TinyClassifier

    import tracklink
    from tracklink.trainer import Trainer, TrainingArguments

    root, rank = Path(sys.argv[1]), int(os.environ["RANK"])


    def recorder(policy):
        class Recorder(tracklink.Tracker):
            name = f"{policy}-recorder"
            rank_policy = policy

            def setup(self, run):
                self.events = [["setup", run.start_step]]

            def log_metrics(self, metrics, step, epoch):
                self.events.append(["metrics", step])

            def finish(self, status):
                self.events.append(["finish", status])
                node = os.environ["GROUP_RANK"]
                Path(root / f"{self.name}-node{node}.json").write_text(json.dumps(self.events))
        return Recorder()


    results = {}
    for name, fsdp in (("ddp", ""), ("hybrid", "hybrid_shard")):
        args = TrainingArguments(
            output_dir=str(root / name), report_to="none", disable_tqdm=True, max_steps=4,
            per_device_train_batch_size=4, logging_steps=2, save_strategy="no", learning_rate=0.05,
            seed=5, use_cpu=True, fsdp=fsdp,
        )
        callbacks = [recorder("local_main"), recorder("main")] if name == "ddp" else []
        trainer = Trainer(model_init=lambda: TinyClassifier(dropout=0.0), args=args,
                          train_dataset=ClassificationDataset(length=32), callbacks=callbacks)
        trainer.train()
        results[name] = {
            "trackers": list(trainer.callback_handler.trackers),
            "local_zero": trainer.state.is_local_process_zero,
            "world_zero": trainer.state.is_world_process_zero,
            "losses": [e["loss"] for e in trainer.state.log_history if "loss" in e],
        }
    Path(root / f"rank{rank}.json").write_text(json.dumps(results))
''')


def test_two_nodes_run_local_main_trackers_once_per_node(tmp_path: Path) -> None:
    script = tmp_path / "train_nodes.py"
    script.write_text(SCRIPT)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TRACKLINK_LOG_LEVEL": "warning"}
    run_two_nodes(script, tmp_path, env)

    node0, node1 = (json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1))
    assert node0["ddp"]["trackers"] == ["local_main-recorder", "main-recorder"]
    assert node1["ddp"]["trackers"] == ["local_main-recorder"]
    assert (node0["ddp"]["local_zero"], node0["ddp"]["world_zero"]) == (True, True)
    assert (node1["ddp"]["local_zero"], node1["ddp"]["world_zero"]) == (True, False)
    for node in (0, 1):
        events = json.loads((tmp_path / f"local_main-recorder-node{node}.json").read_text())
        assert events == [["setup", 0], ["metrics", 2], ["metrics", 4], ["metrics", 4], ["metrics", 4], ["finish", "success"]]
    assert (tmp_path / "main-recorder-node0.json").is_file()
    assert not (tmp_path / "main-recorder-node1.json").exists()

    assert node0["ddp"]["losses"] == node1["ddp"]["losses"] and len(node0["ddp"]["losses"]) == 2
    assert node0["hybrid"]["losses"] == pytest.approx(node0["ddp"]["losses"], rel=1e-5)
