"""What makes a model folder work unchanged in Hugging Face tools, beyond `save_pretrained`.

`transformers.AutoTokenizer`, `pipeline("text-generation")` and `model.generate()` then prompt, sample
and decode as `chatbot-chat` does; serving engines that read chat templates (vLLM, TGI) prompt, stop and
decode the same way but sample by their own rules (README, "Deploy on other engines"):

- `tokenizer_config.json` names the generic fast tokenizer class, so that the decoder saved in
  `tokenizer.json` is used (`BertTokenizer` would rebuild BERT's spaced one),
  `model_max_length` is the model's length, and the fields other runtimes read are in the form
  transformers 4 reads too (see `tokenizer_fields`);
- `chat_template.jinja` renders the model's dialogue layout (`chatbot.layout.chat_template`);
- `generation_config.json` holds `SamplingOptions`' defaults and bans the hidden tokens;
- `README.md` is a model card.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

from transformers import BertTokenizerFast, GenerationConfig, PreTrainedModel

from chatbot.layout import CDIAL, MAX_HISTORY, chat_template
from chatbot.options import SamplingOptions
from chatbot.tokenization import banned_token_ids

CHAT_TEMPLATE_FILE = "chat_template.jinja"


def generation_config(tokenizer: BertTokenizerFast,
                      options: SamplingOptions = SamplingOptions()) -> GenerationConfig:
    """`options` as Hugging Face generation settings, with our special ids and banned tokens.

    transformers applies `repetition_penalty` and `no_repeat_ngram_size` to the prompt too, as
    `chatbot-chat --penalize-context` does.
    """
    greedy = options.temperature == 0
    sampling = {} if greedy else {"temperature": options.temperature, "top_k": options.top_k,
                                  "top_p": options.top_p}
    return GenerationConfig(
        do_sample=not greedy, **sampling, repetition_penalty=options.repetition_penalty,
        no_repeat_ngram_size=options.no_repeat_ngram_size, min_new_tokens=options.min_new_tokens,
        max_new_tokens=options.max_new_tokens, bos_token_id=tokenizer.cls_token_id,
        eos_token_id=tokenizer.sep_token_id, pad_token_id=tokenizer.pad_token_id,
        suppress_tokens=sorted(banned_token_ids(tokenizer)))


def tokenizer_fields(tokenizer: BertTokenizerFast) -> dict:
    """The `tokenizer_config.json` fields that runtimes other than ours read from the tokenizer.

    - `eos_token`/`bos_token`: [SEP] ends a reply and [CLS] opens the context, as in
      `generation_config`; CTranslate2's converter and vLLM take the end of a reply from here.
    - `model_input_names` without `token_type_ids`: the tokenizer can only give all-zero ones, and
      GPT-2 adds the embedding of the token with that id (here [PAD] or [CLS]) to every position,
      which no model of ours was trained with; speaker ids come from `chatbot.layout`. ONNX
      Runtime's generate also refuses them.
    """
    return {"bos_token": tokenizer.cls_token, "eos_token": tokenizer.sep_token,
            "model_input_names": ["input_ids", "attention_mask"]}


def export_hf_files(path: Path, tokenizer: BertTokenizerFast, *, layout: str, model_max_length: int) -> None:
    """Complete a folder holding `save_pretrained`'s files with what the tools above read."""
    generation_config(tokenizer).save_pretrained(str(path))
    (path / CHAT_TEMPLATE_FILE).write_text(chat_template(layout, max_history=MAX_HISTORY), encoding="utf-8")
    config_file = path / "tokenizer_config.json"
    config = json.loads(config_file.read_text(encoding="utf-8"))
    # PreTrainedTokenizerFast, not transformers 5's TokenizersBackend: older releases know it too.
    config.update(tokenizer_class="PreTrainedTokenizerFast", model_max_length=model_max_length,
                  clean_up_tokenization_spaces=False, **tokenizer_fields(tokenizer))
    # transformers 5 writes the speaker tokens as a list here; transformers 4 (what optimum-onnx and
    # many deployments pin) expects a dict under this name and fails to load the tokenizer.
    if isinstance(config.get("extra_special_tokens"), list):
        config["additional_special_tokens"] = config.pop("extra_special_tokens")
    config_file.write_text(json.dumps(config, ensure_ascii=False, indent=2) + "\n", encoding="utf-8")


