"""Model: build, load, convert and save GPT-2 / OpenAI GPT models and their folders.

    modeling.py    build_model, load_model (our folders, uer's GPT-2, CDial-GPT; folder or Hub id), save_model
    hf_files.py    the Hugging Face files every saved folder carries (generation config, chat template, card)
    limits.py      what a config costs (parameters, memory) and the refusal before building what cannot fit
    weights.py     weights files: safetensors header shapes against config.json, and their SHA-256 manifest
    precision.py   which dtype runs where ("auto"), and the fp32 -> bf16 / int8 conversions
    kernels.py     CPU inference kernels: prepacked oneDNN linear layers (GELU fused), bf16 decode attention
    gpt2_step.py   a GPT-2 decode step (one token a row) read from its layers, without transformers' Python
    openai_gpt.py  CDial-GPT's OpenAI GPT with its speaker segment ids
    loss.py        the next-token loss, scored only where labels are set (training and validation)
    lora.py        LoRA adapters (peft, imported there only): add, save, merge; adapter folders

Entry point: `load_model(source, device, dtype)`. Imports nothing from the other job folders.
"""
