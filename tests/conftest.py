import os

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest  # noqa: E402
import torch  # noqa: E402
from transformers import GPT2Config, GPT2LMHeadModel  # noqa: E402

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
