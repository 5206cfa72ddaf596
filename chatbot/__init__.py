"""chatbot: train a Chinese chitchat GPT-2 on your dialogues and talk with it."""

__version__ = "0.1.0"
