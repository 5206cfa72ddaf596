"""Fixtures and helpers shared by the test modules (a test module never imports another)."""

import json
import os

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest  # noqa: E402
import torch  # noqa: E402
from transformers import GPT2Config, GPT2LMHeadModel, OpenAIGPTConfig, OpenAIGPTLMHeadModel  # noqa: E402

from chatbot.model.modeling import save_model  # noqa: E402
from chatbot.tokenization import load_tokenizer  # noqa: E402

# Tiny models: thread start-up and spin-waits cost more than they save, and on a busy machine
# two intra-op threads made a 2-layer forward 25x slower.
torch.set_num_threads(1)

SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "[speaker1]", "[speaker2]"]
# 7 specials + 9 hanzi + 2 letters and their 2 pieces + 2 punctuation marks = 22 lines.
TINY_VOCAB = SPECIALS + list("你好吗我很谢今天气") + ["o", "k", "##o", "##k", "，", "！"]


@pytest.fixture(scope="session")
def vocab_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("vocab") / "vocab.txt"
    path.write_text("\n".join(TINY_VOCAB) + "\n", encoding="utf-8")
    return path


@pytest.fixture(scope="session")
def tokenizer(vocab_file):
    return load_tokenizer(vocab_file)


def tiny_config(tokenizer, **overrides) -> GPT2Config:
    fields = dict(vocab_size=len(tokenizer), n_positions=64, n_embd=32, n_layer=2, n_head=2,
                  bos_token_id=tokenizer.cls_token_id, eos_token_id=tokenizer.sep_token_id,
                  pad_token_id=tokenizer.pad_token_id)
    fields.update(overrides)
    return GPT2Config(**fields)


@pytest.fixture
def tiny_model(tokenizer):
    torch.manual_seed(0)
    return GPT2LMHeadModel(tiny_config(tokenizer)).eval()


@pytest.fixture
def tiny_model_dir(tmp_path, tiny_model, tokenizer):
    """A complete model folder as chatbot-train writes it, with random weights."""
    return save_model(tmp_path / "tiny-model", tiny_model, tokenizer, {"max_len": 32, "loss_on": "all"})


@pytest.fixture
def chatbot_cache(tmp_path, monkeypatch):
    """Raw corpora are encoded into this test's folder, never into the user's ~/.cache/chatbot."""
    monkeypatch.setenv("CHATBOT_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


TRAIN_DIALOGUES = ["你好\n你好吗\n我很好", "今天天气很好\n谢谢", "你好吗\n我很好\n谢谢", "今天\n天气好"]


@pytest.fixture
def corpus(tmp_path):
    """A 20-dialogue training corpus in the plain-text format."""
    path = tmp_path / "train.txt"
    path.write_text("\n\n".join(TRAIN_DIALOGUES * 5), encoding="utf-8")
    return path


@pytest.fixture
def model_config(tmp_path):
    """A tiny GPT-2 architecture file, as chatbot-train --config reads it."""
    path = tmp_path / "tiny.json"
    path.write_text(json.dumps({"n_layer": 2, "n_embd": 32, "n_head": 2, "n_positions": 64}))
    return path


# CDial-GPT's vocab.txt starts [CLS] [PAD] [SEP] [UNK] and ends [speaker1] [speaker2]; it has no [MASK].
CDIAL_VOCAB = ["[CLS]", "[PAD]", "[SEP]", "[UNK]", *"你好吗我很谢今天气", "a", "b", "1", "，",
               "[speaker1]", "[speaker2]"]


def cdial_config(vocab_size: int) -> dict:
    """config.json as thu-coai/CDial-GPT_LCCC-base has it (transformers 2.x: no model_type), but tiny."""
    return {"afn": "gelu", "attn_pdrop": 0.1, "embd_pdrop": 0.1, "finetuning_task": None,
            "initializer_range": 0.02, "is_decoder": False, "layer_norm_epsilon": 1e-05, "n_ctx": 64,
            "n_embd": 32, "n_head": 2, "n_layer": 2, "n_positions": 64, "n_special": 0, "output_past": True,
            "predict_special_tokens": True, "resid_pdrop": 0.1, "summary_type": "cls_index",
            "torchscript": False, "vocab_size": vocab_size}


@pytest.fixture(scope="module")
def cdial_dir(tmp_path_factory):
    """A CDial-GPT LCCC folder: config.json, pytorch_model.bin and vocab.txt, nothing else."""
    folder = tmp_path_factory.mktemp("CDial-GPT_LCCC-tiny")
    fields = cdial_config(len(CDIAL_VOCAB))
    torch.manual_seed(0)
    model = OpenAIGPTLMHeadModel(OpenAIGPTConfig(**{**fields, "initializer_range": 0.5}))
    (folder / "config.json").write_text(json.dumps(fields), encoding="utf-8")
    torch.save(model.state_dict(), folder / "pytorch_model.bin")
    (folder / "vocab.txt").write_text("\n".join(CDIAL_VOCAB) + "\n", encoding="utf-8")
    return folder


def drain(decoder, out=None):
    """Step a BatchDecoder until it is empty; each key's tokens, appended to those already in `out`."""
    out = {} if out is None else out
    while len(decoder):
        for key, token_id, _ in decoder.step():
            out.setdefault(key, []).append(token_id)
    return out
