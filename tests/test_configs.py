from pathlib import Path

import pytest
import torch

from chatbot.model.limits import count_parameters
from chatbot.model.modeling import build_model, load_gpt2_config
from chatbot.tokenization import load_tokenizer

pytestmark = pytest.mark.transformers_api

ROOT = Path(__file__).resolve().parents[1]
EXPECTED = {"tiny.json": (4, 256, 4, 256), "small.json": (6, 512, 8, 512), "base.json": (12, 768, 12, 1024)}


@pytest.mark.parametrize("name", sorted(p.name for p in (ROOT / "configs").glob("*.json")))
def test_every_config_builds_a_model_tied_to_the_vocab(name):
    tokenizer = load_tokenizer(ROOT / "vocab" / "vocab.txt")
    config = load_gpt2_config(ROOT / "configs" / name, tokenizer)
    assert (config.n_layer, config.n_embd, config.n_head, config.n_positions) == EXPECTED[name]
    assert (config.vocab_size, config.bos_token_id, config.eos_token_id,
            config.pad_token_id) == (7293, 2, 3, 0)
    assert not hasattr(config, "_comment")
    with torch.device("meta"):  # shapes only: no memory, no time
        model = build_model(config)
    assert model.get_input_embeddings().num_embeddings == 7293
    assert count_parameters(config) == model.num_parameters()  # what the memory check counts before building


def test_bad_config_files(tmp_path, tokenizer):
    (tmp_path / "a.json").write_text("{not json")
    with pytest.raises(ValueError, match="not a valid JSON model config"):
        load_gpt2_config(tmp_path / "a.json", tokenizer)
    (tmp_path / "b.json").write_text('{"n_embd": 30, "n_head": 4}')
    with pytest.raises(ValueError, match=r"n_embd \(30\) must be divisible by n_head \(4\)"):
        load_gpt2_config(tmp_path / "b.json", tokenizer)
