"""Absurd model sizes are refused from the config's numbers, before anything is built.

A regression would build the model instead. The tests with sizes no machine holds run in a child
process that may map 4 GB at most and must end within five minutes, so a regression fails instead of
eating the machine; the others patch the free memory down to a few MB and use models of a few MB.
"""

import json
import resource
import subprocess
import sys

import pytest
import torch
from transformers import GPT2Config, GPT2LMHeadModel, OpenAIGPTConfig, OpenAIGPTLMHeadModel

from chatbot.cli import train_main
from chatbot.model import limits
from tests.conftest import tiny_config

FIX_POSITIONS = "Lower n_positions (GPT-2 has 1024; chatbot-train reads --max-len tokens, 256 by default)"


@pytest.mark.parametrize("config", [
    GPT2Config(vocab_size=22, n_positions=64, n_embd=32, n_layer=2, n_head=2),
    GPT2Config(vocab_size=22, n_positions=64, n_embd=32, n_layer=3, n_head=2, n_inner=48),
    GPT2Config(vocab_size=22, n_positions=64, n_embd=32, n_layer=2, n_head=2, tie_word_embeddings=False),
    OpenAIGPTConfig(vocab_size=22, n_positions=64, n_embd=32, n_layer=2, n_head=2),
])
def test_the_parameter_count_from_the_config_is_the_built_models(config):
    model_class = GPT2LMHeadModel if config.model_type == "gpt2" else OpenAIGPTLMHeadModel
    with torch.device("meta"):  # shapes only
        model = model_class(config)
    assert limits.count_parameters(config) == model.num_parameters()


def test_the_tiny_test_model_has_28224_parameters(tokenizer):
    assert limits.count_parameters(tiny_config(tokenizer)) == 28224


def _config_file(tmp_path, **fields):
    path = tmp_path / "big.json"
    path.write_text(json.dumps({"n_layer": 2, "n_embd": 32, "n_head": 2, "n_positions": 64, **fields}))
    return path


def _train(corpus, config, vocab_file, out):
    return train_main(["--train", str(corpus), "--config", str(config), "--vocab", str(vocab_file),
                       "--output-dir", str(out), "--quiet", "--max-steps", "1"])


@pytest.mark.parametrize("fields, free, message", [
    # 3 226 176 parameters: 13 MB to build, 52 MB to train.
    ({"n_positions": 100_000}, 10**6,
     "n_positions 100000 × n_embd 32 makes 3.2 million of the model's 3.2 million parameters; building it "
     f"needs 13 MB but 1 MB is free in RAM. {FIX_POSITIONS}"),
    ({"n_positions": 100_000}, 3 * 10**7,
     "n_positions 100000 × n_embd 32 makes 3.2 million of the model's 3.2 million parameters; training it "
     f"needs (weights, gradients and AdamW's two moments) 52 MB but 30 MB is free in RAM or on the GPU. "
     f"{FIX_POSITIONS}"),
    # 6 340 608 parameters, all but 22 016 in the layers (and the final layer norm).
    ({"n_layer": 8, "n_embd": 256, "n_head": 4}, 10**6,
     "n_layer 8 × n_embd 256 (about 12 × n_embd² a layer) makes 6.3 million of the model's 6.3 million "
     "parameters; building it needs 25 MB but 1 MB is free in RAM. Lower n_layer or n_embd "
     "(configs/base.json, GPT-2's size, has 12 × 768)"),
])
def test_a_model_that_cannot_fit_is_refused_naming_the_field(corpus, vocab_file, tmp_path, capsys,
                                                            monkeypatch, fields, free, message):
    monkeypatch.setattr(limits, "available_memory", lambda: free)
    config = _config_file(tmp_path, **fields)
    assert _train(corpus, config, vocab_file, tmp_path / "out") == 2
    assert capsys.readouterr().err.splitlines()[-1] == f"error: {config}: {message}"


