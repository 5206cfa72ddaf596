"""Train: `chatbot-train`'s loop and everything only training needs.

    loop.py        train(cfg) = setup -> fit -> finish, on CPU, one GPU or torchrun DDP
    optim.py       layer freezing, AdamW and the learning-rate schedule
    checkpoint.py  checkpoint-N folders, seeds and exact resume (progress, RNG states), final/ and best/
    monitor.py     metrics since the last row, metrics.jsonl, TensorBoard, stopping on SIGINT/SIGTERM
    allocator.py   keeping freed memory on CPU (glibc thresholds)

Entry point: `chatbot.train.loop.train(TrainConfig)`. Reads data/, model/ and the hall; nothing
outside chatbot.cli imports this folder.
"""
