"""A small bot serving several users through `ChatBot`: each user has a conversation of their own.

Reads `user: message` lines from stdin and prints `user: reply` lines:

    printf 'alice: 你好\nbob: 在吗\nalice: 今天天气不错\n' | python examples/bot.py --model model/final

A real bot (Telegram, WeChat, a web server) does the same from its handlers:
`bot.conversation(user_id).reply(text)` is safe to call from many threads at once.
"""

import argparse
import sys

from chatbot import ChatBot


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="model/final", help="model folder written by chatbot-train")
    parser.add_argument("--device", default="auto", help="auto, cpu or cuda")
    parser.add_argument("--seed", type=int, default=None, help="make replies reproducible")
    args = parser.parse_args()

    bot = ChatBot.from_pretrained(args.model, device=args.device, temperature=0.8, top_p=0.9)
    for line in sys.stdin:
        user, sep, text = line.partition(":")
        if not sep or not user.strip():
            print(f"skipped {line.strip()!r}: expected 'user: message'", file=sys.stderr)
            continue
        reply = bot.conversation(user.strip()).reply(text.strip(), seed=args.seed)
        print(f"{user.strip()}: {reply}", flush=True)


if __name__ == "__main__":
    main()