def test_a_model_that_fits_is_built(corpus, vocab_file, tmp_path, monkeypatch, chatbot_cache):
    monkeypatch.setattr(limits, "available_memory", lambda: 52 * 10**6)  # the 3.2 M model needs 51.6 MB
    assert _train(corpus, _config_file(tmp_path, n_positions=100_000), vocab_file, tmp_path / "out") == 0


def test_inference_on_a_gpu_is_checked_against_its_free_memory(tokenizer, monkeypatch):
    monkeypatch.setattr(limits, "available_memory", lambda: 10**12)
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device=None: (10**6, 80 * 10**9))
    config = tiny_config(tokenizer, n_positions=100_000)
    with pytest.raises(ValueError) as e:
        limits.check_model_fits(config, "m/config.json", device=torch.device("cuda:0"), dtype="bf16")
    assert str(e.value) == (
        "m/config.json: n_positions 100000 × n_embd 32 makes 3.2 million of the model's 3.2 million "
        f"parameters; running it in bf16 needs 6 MB but 1 MB is free on cuda:0. {FIX_POSITIONS}")


def _run_capped(main: str, *args) -> subprocess.CompletedProcess:
    """chatbot.cli's `main(args)` in a child that may map 4 GB at most (a regression that builds the
    model fails there) and must finish in five minutes (one that spins fails too; it takes seconds)."""
    def cap():
        resource.setrlimit(resource.RLIMIT_AS, (4 << 30, 4 << 30))

    code = f"import sys; from chatbot.cli import {main}; sys.exit({main}(sys.argv[1:]))"
    return subprocess.run([sys.executable, "-c", code, *map(str, args)], preexec_fn=cap, input="",
                          capture_output=True, text=True, timeout=300)


def test_the_issues_100_million_positions_are_refused_before_any_allocation(corpus, vocab_file, tmp_path):
    # configs/tiny.json's sizes with 10^8 positions: 102 GB to build (25.6 billion parameters), 410 GB
    # to train; once the OOM killer ended it at 23.7 GB.
    config = _config_file(tmp_path, n_layer=4, n_embd=256, n_head=4, n_positions=100_000_000)
    done = _run_capped("train_main", "--train", corpus, "--config", config, "--vocab", vocab_file,
                       "--output-dir", tmp_path / "out", "--quiet")
    error = done.stderr.splitlines()[-1]
    assert done.returncode == 2 and "Traceback" not in done.stderr, done.stderr
    assert error.startswith(f"error: {config}: n_positions 100000000 × n_embd 256 makes 25.6 billion of the "
                            "model's 25.6 billion parameters; ")
    assert error.endswith(f"is free in RAM or on the GPU. {FIX_POSITIONS}") or error.endswith(
        f"is free in RAM. {FIX_POSITIONS}")


def test_a_million_layers_in_a_config_are_refused_at_once(corpus, vocab_file, tmp_path):
    config = _config_file(tmp_path, n_layer=1_000_000, n_embd=8)  # 872 M parameters: it is the time
    done = _run_capped("train_main", "--train", corpus, "--config", config, "--vocab", vocab_file,
                       "--output-dir", tmp_path / "out", "--quiet")
    assert (done.returncode, done.stderr.splitlines()[-1]) == (2, (
        f"error: {config}: n_layer 1000000 is more layers than chatbot builds (at most 1024; the deepest "
        "public GPT models have about 100): lower n_layer")), done.stderr


def test_a_model_folder_whose_config_claims_a_million_layers_is_refused_from_the_weights_header(
        tiny_model_dir, tmp_path):
    config = tiny_model_dir / "config.json"
    config.write_text(config.read_text().replace('"n_layer": 2', '"n_layer": 1000000'))
    done = _run_capped("chat_main", "--model", tiny_model_dir, "--device", "cpu", "--no-transcript",
                       "--history-file", tmp_path / "history")
    assert (done.returncode, done.stderr.splitlines()[-1]) == (2, (
        f"error: {config}: n_layer is 1000000, but the weights were saved with n_layer 2 (layers h.0 to "
        'h.1). Set "n_layer": 2 in config.json, or put back the config.json these weights came with')), \
        done.stderr
