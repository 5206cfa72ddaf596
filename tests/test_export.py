"""A model folder written by save_model (as every final/, best/, checkpoint-N/ is) works unchanged in
transformers."""

import json
import re

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig, pipeline

import chatbot.bot
from chatbot.bot import ChatBot
from chatbot.layout import CDIAL
from chatbot.model.modeling import load_model, save_model
from chatbot.options import SamplingOptions
from chatbot.tokenization import decode_ids

pytestmark = pytest.mark.transformers_api

CLS, SEP = 2, 3
CDIAL_CLS, SPK1, SPK2 = 0, 17, 18  # their ids in conftest's CDIAL_VOCAB
# A space next to a CJK character or full-width punctuation: what BERT's own decoder prints.
SPACED_CJK = re.compile(r"[\u3000-\u303f\u4e00-\u9fff\uff00-\uffef] "
                        r"| [\u3000-\u303f\u4e00-\u9fff\uff00-\uffef]")


def test_chat_template_renders_the_ids_chatbot_builds(tiny_model_dir, monkeypatch):
    seen = []

    def fake_generate_tokens(model, input_ids, **kwargs):
        seen.append(list(input_ids))
        return iter([[SEP]])

    monkeypatch.setattr(chatbot.bot, "generate_tokens", fake_generate_tokens)
    history = ["你好", "你好吗", "我很好，ok", "谢谢"]
    ChatBot.from_pretrained(tiny_model_dir, device="cpu", max_new_tokens=5).reply("今天天气好吗", history=history)
    messages = [{"role": "system", "content": "不会被渲染"}] + [
        {"role": "user" if i % 2 == 0 else "assistant", "content": t}
        for i, t in enumerate([*history, "今天天气好吗"])]
    rendered = AutoTokenizer.from_pretrained(tiny_model_dir).apply_chat_template(
        messages, add_generation_prompt=True, return_dict=True)["input_ids"]
    # The newest 3 turns: 我很好，o ##k [SEP] 谢谢 [SEP] 今天天气好吗 [SEP].
    assert rendered == seen[0] == [CLS, 10, 11, 8, 20, 16, 19, SEP, 12, 12, SEP, 13, 14, 14, 15, 8, 9, SEP]


def test_decoding_glues_chinese_and_spaces_english_for_every_reader(tiny_model_dir, tokenizer):
    ids = tokenizer.encode("你好，ok ok！谢谢", add_special_tokens=False) + [SEP]
    hf_tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    assert hf_tokenizer.decode(ids, skip_special_tokens=True) == decode_ids(tokenizer, ids) == "你好，ok ok！谢谢"
    assert hf_tokenizer.decode(ids) == "你好，ok ok！谢谢[SEP]"


def test_generation_config_and_length_come_from_our_defaults(tiny_model_dir):
    config = GenerationConfig.from_pretrained(tiny_model_dir)
    d = SamplingOptions()
    assert (config.do_sample, config.temperature, config.top_k, config.top_p, config.repetition_penalty,
            config.min_new_tokens, config.max_new_tokens) == (
        d.temperature > 0, d.temperature, d.top_k, d.top_p, d.repetition_penalty, d.min_new_tokens,
        d.max_new_tokens)
    # eos [SEP]; never [PAD] [UNK] [CLS] [MASK] [speaker1] [speaker2].
    assert (config.eos_token_id, config.pad_token_id, config.suppress_tokens) == (SEP, 0, [0, 1, 2, 4, 5, 6])
    tokenizer_config = json.loads((tiny_model_dir / "tokenizer_config.json").read_text(encoding="utf-8"))
    assert tokenizer_config["model_max_length"] == 32  # the training max_len, below n_positions 64
    assert AutoTokenizer.from_pretrained(tiny_model_dir).model_max_length == 32


def test_pipeline_replies_without_spaces_between_chinese_characters(tiny_model_dir):
    torch.manual_seed(0)
    chat = pipeline("text-generation", model=str(tiny_model_dir), device="cpu")
    messages = [{"role": "user", "content": "你好"}]
    reply = chat(messages)[0]["generated_text"][-1]
    assert reply["role"] == "assistant" and reply["content"]
    assert not SPACED_CJK.search(reply["content"]) and "[" not in reply["content"]


def test_generate_samples_with_our_settings_and_stops_at_sep(tiny_model, tokenizer, tmp_path):
    # Steer every position towards [SEP]: min_new_tokens=1 allows one other token before it.
    with torch.no_grad():
        tiny_model.transformer.ln_f.weight.zero_()
        tiny_model.transformer.ln_f.bias.copy_(1e4 * tiny_model.transformer.wte.weight[SEP])
    folder = save_model(tmp_path / "m", tiny_model, tokenizer, {"max_len": 32})
    model = AutoModelForCausalLM.from_pretrained(folder)
    hf_tokenizer = AutoTokenizer.from_pretrained(folder)
    inputs = hf_tokenizer.apply_chat_template([{"role": "user", "content": "你好"}], add_generation_prompt=True,
                                              return_tensors="pt", return_dict=True)
    torch.manual_seed(0)
    new = model.generate(**inputs)[0, inputs["input_ids"].shape[1]:].tolist()
    assert len(new) == 2 and new[-1] == SEP and new[0] not in {0, 1, 2, 4, 5, 6}


