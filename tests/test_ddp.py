import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from chatbot.model.modeling import load_model
from chatbot.train.checkpoint import save_checkpoint

ROOT = Path(__file__).resolve().parents[1]


# LoRA from a config: each rank starts from other random weights (its seed adds the rank); DDP gives every
# rank rank 0's, the frozen base included, and rank 0 saves those as the run's base/.
@pytest.mark.parametrize("extra", [{}, pytest.param({"lora_r": 4}, marks=pytest.mark.slow)], ids=["full", "lora"])
def test_two_process_gloo_training_agrees_and_saves_once(tmp_path, vocab_file, extra):
    corpus = tmp_path / "train.txt"
    corpus.write_text("\n\n".join(["你好\n你好吗\n我很好", "今天天气很好\n谢谢"] * 10), encoding="utf-8")
    config = tmp_path / "tiny.json"
    config.write_text(json.dumps({"n_layer": 2, "n_embd": 32, "n_head": 2, "n_positions": 64}))
    out = tmp_path / "out"
    env = dict(os.environ, PYTHONPATH=str(ROOT), CHATBOT_CACHE=str(tmp_path / "cache"), OMP_NUM_THREADS="1")
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
         str(ROOT / "tests" / "ddp_train_script.py"), str(corpus), str(config), str(vocab_file), str(out),
         json.dumps(extra)],
        env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    # 16 training examples, batch 2 per rank, 2 ranks -> 4 steps per epoch, 2 epochs.
    assert ranks[0]["steps"] == ranks[1]["steps"] == 8
    assert ranks[0]["sum"] == ranks[1]["sum"] and ranks[0]["abs"] == ranks[1]["abs"]
    checkpoints = sorted(p.name for p in out.iterdir() if p.name.startswith("checkpoint-"))
    assert checkpoints == ["checkpoint-4", "checkpoint-8"]
    metrics = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in metrics if "loss" in m] == list(range(1, 9))  # one writer: rank 0
    if extra:  # the adapter alone, over base/: the weights both ranks trained
        assert (out / "checkpoint-8" / "adapter_config.json").is_file() and (out / "base").is_dir()
        merged = load_model(out / "final" / "adapter")[0].state_dict()
        final = load_model(out / "final")[0].state_dict()
        assert all(torch.equal(merged[k], final[k]) for k in final)


# Each rank: open --output-dir with --resume auto and write down the checkpoint it would resume from.
# Rank 0's repair is slowed down, so a rank that does not wait for it lists the folder before it is repaired.
RESUME_RANK = r"""
import os, sys, time
from pathlib import Path
import chatbot.train.checkpoint as checkpoint
from chatbot.distributed import cleanup, setup_distributed
info, _ = setup_distributed("cpu")
if info.is_main:
    repair = checkpoint.recover_stale_in
    checkpoint.recover_stale_in = lambda *args: (time.sleep(1), repair(*args))[1]
_, resume_dir = checkpoint.open_output_dir(sys.argv[1], resume="auto", overwrite=False, info=info)
Path(sys.argv[2], f"rank{info.rank}").write_text(resume_dir.name)
cleanup()
"""


def test_every_rank_resumes_from_the_checkpoint_rank_0_puts_back(tmp_path, tiny_model, tokenizer):
    out = tmp_path / "out"
    state = {"optimizer": {}, "scheduler": {}, "scaler": {}, "progress": {}, "rng": []}
    for step in (2, 4):
        save_checkpoint(out, step, tiny_model, tokenizer, {}, state)
    # Killed while replacing checkpoint-4, between its two renames: only `.checkpoint-4.old` is left.
    (out / "checkpoint-4").rename(out / ".checkpoint-4.old")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1", MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port),
               WORLD_SIZE="2")
    ranks = [subprocess.Popen([sys.executable, "-c", RESUME_RANK, str(out), str(tmp_path)], stderr=subprocess.PIPE,
                              text=True, env=dict(env, RANK=str(r), LOCAL_RANK=str(r))) for r in (0, 1)]
    errors = [rank.communicate(timeout=120)[1] for rank in ranks]
    assert [rank.returncode for rank in ranks] == [0, 0], errors
    assert [(tmp_path / f"rank{r}").read_text() for r in (0, 1)] == ["checkpoint-4", "checkpoint-4"]
    assert sorted(p.name for p in out.iterdir()) == ["checkpoint-2", "checkpoint-4"]