def write_model_card(path: Path, model: PreTrainedModel, training_args: dict, results: dict) -> None:
    """`README.md`: what the model is, how it was trained and scored, and how to use it.

    Args:
        results: what training knows at this point: `step`, `valid_ppl`, `eval_generate`
            (reply metrics); a missing key is reported as not measured.
    """
    lines = ["---", "language: zh", "library_name: transformers", "pipeline_tag: text-generation",
             "tags: [gpt2, dialogue, chitchat, chatbot-zh]", "---", "",
             "# A Chinese chitchat GPT-2", "",
             "Trained with `chatbot-train` from chatbot-zh (import package and commands: `chatbot`).", "",
             "| | |", "|---|---|", *_facts(model, training_args, results), ""]
    lines += _usage(training_args)
    (path / "README.md").write_text("\n".join(lines) + "\n", encoding="utf-8")


def _facts(model: PreTrainedModel, args: dict, results: dict) -> list[str]:
    c = model.config
    # A LoRA model is saved merged: its adapters' weights are not parameters of the saved model.
    params = sum(p.numel() for name, p in model.named_parameters() if ".lora_" not in name)
    ppl = results.get("valid_ppl")
    facts = [
        ("training data", f"`{args.get('train', '?')}`"
                          + (f", {args['valid_ratio']:.0%} held out" if args.get("valid_ratio") else "")),
        ("validation data", f"`{args['valid']}`" if args.get("valid") else "none given"),
        ("model", f"{c.model_type}, {c.n_layer} layers × {c.n_embd} wide, {c.n_head} heads, "
                  f"{c.n_positions} positions, {params / 1e6:.1f} M parameters, {c.vocab_size} tokens"),
        ("started from", f"`{args.get('source', '?')}`"),
        ("optimizer steps", results.get("step", "not recorded")),
        ("examples", f"{args.get('max_len', '?')} tokens at most, "
                     f"loss on {args.get('loss_on', 'all')} tokens"),
        ("validation perplexity", f"{ppl:.2f}" if ppl is not None and math.isfinite(ppl) else "not measured"),
    ]
    if args.get("lora_r"):
        targets = args.get("lora_targets") or "c_attn"
        facts.append(("fine-tuned with", f"LoRA of rank {args['lora_r']} on {targets}, merged into these "
                                         "weights; the adapter alone is in `adapter/`"))
    replies = results.get("eval_generate")
    if replies:
        shown = ", ".join(f"{k} {v:.4g}" for k, v in replies.items() if isinstance(v, (int, float)))
        facts.append(("reply metrics (validation)", shown))
    return [f"| {k} | {v} |" for k, v in facts]


def _usage(args: dict) -> list[str]:
    lines = ["## Chat", "", "```bash", "chatbot-chat --model PATH_TO_THIS_FOLDER", "```", "",
             "## Load in plain transformers", "",
             "```python",
             "from transformers import AutoModelForCausalLM, AutoTokenizer, pipeline",
             "",
             'tokenizer = AutoTokenizer.from_pretrained("PATH_TO_THIS_FOLDER")',
             'model = AutoModelForCausalLM.from_pretrained("PATH_TO_THIS_FOLDER")',
             'messages = [{"role": "user", "content": "你好"}]',
             ("inputs = tokenizer.apply_chat_template(messages, add_generation_prompt=True, "
              'return_tensors="pt",'),
             "                                       return_dict=True)",
             "output = model.generate(**inputs)  # samples with generation_config.json, stops at [SEP]",
             'print(tokenizer.decode(output[0, inputs["input_ids"].shape[1]:], skip_special_tokens=True))',
             "",
             'chat = pipeline("text-generation", model="PATH_TO_THIS_FOLDER")',
             'print(chat(messages)[0]["generated_text"][-1]["content"])',
             "```", "",
             f"The chat template keeps the newest {MAX_HISTORY} messages in the layout the model was "
             "trained on (`[CLS] turn [SEP] turn [SEP] …`, or CDial-GPT's "
             "`[CLS] [speaker1] turn [speaker2] turn …`). `generation_config.json` holds "
             "`chatbot-chat`'s default sampling and never samples `[UNK]`, `[PAD]` or `[CLS]`; "
             "transformers applies its repetition penalty to the prompt too.", ""]
    if args.get("speaker_ids") or args.get("layout") == CDIAL:
        lines += ["Trained with `--speaker-ids` or in CDial-GPT's layout: plain `generate()` does not "
                  "pass the speaker `token_type_ids`; chat with `chatbot-chat` for replies as in "
                  "training.", ""]
    if args.get("reverse"):
        lines += ["Trained with `--reverse`: a backward model for MMI reranking "
                  "(`chatbot-chat --mmi-model`), not for chatting on its own.", ""]
    return lines
