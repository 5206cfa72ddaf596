"""`ChatBot`: the object bots and the REPL talk to. History in, text out.

    from chatbot import ChatBot
    bot = ChatBot.from_pretrained("model/final")
    bot.reply("你好")                   # remembers the exchange
    conv = bot.conversation("user-42")  # one history per user, safe to use from many threads
    for piece in conv.stream("在吗"):
        print(piece, end="")
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import asdict
from pathlib import Path

import torch
from transformers import BertTokenizerFast, PreTrainedModel

from chatbot.conversation import Conversation, ConversationSettings, ConversationStore
from chatbot.distributed import resolve_device
from chatbot.generate.batching import BatchDecoder
from chatbot.generate.detokenize import ReplyText, TextStream
from chatbot.generate.mmi import score_replies
from chatbot.generate.prompt import DialogueModel, Prompt, fit_turns
from chatbot.generate.sampling import generate_tokens
from chatbot.layout import CDIAL, CHITCHAT, EXTRA_TOKENS, MAX_HISTORY
from chatbot.model.modeling import load_model
from chatbot.options import SamplingOptions, check_seed
from chatbot.tokenization import (
    banned_token_ids,
    decode_ids,
    encode_texts,
    hidden_token_ids,
    split_characters,
    vocab_fingerprint,
)

log = logging.getLogger(__name__)


def _setting(name: str) -> property:
    """`ChatBot.<name>`: the bot's `ConversationSettings` field `name`, read-only."""
    return property(lambda bot: getattr(bot.settings, name), doc=f"See `ChatBot.__init__`: {name}.")


