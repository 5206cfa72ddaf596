"""Run under torchrun by test_ddp.py: train, then record this rank's view of the weights."""

import json
import os
import sys

import torch

from chatbot.config import TrainConfig
from chatbot.train.loop import train

corpus, config, vocab, out = sys.argv[1:5]
extra = json.loads(sys.argv[5]) if len(sys.argv) > 5 else {}  # more TrainConfig fields, e.g. {"lora_r": 4}
result = train(TrainConfig(train=corpus, config=config, vocab=vocab, output_dir=out, epochs=2, batch_size=2,
                           device="cpu", quiet=True, log_steps=1, valid_ratio=0.2, save_steps=4, **extra))
weights = torch.cat([p.detach().flatten() for p in result.model.parameters()])
rank = os.environ["RANK"]
with open(os.path.join(out, "..", f"rank{rank}.json"), "w") as f:
    json.dump({"steps": result.steps, "sum": weights.double().sum().item(), "abs": weights.double().abs().sum().item()}, f)
