"""Does a model folder written with our transformers read and run the same under another release?

    python tests/compat/check_folder.py write DIR     # here: a tiny model folder + DIR/expected.json
    other-venv/bin/python tests/compat/check_folder.py check DIR     # exit 1 on any difference

`write` (needs this package) saves a small random GPT-2 with the shipped vocabulary through
`save_model`, as every `final/` is written, and records what plain transformers sees in it: the
tokenizer's ids, its decoded text, the chat template's ids and greedy `generate()` ids. It checks
those ids against `ChatBot`'s own first, so the record is what chatbot does. `check` reads the same
folder with no code from this package, as a user of an older transformers would, and compares.
`.ci/run` runs `check` under transformers 4.57; pytest does not collect this file.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

TEXTS = ["你好，ok ok！谢谢", "今天天气真好", "hello 2020年的周末"]
CONVERSATION = ["你好", "你好呀", "在干嘛", "看书呢", "什么书"]  # five turns: the template keeps three
GREEDY_TOKENS = 12


def observe(folder: Path) -> dict:
    """What transformers' Auto classes make of `folder`."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(folder)
    model = AutoModelForCausalLM.from_pretrained(folder).eval()
    ids = [tokenizer(t, add_special_tokens=False)["input_ids"] for t in TEXTS]
    messages = [{"role": "user" if (len(CONVERSATION) - i) % 2 else "assistant", "content": t}
                for i, t in enumerate(CONVERSATION)]
    prompt = tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_dict=True)
    prompt = prompt["input_ids"]
    with torch.no_grad():
        # The folder's generation_config.json (eos, banned tokens, n-gram ban), made greedy.
        inputs = torch.tensor([prompt])
        output = model.generate(inputs, attention_mask=torch.ones_like(inputs), do_sample=False,
                                max_new_tokens=GREEDY_TOKENS)
    greedy = output[0, len(prompt):].tolist()
    return {"ids": ids, "decoded": [tokenizer.decode(i + [tokenizer.sep_token_id], skip_special_tokens=True)
                                    for i in ids],
            "template_ids": prompt, "greedy_ids": greedy,
            "greedy_text": tokenizer.decode(greedy, skip_special_tokens=True)}


def write(folder: Path) -> None:
    import torch
    import transformers
    from transformers import GPT2Config, GPT2LMHeadModel

    from chatbot.bot import ChatBot
    from chatbot.model.modeling import save_model
    from chatbot.resources import VOCAB
    from chatbot.tokenization import decode_ids, encode_texts, load_tokenizer

    tokenizer = load_tokenizer(VOCAB)
    torch.manual_seed(0)
    # initializer_range 0.2, not 0.02: logits far apart, so greedy ids do not hinge on how two
    # releases round the same sums differently.
    config = GPT2Config(vocab_size=len(tokenizer), n_positions=64, n_embd=32, n_layer=2, n_head=2,
                        initializer_range=0.2, bos_token_id=tokenizer.cls_token_id,
                        eos_token_id=tokenizer.sep_token_id, pad_token_id=tokenizer.pad_token_id)
    save_model(folder, GPT2LMHeadModel(config).eval(), tokenizer, {"max_len": 64})
    seen = observe(folder)
    bot = ChatBot.from_pretrained(folder, device="cpu", dtype="fp32")
    prompt = bot.prompt(CONVERSATION[-1], CONVERSATION[:-1], max_new_tokens=GREEDY_TOKENS)
    ours = {"ids": encode_texts(tokenizer, TEXTS), "decoded": [decode_ids(tokenizer, i) for i in seen["ids"]],
            "template_ids": prompt.input_ids}
    for key, value in ours.items():
        assert seen[key] == value, f"transformers {transformers.__version__} and ChatBot differ on {key}: " \
                                   f"{seen[key]} != {value}"
    seen["transformers"] = transformers.__version__
    (folder / "expected.json").write_text(json.dumps(seen, ensure_ascii=False, indent=1), encoding="utf-8")
    print(f"wrote {folder} and its expected.json with transformers {transformers.__version__}")


def check(folder: Path) -> int:
    import tokenizers
    import transformers

    expected = json.loads((folder / "expected.json").read_text(encoding="utf-8"))
    versions = f"transformers {transformers.__version__}, tokenizers {tokenizers.__version__}"
    try:
        seen = observe(folder)
    except Exception as e:  # a folder that does not load is this check's finding, reported as one
        # transformers 4.x re-raises any tokenizer error as "requires the protobuf library" when
        # protobuf is absent: the error it was handling is the cause.
        while e.__context__ is not None:
            e = e.__context__
        print(f"FAIL ({versions}): the folder written by transformers {expected['transformers']} does not "
              f"load: {type(e).__name__}: {e}")
        return 1
    wrong = [f"  {key}: expected {expected[key]}, got {value}" for key, value in seen.items()
             if value != expected[key]]
    verdict = "FAIL" if wrong else "ok"
    print(f"{verdict} ({versions}): tokenizer ids, decoding, chat template and greedy ids of a folder "
          f"written by transformers {expected['transformers']}", *wrong, sep="\n")
    return 1 if wrong else 0


if __name__ == "__main__":
    commands = {"write": write, "check": check}
    if len(sys.argv) != 3 or sys.argv[1] not in commands:
        sys.exit(f"usage: {sys.argv[0]} write|check DIR")
    sys.exit(commands[sys.argv[1]](Path(sys.argv[2])))
