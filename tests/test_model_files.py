"""A model folder's files are checked before a model is built from them: the weights against the SHA-256
recorded when chatbot saved them, config.json against the weights' shapes, and the values of
config.json and training_args.json that chatbot reads. Each failure is one error naming the file."""

import hashlib
import json
import random
import shutil

import pytest

from chatbot.cli import chat_main
from chatbot.model.modeling import load_model
from chatbot.train.checkpoint import resolve_resume, save_checkpoint

COPY_AGAIN = "copy the folder again from where it came from, or use another checkpoint"
FIX_CONFIG = "in config.json, or put back the config.json these weights came with"


def flip_bytes(path, n=2000):
    """Flip the lowest bit of `n` bytes of a safetensors file's tensor data (past its header), as a bad
    disk or copy would: the file still parses and every value stays finite, but the weights are wrong."""
    data = bytearray(path.read_bytes())
    start = 8 + int.from_bytes(data[:8], "little")  # an 8-byte header length, then the JSON header
    for i in random.Random(0).sample(range(start, len(data)), n):
        data[i] ^= 1
    path.write_bytes(data)


def chat_error(folder, capsys, tmp_path) -> tuple[int, str]:
    code = chat_main(["--model", str(folder), "--device", "cpu", "--no-transcript",
                      "--history-file", str(tmp_path / "history")])
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return code, err.splitlines()[-1]


def load_error(folder) -> str:
    with pytest.raises(ValueError) as e:
        load_model(folder)
    return str(e.value)


def damaged(weights) -> str:
    return (f"{weights} is damaged: its SHA-256 differs from the one recorded in weights.sha256 when chatbot "
            f"saved it, so some of its bytes changed since; {COPY_AGAIN} (if you replaced the weights on "
            "purpose, delete weights.sha256)")


# --- the weights' checksum ------------------------------------------------------------------------------

def test_a_saved_folder_lists_its_weights_sha256_as_sha256sum_writes_it(tiny_model_dir):
    digest = hashlib.sha256((tiny_model_dir / "model.safetensors").read_bytes()).hexdigest()
    assert (tiny_model_dir / "weights.sha256").read_text() == f"{digest}  model.safetensors\n"


def test_flipped_bytes_in_our_weights_are_named_not_chatted_with(tiny_model_dir, capsys, tmp_path):
    flip_bytes(tiny_model_dir / "model.safetensors")
    assert chat_error(tiny_model_dir, capsys, tmp_path) == (
        2, f"error: {damaged(tiny_model_dir / 'model.safetensors')}")


def test_a_folder_without_weights_sha256_loads_unchecked_as_before(tiny_model_dir, tiny_model):
    # Another tool's folder, or one saved before chatbot wrote weights.sha256.
    (tiny_model_dir / "weights.sha256").unlink()
    flip_bytes(tiny_model_dir / "model.safetensors")
    model = load_model(tiny_model_dir)[0]
    assert model.num_parameters() == tiny_model.num_parameters()


def test_a_damaged_checksum_list_is_named(tiny_model_dir):
    (tiny_model_dir / "weights.sha256").write_text("not a checksum\n")
    assert load_error(tiny_model_dir) == (
        f"{tiny_model_dir / 'weights.sha256'}: line 1 is not `<64 hex digits>  <file name>` as chatbot "
        f"writes it ('not a checksum'); it is damaged: {COPY_AGAIN} (or delete weights.sha256 to load the "
        "weights unchecked)")


def test_resume_auto_skips_a_damaged_checkpoint_and_names_it(tiny_model, tokenizer, tmp_path, capsys):
    state = {"optimizer": {}, "scheduler": {}, "scaler": {}, "progress": {}, "rng": []}
    for step in (1, 2):
        save_checkpoint(tmp_path, step, tiny_model, tokenizer, {"max_len": 32}, state)
    weights = tmp_path / "checkpoint-2" / "model.safetensors"
    flip_bytes(weights)
    assert resolve_resume("auto", tmp_path) == tmp_path / "checkpoint-1"
    assert capsys.readouterr().err == f"warning: skipping {tmp_path / 'checkpoint-2'}: {damaged(weights)}\n"
    with pytest.raises(ValueError) as e:
        resolve_resume(str(tmp_path / "checkpoint-2"), tmp_path)
    assert str(e.value) == f"cannot resume from {tmp_path / 'checkpoint-2'}: {damaged(weights)}"


# --- config.json against the weights, and the values chatbot reads -------------------------------------

def edit_json(path, **fields):
    path.write_text(json.dumps({**json.loads(path.read_text(encoding="utf-8")), **fields}), encoding="utf-8")


@pytest.mark.parametrize("field, value, saved, shown_by", [
    ("n_embd", 64, 32, "wte.weight of shape [22, 32]"),
    ("vocab_size", 30, 22, "wte.weight of shape [22, 32]"),
    ("n_positions", 128, 64, "wpe.weight of shape [64, 32]"),
    ("n_inner", 64, 128, "h.0.mlp.c_fc.weight of shape [32, 128]"),
    ("n_layer", 1, 2, "layers h.0 to h.1"),  # fewer layers used to load, silently dropping the others
])
def test_a_config_that_does_not_describe_its_weights_names_the_field(tiny_model_dir, field, value, saved,
                                                                     shown_by):
    edit_json(tiny_model_dir / "config.json", **{field: value})
    assert load_error(tiny_model_dir) == (
        f"{tiny_model_dir / 'config.json'}: {field} is {value}, but the weights were saved "
        f"with {field} {saved} ({shown_by}). Set \"{field}\": {saved} {FIX_CONFIG}")


def test_a_pytorch_bin_of_other_sizes_than_its_config_is_not_called_damaged(cdial_dir, tmp_path):
    folder = shutil.copytree(cdial_dir, tmp_path / "cdial")
    edit_json(folder / "config.json", n_embd=64)
    assert load_error(folder) == (
        f"{folder}: its weights do not fit a openai-gpt model of config.json's sizes (n_layer, n_embd, "
        "n_positions, vocab_size): put back the config.json these weights came with")


def test_a_model_type_that_is_not_a_name_is_one_error(tiny_model_dir, capsys, tmp_path):
    edit_json(tiny_model_dir / "config.json", model_type=["gpt2"])
    assert chat_error(tiny_model_dir, capsys, tmp_path) == (2, (
        f"error: {tiny_model_dir / 'config.json'}: model_type must be one name such as \"gpt2\", got "
        '["gpt2"]: chatbot loads gpt2 (GPT-2, e.g. uer/gpt2-chinese-cluecorpussmall) and openai-gpt '
        "(CDial-GPT, e.g. thu-coai/CDial-GPT_LCCC-base)"))


@pytest.mark.parametrize("field, value, allowed", [
    ("max_len", "long", "a positive integer (the --max-len it was trained with)"),
    ("max_len", 0, "a positive integer (the --max-len it was trained with)"),
    ("layout", "weird", '"chitchat" or "cdial"'),
    ("loss_on", "most", '"all" or "replies" or "last"'),
    ("speaker_ids", "yes", "true or false"),
])
def test_a_bad_value_in_training_args_names_the_file_and_field(tiny_model_dir, capsys, tmp_path, field, value,
                                                               allowed):
    edit_json(tiny_model_dir / "training_args.json", **{field: value})
    assert chat_error(tiny_model_dir, capsys, tmp_path) == (2, (
        f"error: {tiny_model_dir / 'training_args.json'}: {field} is {json.dumps(value)}, but it must be "
        f"{allowed} or null; put back the value chatbot-train wrote (the model card, README.md beside it, "
        "names the settings)"))