def test_model_card_says_what_the_folder_is(tiny_model, tokenizer, tmp_path):
    args = {"train": "corpus.txt", "valid": "valid.txt", "max_len": 32, "loss_on": "all", "source": "tiny"}
    results = {"step": 120, "valid_ppl": 12.345, "eval_generate": {"bleu_1": 0.125, "distinct_2": 0.5}}
    folder = save_model(tmp_path / "m", tiny_model, tokenizer, args, results)
    card = (folder / "README.md").read_text(encoding="utf-8")
    for line in ["| training data | `corpus.txt` |", "| validation data | `valid.txt` |",
                 "| optimizer steps | 120 |", "| validation perplexity | 12.35 |",
                 "| reply metrics (validation) | bleu_1 0.125, distinct_2 0.5 |",
                 "gpt2, 2 layers × 32 wide, 2 heads, 64 positions", "chatbot-chat --model",
                 "AutoModelForCausalLM.from_pretrained"]:
        assert line in card


@pytest.mark.parametrize("args, note", [({"speaker_ids": True}, "--speaker-ids"),
                                        ({"reverse": True}, "--reverse`")])
def test_model_card_warns_where_plain_generate_differs(tiny_model, tokenizer, tmp_path, args, note):
    card = (save_model(tmp_path / "m", tiny_model, tokenizer, args) / "README.md").read_text(encoding="utf-8")
    assert f"Trained with `{note}" in card and "| validation perplexity | not measured |" in card


def test_a_cdial_model_saved_by_us_keeps_its_layout_in_the_template_and_decoder(cdial_dir, tmp_path):
    model, tokenizer, _ = load_model(cdial_dir)  # as fine-tuning it starts
    folder = save_model(tmp_path / "m", model, tokenizer, {"layout": CDIAL, "max_len": 64})
    hf_tokenizer = AutoTokenizer.from_pretrained(folder)
    messages = [{"role": "user", "content": "谢谢"}, {"role": "assistant", "content": "很好"},
                {"role": "user", "content": "你好"}]
    rendered = hf_tokenizer.apply_chat_template(messages, add_generation_prompt=True,
                                                return_dict=True)["input_ids"]
    # The context test_chatting_with_a_cdial_folder_uses_its_layout sees ChatBot build.
    assert rendered == [CDIAL_CLS, SPK1, 9, 9, SPK2, 8, 5, SPK1, 4, 5, SPK2]
    ids = hf_tokenizer.encode("ab 你好", add_special_tokens=False)
    assert hf_tokenizer.decode(ids) == decode_ids(tokenizer, ids) == "ab你好"  # one token per character


def test_tokenizer_config_names_eos_bos_and_speakers_as_every_transformers_reads_them(tiny_model_dir):
    config = json.loads((tiny_model_dir / "tokenizer_config.json").read_text(encoding="utf-8"))
    # transformers 4 fails on a list under extra_special_tokens; CTranslate2 and vLLM need eos.
    assert "extra_special_tokens" not in config
    assert {k: config[k] for k in ("additional_special_tokens", "bos_token", "eos_token", "model_input_names")} \
        == {"additional_special_tokens": ["[speaker1]", "[speaker2]"], "bos_token": "[CLS]",
            "eos_token": "[SEP]", "model_input_names": ["input_ids", "attention_mask"]}
    hf_tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    assert (hf_tokenizer.bos_token_id, hf_tokenizer.eos_token_id) == (CLS, SEP)
    assert hf_tokenizer("你好[speaker1]") == {"input_ids": [CLS, 7, 8, 5, SEP], "attention_mask": [1] * 5}


def test_plain_greedy_generate_replies_what_chatbot_replies(tiny_model_dir):
    # The same prompt, bans and stop: the ids match, with no token_type_ids passed on either side.
    hf_tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    messages = [{"role": "user", "content": "你好"}, {"role": "assistant", "content": "你好吗"},
                {"role": "user", "content": "今天天气很好"}]
    inputs = hf_tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt",
                                              return_dict=True)
    # 10 new tokens: the whole context fits beside them, so ChatBot cuts nothing.
    new = model.generate(**inputs, do_sample=False, no_repeat_ngram_size=0, max_new_tokens=10)
    new = new[0, inputs["input_ids"].shape[1]:]
    bot = ChatBot.from_pretrained(tiny_model_dir, device="cpu", dtype="fp32", temperature=0,
                                  no_repeat_ngram_size=0, max_new_tokens=10)
    reply = bot.reply("今天天气很好", history=["你好", "你好吗"])
    assert hf_tokenizer.decode(new, skip_special_tokens=True) == reply
    assert new.tolist() == [19] * 10  # ##k: "kkkkkkkkkk"

