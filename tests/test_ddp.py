import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_two_process_gloo_training_agrees_and_saves_once(tmp_path, vocab_file):
    corpus = tmp_path / "train.txt"
    corpus.write_text("\n\n".join(["你好\n你好吗\n我很好", "今天天气很好\n谢谢"] * 10), encoding="utf-8")
    config = tmp_path / "tiny.json"
    config.write_text(json.dumps({"n_layer": 2, "n_embd": 32, "n_head": 2, "n_positions": 64}))
    out = tmp_path / "out"
    env = dict(os.environ, PYTHONPATH=str(ROOT), CHATBOT_CACHE=str(tmp_path / "cache"), OMP_NUM_THREADS="1")
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
         str(ROOT / "tests" / "ddp_train_script.py"), str(corpus), str(config), str(vocab_file), str(out)],
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
