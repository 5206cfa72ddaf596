"""Public Chinese checkpoints: CDial-GPT's LCCC models (openai-gpt) and uer's gpt2-chinese family,
as tiny random models saved in the layouts their Hub repositories use, and Hub ids."""

import json
import shutil

import pytest
import torch
from transformers import GPT2Config, GPT2LMHeadModel, OpenAIGPTLMHeadModel

from chatbot.bot import ChatBot
from chatbot.cli import chat_main, preprocess_main, train_main
from chatbot.data.dataset import TokenDataset
from chatbot.evaluate import evaluate_model
from chatbot.model.modeling import dialogue_layout, load_model
from chatbot.tokenization import load_tokenizer, split_characters, vocab_fingerprint
from tests.conftest import CDIAL_VOCAB, cdial_config, drain

pytestmark = pytest.mark.transformers_api

CLS, PAD, SEP, UNK, SPK1, SPK2 = 0, 1, 2, 3, 17, 18  # their ids in CDIAL_VOCAB
# uer/gpt2-chinese-*: bert-base-chinese's vocab.txt ([PAD], [unusedN], [UNK], [CLS], [SEP], [MASK], ...).
UER_VOCAB = ["[PAD]", "[unused1]", "[unused2]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *"你好吗我很谢今天气"]


@pytest.fixture(scope="module")
def uer_dir(tmp_path_factory):
    """A uer/gpt2-chinese-* folder: GPT-2 config with bos/eos 50256, weights and a vocab.txt only."""
    folder = tmp_path_factory.mktemp("gpt2-chinese-tiny")
    torch.manual_seed(0)
    config = GPT2Config(vocab_size=len(UER_VOCAB), n_positions=64, n_embd=32, n_layer=2, n_head=2)
    GPT2LMHeadModel(config).save_pretrained(folder)
    (folder / "vocab.txt").write_text("\n".join(UER_VOCAB) + "\n", encoding="utf-8")
    return folder


def test_a_cdial_folder_loads_as_openai_gpt_with_its_weights(cdial_dir):
    model, tokenizer, _ = load_model(cdial_dir)
    assert isinstance(model, OpenAIGPTLMHeadModel)
    saved = torch.load(cdial_dir / "pytorch_model.bin")
    assert torch.equal(model.transformer.tokens_embed.weight, saved["transformer.tokens_embed.weight"])
    assert len(tokenizer) == len(CDIAL_VOCAB)  # no [MASK] appended past the embedding


def test_chatting_with_a_cdial_folder_uses_its_layout(cdial_dir):
    bot = ChatBot.from_pretrained(cdial_dir, device="cpu", temperature=0, max_new_tokens=4, min_new_tokens=4)
    seen = []
    bot._forward.model.transformer.tokens_embed.register_forward_pre_hook(
        lambda m, args: seen.append(args[0][0].tolist()))
    bot.reply("你好", history=["谢谢", "很好"])
    # [CLS] [speaker1] 谢谢 [speaker2] 很好 [speaker1] 你好 [speaker2]: the reply is speaker 2's turn.
    context = [CLS, SPK1, 9, 9, SPK2, 8, 5, SPK1, 4, 5, SPK2]
    types = [CLS, SPK1, SPK1, SPK1, SPK2, SPK2, SPK2, SPK1, SPK1, SPK1, SPK2]
    # The embedding reads the ids, then the token types; then one new token per step (KV cache).
    assert seen[:2] == [context, types]
    assert [len(ids) for ids in seen[2:]] == [1, 1] * 3 and all(t == [SPK2] for t in seen[3::2])


def test_the_openai_gpt_kv_cache_gives_the_models_own_logits(cdial_dir):
    from chatbot.generate.kvcache import preallocated_cache
    from chatbot.model.openai_gpt import openai_gpt_logits

    model = load_model(cdial_dir)[0]
    ids = torch.tensor([[CLS, SPK1, 4, 5, 6, SPK2, 7, 8, 9]])
    types = torch.tensor([[CLS, SPK1, SPK1, SPK1, SPK1, SPK2, SPK2, SPK2, SPK2]])
    cache = preallocated_cache(2, 9)
    steps = [openai_gpt_logits(model, ids[:, :6], cache, token_type_ids=types[:, :6])]
    steps += [openai_gpt_logits(model, ids[:, t:t + 1], cache, token_type_ids=types[:, t:t + 1])
              for t in range(6, 9)]
    with torch.inference_mode():
        full = model(input_ids=ids, token_type_ids=types).logits[0]
    for t, logits in zip(range(5, 9), steps):
        torch.testing.assert_close(logits[0], full[t], rtol=1e-4, atol=1e-4)


def test_openai_gpt_padding_is_masked(cdial_dir):
    from chatbot.generate.kvcache import preallocated_cache
    from chatbot.model.openai_gpt import openai_gpt_logits

    model = load_model(cdial_dir)[0]
    ids = torch.tensor([[CLS, SPK1, 4, 5, SPK2]])
    padded = torch.tensor([[PAD, PAD, PAD, CLS, SPK1, 4, 5, SPK2]])
    mask = padded != PAD
    alone = openai_gpt_logits(model, ids, preallocated_cache(2, 5))
    positions = (mask.cumsum(1) - 1).clamp(min=0)
    torch.testing.assert_close(openai_gpt_logits(model, padded, preallocated_cache(2, 8),
                                                 position_ids=positions, attention_mask=mask), alone)
    # Unmasked, the padding changes the logits (so the check above can fail).
    seen = openai_gpt_logits(model, padded, preallocated_cache(2, 8), position_ids=positions)
    assert not torch.allclose(seen, alone, atol=1e-3)


def test_cdial_replies_batched_are_the_replies_alone(cdial_dir):
    from chatbot.generate.batching import BatchDecoder, NewRows
    from chatbot.options import SamplingOptions
    from chatbot.generate.sampling import generate_tokens

    model = load_model(cdial_dir)[0]
    prompts = [([CLS, SPK1, 4, 5, SPK2], [CLS, SPK1, SPK1, SPK1, SPK2]),
               ([CLS, SPK1, 9, SPK2, 7, 8, 10, SPK1, 4, SPK2],
                [CLS] + [SPK1] * 2 + [SPK2] * 4 + [SPK1] * 2 + [SPK2])]
    options = SamplingOptions(temperature=0.9, top_k=0, max_new_tokens=6, min_new_tokens=6)
    fields = {k: v for k, v in vars(options).items() if k != "num_candidates"}
    alone = [[step[0] for step in generate_tokens(model, ids, eos_id=SEP, token_type_ids=types,
                                                  reply_type_id=SPK2,
                                                  generator=torch.Generator().manual_seed(i), **fields)]
             for i, (ids, types) in enumerate(prompts)]
    decoder = BatchDecoder(model, eos_id=SEP)
    decoder.add_many([NewRows([i], ids, options, [i], types, SPK2) for i, (ids, types) in enumerate(prompts)])
    out = drain(decoder)
    assert [out[0], out[1]] == alone and alone[0] != alone[1]


def test_greedy_cdial_reply_matches_a_step_by_step_argmax(cdial_dir):
    bot = ChatBot.from_pretrained(cdial_dir, device="cpu", temperature=0, min_new_tokens=0, max_new_tokens=6,
                                  no_repeat_ngram_size=0)  # plain argmax, as the loop below
    model = bot._forward.model
    ids = [CLS, SPK1, 4, 5]
    ids, types = ids + [SPK2], [CLS, SPK1, SPK1, SPK1, SPK2]
    reply = []
    with torch.inference_mode():
        for _ in range(6):
            logits = model(input_ids=torch.tensor([ids]), token_type_ids=torch.tensor([types])).logits[0, -1]
            logits[[CLS, PAD, UNK, SPK1, SPK2]] = -float("inf")  # never shown to a user
            next_id = int(logits.argmax())
            if next_id == SEP:
                break
            reply.append(next_id)
            ids, types = ids + [next_id], types + [SPK2]
    expected = "".join(CDIAL_VOCAB[i] for i in reply)
    assert bot.reply("你好", history=[]) == expected


def test_cdial_text_is_read_one_character_at_a_time(cdial_dir):
    """CDial-GPT's interact.py drops spaces and splits every character ("a b 1 1"), so Latin letters
    and digits are not [UNK] words; replies are joined back without spaces."""
    _, tokenizer, _ = load_model(cdial_dir)
    assert tokenizer.tokenize("你好 ab11") == ["你", "好", "a", "b", "1", "1"]


def test_chatbot_chat_with_a_cdial_folder(cdial_dir, monkeypatch, capsys):
    monkeypatch.setattr("sys.stdin", __import__("io").StringIO("你好\n"))
    assert chat_main(["--model", str(cdial_dir), "--device", "cpu", "--no-transcript", "--seed", "0"]) == 0
    reply = capsys.readouterr().out.strip()
    assert reply and set(reply) <= set("".join(CDIAL_VOCAB[4:17]))


def test_a_uer_gpt2_folder_loads_with_our_special_ids(uer_dir):
    model, tokenizer, _ = load_model(uer_dir)
    assert isinstance(model, GPT2LMHeadModel)
    assert (model.config.bos_token_id, model.config.eos_token_id, model.config.pad_token_id) == (4, 5, 0)
    bot = ChatBot(model, tokenizer)
    assert bot.reply("你好", seed=0)


def test_an_unsupported_model_type_is_one_clear_error(tmp_path, uer_dir):
    folder = tmp_path / "bert"
    folder.mkdir()
    for name in ("model.safetensors", "vocab.txt"):
        (folder / name).write_bytes((uer_dir / name).read_bytes())
    (folder / "config.json").write_text(json.dumps({"model_type": "bert"}), encoding="utf-8")
    with pytest.raises(ValueError, match=r"bert.*model_type 'bert' is not supported: chatbot loads gpt2 "
                                         r"\(GPT-2, e.g. uer/gpt2-chinese-cluecorpussmall\) and openai-gpt"):
        load_model(folder)


def test_weights_of_another_architecture_are_refused_not_randomly_initialised(tmp_path, cdial_dir):
    folder = tmp_path / "mislabelled"
    folder.mkdir()
    for name in ("pytorch_model.bin", "vocab.txt"):
        (folder / name).write_bytes((cdial_dir / name).read_bytes())
    fields = {k: v for k, v in cdial_config(len(CDIAL_VOCAB)).items() if k != "afn"}
    (folder / "config.json").write_text(json.dumps({**fields, "model_type": "gpt2"}), encoding="utf-8")
    with pytest.raises(ValueError,
                       match=r"mislabelled: its weights do not fit a gpt2 model \(\d+ tensors missing"):
        load_model(folder)


def test_an_unreachable_hub_id_is_one_line(capsys):
    code = chat_main(["--model", "nobody-here/no-such-model", "--device", "cpu", "--no-transcript"])
    err = capsys.readouterr().err
    assert code == 2
    assert err.count("\n") == 1 and "Traceback" not in err
    assert err.startswith("error: model folder not found: nobody-here/no-such-model; "
                          "as a Hugging Face Hub id, the Hub is offline (HF_HUB_OFFLINE=1) "
                          "and it is not in the local cache")


def test_a_missing_local_path_keeps_the_folder_message(tmp_path):
    with pytest.raises(FileNotFoundError, match="model folder not found"):
        load_model(tmp_path / "nope")
    with pytest.raises(FileNotFoundError, match="model folder not found"):
        load_model("./model/final-missing")


def test_cdial_collate_builds_cdial_gpts_training_input(cdial_dir):
    from chatbot.data.dataset import make_collate

    tokenizer = load_model(cdial_dir)[1]
    stored = [torch.tensor([CLS, 4, 5, SEP, 9, SEP]).numpy(), torch.tensor([CLS, 4, SEP]).numpy()]
    batch = make_collate(tokenizer, loss_on="last", layout="cdial")(stored)
    # [CLS] [speaker1] 你好 [speaker2] 谢 [SEP]; loss on the reply and its [SEP] only, as CDial-GPT's train.py.
    assert batch["input_ids"].tolist() == [[CLS, SPK1, 4, 5, SPK2, 9, SEP],
                                           [CLS, SPK1, 4, SEP, PAD, PAD, PAD]]
    assert batch["token_type_ids"].tolist() == [[CLS, SPK1, SPK1, SPK1, SPK2, SPK2, SPK2],
                                                [CLS, SPK1, SPK1, SPK1, 0, 0, 0]]
    assert batch["labels"].tolist() == [[-100] * 5 + [9, SEP], [-100, -100, 4, SEP, -100, -100, -100]]
    assert batch["attention_mask"].tolist() == [[1] * 7, [1] * 4 + [0] * 3]
    everything = make_collate(tokenizer, loss_on="all", layout="cdial")(stored[:1])
    # Never on [CLS] or a speaker token.
    assert everything["labels"].tolist() == [[-100, -100, 4, 5, -100, 9, SEP]]


def test_fine_tuning_a_cdial_folder_keeps_its_architecture_and_layout(cdial_dir, tmp_path, chatbot_cache):
    from chatbot.config import TrainConfig
    from chatbot.train.loop import train

    corpus = tmp_path / "train.txt"
    corpus.write_text("\n\n".join(["你好\n你好吗\n我很好", "今天天气很好\nab 11"] * 4), encoding="utf-8")
    result = train(TrainConfig(train=str(corpus), pretrained=str(cdial_dir), output_dir=str(tmp_path / "out"),
                               epochs=1, batch_size=4, loss_on="last", quiet=True))
    final = tmp_path / "out" / "final"
    assert result.steps == 2
    assert json.loads((final / "training_args.json").read_text())["layout"] == "cdial"
    tuned, tokenizer, _ = load_model(final)
    assert isinstance(tuned, OpenAIGPTLMHeadModel)
    assert not torch.equal(tuned.transformer.h[1].attn.c_attn.weight,
                           torch.load(cdial_dir / "pytorch_model.bin")["transformer.h.1.attn.c_attn.weight"])
    assert tokenizer.tokenize("ab 11") == ["a", "b", "1", "1"]
    assert ChatBot(tuned, tokenizer, training_args={"layout": "cdial"}).reply("你好", seed=0)


def test_fine_tuning_a_uer_gpt2_folder_by_hub_style_path(uer_dir, tmp_path, chatbot_cache):
    from chatbot.config import TrainConfig
    from chatbot.train.loop import train

    corpus = tmp_path / "train.txt"
    corpus.write_text("\n\n".join(["你好\n你好吗\n我很好", "今天天气很好\n谢谢"] * 4), encoding="utf-8")
    train(TrainConfig(train=str(corpus), pretrained=str(uer_dir), output_dir=str(tmp_path / "out"), epochs=1,
                      batch_size=4, quiet=True))
    args = json.loads((tmp_path / "out" / "final" / "training_args.json").read_text())
    config = json.loads((tmp_path / "out" / "final" / "config.json").read_text())
    assert (args["layout"], config["model_type"]) == ("chitchat", "gpt2")
    assert (config["bos_token_id"], config["eos_token_id"]) == (4, 5)  # [CLS]/[SEP], not uer's 50256


@pytest.fixture
def hub_cache(tmp_path, monkeypatch, uer_dir, cdial_dir):
    """A Hugging Face cache holding uer/gpt2-tiny and thu-coai/CDial-GPT_tiny, as a download leaves it."""
    import huggingface_hub.constants

    for repo_id, folder in [("uer/gpt2-tiny", uer_dir), ("thu-coai/CDial-GPT_tiny", cdial_dir)]:
        repo = tmp_path / "hub" / f"models--{repo_id.replace('/', '--')}"
        (repo / "refs").mkdir(parents=True)
        (repo / "refs" / "main").write_text("0" * 40)
        shutil.copytree(folder, repo / "snapshots" / ("0" * 40))
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub"))


def test_hub_ids_load_from_the_cache_offline(hub_cache, chatbot_cache, tmp_path):
    bot = ChatBot.from_pretrained("thu-coai/CDial-GPT_tiny", device="cpu", max_new_tokens=4)
    assert isinstance(bot._forward.model, OpenAIGPTLMHeadModel) and bot.reply("你好", seed=0)
    reranked = ChatBot.from_pretrained("uer/gpt2-tiny", device="cpu", mmi_model="uer/gpt2-tiny",
                                       num_candidates=2)
    assert reranked.reply("你好", seed=0)
    corpus = tmp_path / "train.txt"
    corpus.write_text("你好\n我很好\n\n今天\n天气好\n", encoding="utf-8")
    assert train_main(["--train", str(corpus), "--pretrained", "uer/gpt2-tiny",
                       "--output-dir", str(tmp_path / "out"), "--max-steps", "1", "--batch-size", "2",
                       "--quiet"]) == 0
    args = json.loads((tmp_path / "out" / "final" / "training_args.json").read_text())
    assert args["source"] == "uer/gpt2-tiny"


def test_a_gpt2_with_cdial_gpts_vocabulary_reads_cdial_gpts_layout(cdial_dir, uer_dir, tokenizer):
    """thu-coai/CDial-GPT2_LCCC-base is a GPT-2 trained in CDial-GPT's layout."""
    cdial_tokenizer = load_tokenizer(cdial_dir)
    assert dialogue_layout("gpt2", cdial_tokenizer, {}) == "cdial"
    assert dialogue_layout("gpt2", load_tokenizer(uer_dir), {}) == "chitchat"
    # As training recorded it.
    assert dialogue_layout("gpt2", cdial_tokenizer, {"layout": "chitchat"}) == "chitchat"
    with pytest.raises(ValueError, match=r"speaker ids need \[speaker1\] and \[speaker2\]"):
        dialogue_layout("openai-gpt", load_tokenizer(uer_dir), {})


def test_character_splitting_changes_the_vocab_fingerprint(cdial_dir):
    plain = load_tokenizer(cdial_dir)
    before = vocab_fingerprint(plain)
    assert vocab_fingerprint(split_characters(plain)) != before  # a word-level cache is not reused


def test_preprocess_and_eval_read_a_cdial_folder_as_the_model_does(cdial_dir, tmp_path, capsys):
    corpus = tmp_path / "valid.txt"
    corpus.write_text("你好 ab\n我很好\n\n今天\n天气好\n", encoding="utf-8")
    args = [str(corpus), "-o", str(tmp_path / "enc"), "--tokenizer", str(cdial_dir), "--max-len", "64",
            "--quiet"]
    assert preprocess_main(args) == 0
    encoded = TokenDataset(tmp_path / "enc")
    assert 13 in encoded[0]  # "a", not [UNK]
    assert encoded.meta["max_len"] == 63  # the layout's extra token fits the model's 64 positions
    report = evaluate_model(str(cdial_dir), str(tmp_path / "enc"), device="cpu", progress=False,
                            sampling={"max_new_tokens": 3})
    assert report.perplexity["tokens"] == 8 + 6  # every turn's tokens and the final [SEP], no speaker token
    assert report.generation["sampled"].samples[0]["history"] == ["你好ab"]


def test_chatbot_serve_serves_a_cdial_folder_in_its_layout(cdial_dir):
    import httpx

    from tests.serving import serve

    bot = ChatBot.from_pretrained(cdial_dir, device="cpu", max_new_tokens=5)
    messages = [{"role": "user", "content": "谢谢"}, {"role": "assistant", "content": "很好"},
                {"role": "user", "content": "你好"}]
    with serve(bot) as url:
        request = {"messages": messages, "seed": 4, "temperature": 0.9}
        reply = httpx.post(f"{url}/v1/chat/completions", json=request, timeout=30).json()
    # [CLS] [speaker1] 谢谢 [speaker2] 很好 [speaker1] 你好 [speaker2]: CDial-GPT's layout, as in chat
    assert reply["usage"]["prompt_tokens"] == 11 and reply["usage"]["completion_tokens"] == 5
    assert reply["choices"][0]["message"]["content"] == bot.reply("你好", ["谢谢", "很好"], seed=4, temperature=0.9)
