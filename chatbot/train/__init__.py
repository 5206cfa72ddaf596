"""Train: `chatbot-train`'s loop and everything only training needs.

    loop.py        train(cfg) = setup -> fit -> finish, on CPU, one GPU or torchrun DDP
    checkpoint.py  checkpoint-N folders, exact resume, publishing final/ and best/
    monitor.py     metrics.jsonl, TensorBoard, and stopping cleanly on SIGINT/SIGTERM
    allocator.py   keeping freed memory on CPU (glibc thresholds)

Entry point: `chatbot.train.loop.train(TrainConfig)`. Reads data/, model/ and the hall; nothing
outside chatbot.cli imports this folder.
"""
