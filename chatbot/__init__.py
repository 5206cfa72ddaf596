"""chatbot: train a Chinese chitchat GPT-2 on your dialogues and talk with it."""

__version__ = "0.1.0"
__all__ = ["ChatBot", "__version__"]


def __getattr__(name: str):
    # Lazy so that `import chatbot` (and the data tools) do not pay for importing torch.
    if name == "ChatBot":
        from chatbot.bot import ChatBot

        return ChatBot
    raise AttributeError(f"module 'chatbot' has no attribute {name!r}")
