"""Data: dialogues on disk -> token ids a training step reads.

    corpus.py      read_dialogues(path): txt / LCCC JSON / JSONL -> lists of turns (no tokenizer, no torch)
    preprocess.py  preprocess(corpora, folder, tokenizer): turns -> the encoded-dataset folder
    encoded.py     the encoded-dataset folder: its file names, read_meta, is_encoded_dataset, freshness
    dataset.py     load_dataset(...) -> TokenDataset (memory-mapped), make_collate, the length-grouped sampler
    vocab.py       the bundled vocabulary and a corpus' own (`python -m chatbot.data.vocab`)

Entry point: `chatbot-preprocess` (chatbot.cli) or `load_dataset`, which encodes on first use.
Only dataset.py imports torch, so reading and encoding corpora stay light. Imports nothing from
the other job folders.
"""
