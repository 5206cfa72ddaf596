"""Generate: token ids in, token ids out, then text; the core under `ChatBot` and `chatbot-serve`.

    prompt.py      the model as generation sees it, and the turns it is given (fit_turns) as a Prompt
    sampling.py    logit filters, one sampling step, generate_tokens (one reply, KV-cached)
    batching.py    BatchDecoder: many replies decoded together, rows joining and leaving mid-way
    kvcache.py     the preallocated KV cache both decoders write in place
    mmi.py         scoring candidates with a backward model (MMI reranking)
    detokenize.py  TextStream and ReplyText: token ids -> text as they arrive, until [SEP] or a stop string

Only detokenize.py makes text, with the tokenizer it is given; no printing, no threads:
everything arrives as arguments. A change here changes chat, eval and serving alike, which is
why they share it.
"""
