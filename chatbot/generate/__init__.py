"""Generate: token ids in, token ids out; the pure core under `ChatBot` and `chatbot-serve`.

    prompt.py      which turns of a conversation the model sees (fit_turns), laid out as input ids
    sampling.py    logit filters, one sampling step, generate_tokens (one reply, KV-cached)
    batching.py    BatchDecoder: many replies decoded together, rows joining and leaving mid-way
    kvcache.py     the preallocated KV cache both decoders write in place
    mmi.py         scoring candidates with a backward model (MMI reranking)

No tokenizer text, no printing, no threads: everything arrives as arguments. A change here
changes chat, eval and serving alike, which is why they share it.
"""