class ChatBot:
    """A model, its tokenizer and default sampling options, plus one history per conversation.

    One instance can serve many users from many threads: each `Conversation` guards its own
    history, and the model is only read.
    """

    def __init__(self, model: PreTrainedModel, tokenizer: BertTokenizerFast, *,
                 training_args: dict | None = None, backward: tuple[PreTrainedModel, dict] | None = None,
                 max_history: int = MAX_HISTORY,
                 options: SamplingOptions = SamplingOptions(), max_conversations: int | None = 10_000,
                 conversation_ttl: float | None = None, stream_timeout: float = 30.0):
        """Wrap loaded models; most callers want `from_pretrained`.

        Args:
            backward: (backward model, its training args) for MMI reranking, sharing `tokenizer`.
            max_history: turns the model sees, the new message included (>= 1).
            options: default sampling options; each call may override them.
            max_conversations: `conversation(user_id)` keeps at most this many, forgetting the
                least recently used first (None: no limit).
            conversation_ttl: seconds after which a conversation not fetched by `conversation()`
                is forgotten (None: never).
            stream_timeout: seconds a reply stream may be left unread while another turn of the
                same conversation waits, before that turn goes ahead.
        """
        self.settings = ConversationSettings(max_history=max_history, stream_timeout=stream_timeout,
                                             max_conversations=max_conversations,
                                             conversation_ttl=conversation_ttl)
        self.tokenizer = tokenizer
        self._forward = DialogueModel(model, tokenizer, training_args or {})
        if self._forward.layout == CDIAL:
            split_characters(tokenizer)  # what CDial-GPT's models read (load_model already did it)
        self._backward = DialogueModel(backward[0], tokenizer, backward[1]) if backward else None
        if self._backward and self._backward.layout != CHITCHAT:
            raise ValueError("MMI reranking reads candidates in the [CLS] u [SEP] layout; the backward "
                             f"model given reads the {self._backward.layout} layout: train it with "
                             "chatbot-train --reverse")
        self._hidden = hidden_token_ids(tokenizer)
        self._banned = banned_token_ids(tokenizer)
        self.options = self.resolve_options(options)
        self._default = Conversation(self.generate, self.settings)
        self._store = ConversationStore(self.generate, self.settings)

    max_history = _setting("max_history")
    stream_timeout = _setting("stream_timeout")
    max_conversations = _setting("max_conversations")
    conversation_ttl = _setting("conversation_ttl")

    @classmethod
    def from_pretrained(cls, path: str | Path, device: str | torch.device = "auto", *, dtype: str = "auto",
                        mmi_model: str | Path | None = None, max_history: int = MAX_HISTORY,
                        max_conversations: int | None = 10_000, conversation_ttl: float | None = None,
                        stream_timeout: float = 30.0, **sampling) -> ChatBot:
        """Load a model folder written by `chatbot-train`, or a public checkpoint.

        Args:
            path: the model folder (e.g. `model/final`) or a Hugging Face Hub id
                (e.g. `thu-coai/CDial-GPT_LCCC-base`, `uer/gpt2-chinese-cluecorpussmall`).
            device: "auto" (CUDA if available), "cpu", "cuda", "cuda:1", ...
            dtype: "auto" (bf16 on a GPU; int8, else bf16, else fp32 on a CPU, by what it runs
                natively), "fp32", "bf16" or "int8" (CPU only); see `chatbot.model.precision`.
            mmi_model: a backward model folder or Hub id (`chatbot-train --reverse`) to rerank candidates.
            max_history: turns the model sees, the new message included.
            max_conversations, conversation_ttl, stream_timeout: see `ChatBot.__init__`.
            **sampling: default `SamplingOptions` fields, e.g. temperature=0.7, num_candidates=5.

        Raises:
            FileNotFoundError: naming the folder, the missing files and how to make one, or why a
                Hub id cannot be had.
            ValueError: for a bad option or device, an unsupported model_type, or an MMI model
                with another vocabulary.
        """
        options = SamplingOptions().replace(**sampling)  # fail on a bad option before loading
        device = resolve_device(device)
        model, tokenizer, training_args = load_model(path, device, dtype)
        backward = None
        if mmi_model is not None:
            back_model, back_tokenizer, back_args = load_model(mmi_model, device, dtype)
            if vocab_fingerprint(back_tokenizer) != vocab_fingerprint(tokenizer):
                raise ValueError(f"the MMI model {mmi_model} uses another vocabulary than {path}; "
                                 "train both with the same --vocab")
            backward = (back_model, back_args)
        return cls(model, tokenizer, training_args=training_args, backward=backward,
                   max_history=max_history, options=options, max_conversations=max_conversations,
                   conversation_ttl=conversation_ttl, stream_timeout=stream_timeout)

    @property
    def device(self) -> torch.device:
        """Where the model runs."""
        return self._forward.model.device

    def resolve_options(self, options: SamplingOptions | None = None, **changes) -> SamplingOptions:
        """`options` (default: the bot's) with `changes`, checked against this bot's models.

        Raises:
            ValueError: for a bad option, several candidates without an MMI model to choose
                between them, or a reply length that leaves no room for the message.
        """
        options = (options or self.options).replace(**changes)
        if options.num_candidates > 1 and self._backward is None:
            raise ValueError(f"num_candidates={options.num_candidates} needs an MMI model to choose between "
                             "candidates; load one with mmi_model=DIR (--mmi-model) or use 1")
        if options.max_new_tokens > self._forward.max_len - 3:
            limit = self._forward.max_len
            raise ValueError(f"max_new_tokens (--max-len) must be <= {limit - 3} for this model "
                             f"(its length limit is {limit}), got {options.max_new_tokens}")
        return options

    def reply(self, text: str, history: list[str] | None = None, **options) -> str:
        """Answer `text`. Without `history` the bot's own conversation is used and extended;
        with it (oldest turn first) the call is stateless. Options: `seed` and `SamplingOptions` fields."""
        return "".join(self.stream(text, history, **options))

    def stream(self, text: str, history: list[str] | None = None, **options) -> Iterator[str]:
        """Like `reply`, but yields the reply's text in pieces as tokens are generated."""
        if history is None:
            return self._default.stream(text, **options)
        return self.generate(text, list(history), **options)

    def reset(self) -> None:
        """Forget the bot's own conversation (not those from `conversation`)."""
        self._default.reset()

    @property
    def history(self) -> list[str]:
        """The bot's own conversation, oldest turn first."""
        return self._default.history

    def conversation(self, user_id: str) -> Conversation:
        """The conversation of `user_id`, created on first use, the same object until it is
        forgotten (see `max_conversations` and `conversation_ttl`)."""
        return self._store.get(user_id)

    def generate(self, text: str, history: list[str], *, seed: int | None = None, **changes) -> Iterator[str]:
        """Yield the reply to `text` after `history`, in pieces; touches no stored history.

        With several candidates (and an MMI model), the best one comes as a single piece.

        Raises:
            ValueError: for a bad option, or a seed outside [0, 2**64).
        """
        if seed is not None:
            check_seed(seed)
        options = self.resolve_options(**changes)
        prompt = self.prompt(text, history, max_new_tokens=options.max_new_tokens)
        generator = None if seed is None else torch.Generator(self.device).manual_seed(seed)
        steps = generate_tokens(self._forward.model, prompt.input_ids, eos_id=self.tokenizer.sep_token_id,
                                banned_ids=self._banned, token_type_ids=prompt.token_type_ids,
                                reply_type_id=prompt.reply_type_id, generator=generator, **asdict(options))
        if options.num_candidates > 1:
            yield decode_ids(self.tokenizer, self._rerank(steps, prompt.turns), self._hidden)
            return
        reply = ReplyText(self.text_stream(), eos_id=self.tokenizer.sep_token_id)
        for (token_id,) in steps:  # generate_tokens ends after [SEP], where the reply's text ends too
            if piece := reply.add(token_id):
                yield piece

    def prompt(self, text: str, history: list[str], *, max_new_tokens: int) -> Prompt:
        """The model's input for replying to `text` after `history` (oldest first), fitted so that
        a reply of `max_new_tokens` still fits the model; logs a warning when `text` had to be cut."""
        # Only the newest max_history turns can be used: the rest is not worth encoding.
        recent = encode_texts(self.tokenizer, [*history, text][-self.max_history:])
        extra = EXTRA_TOKENS[self._forward.layout]
        turns, notice = fit_turns(recent, max_history=self.max_history,
                                  max_len=self._forward.max_len - max_new_tokens - extra)
        if notice:
            log.warning(notice)
        context = self._forward.context(turns, cls_id=self.tokenizer.cls_token_id,
                                        sep_id=self.tokenizer.sep_token_id)
        return Prompt(turns, *context)

    def batch_decoder(self) -> BatchDecoder:
        """A decoder of many replies at once (what `chatbot-serve` runs), with this bot's model and bans.

        Raises:
            ValueError: for a model that is neither GPT-2 nor OpenAI GPT (CDial-GPT).
        """
        return BatchDecoder(self._forward.model, eos_id=self.tokenizer.sep_token_id, banned_ids=self._banned)

    def text_stream(self) -> TextStream:
        """Turns a reply's token ids, as they arrive, into the text each one adds."""
        return TextStream(self.tokenizer, self._hidden)

    def _rerank(self, steps: Iterator[list[int]], turns: list[list[int]]) -> list[int]:
        """Collect all candidates, then keep the one the backward model finds most informative
        about `turns` (those the forward model saw)."""
        candidates = [list(ids) for ids in zip(*steps)]  # (N, steps)
        sep_id = self.tokenizer.sep_token_id
        replies = [c[:c.index(sep_id)] if sep_id in c else c for c in candidates]
        losses = score_replies(self._backward.model, replies, turns, cls_id=self.tokenizer.cls_token_id,
                               sep_id=sep_id, pad_id=self.tokenizer.pad_token_id,
                               max_len=self._backward.max_len, speaker_ids=self._backward.speaker_ids)
        return replies[min(range(len(replies)), key=losses.__getitem__)]

