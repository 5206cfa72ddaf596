"""Token ids to the text a person reads, as they arrive, up to the end of the reply.

    text = ReplyText(TextStream(tokenizer), eos_id=tokenizer.sep_token_id, stops=["。"])
    for token_id, last in steps:
        send(text.add(token_id, last=last))   # "" while text that may start a stop string waits
    text.finish_reason                       # "stop" ([SEP] or a stop string) or "length"

The one owner of "tokens -> text until a stop", whoever asks: `ChatBot` (which stops at [SEP]
only) and `chatbot-serve` (the request's stop strings too) read replies through `ReplyText`, as
vLLM keeps stop strings in its detokenizer and lets the HTTP layer only format.
"""

from __future__ import annotations

from collections.abc import Sequence

from transformers import BertTokenizerFast

from chatbot.tokenization import decode_ids, hidden_token_ids


class TextStream:
    """A reply's text as its token ids arrive, one at a time.

    Decoding the whole reply each time (not token by token) lets `decode_ids` glue `##` pieces
    and space English words; each decode only extends the previous one.
    """

    def __init__(self, tokenizer: BertTokenizerFast, hidden: set[int] | None = None):
        """Args: as `decode_ids`."""
        self._tokenizer = tokenizer
        self._hidden = hidden_token_ids(tokenizer) if hidden is None else hidden
        self._ids: list[int] = []
        self.text = ""

    def add(self, token_id: int) -> str:
        """Append one token; return the text it adds ("" for a hidden token)."""
        self._ids.append(token_id)
        new_text = decode_ids(self._tokenizer, self._ids, self._hidden)
        assert new_text.startswith(self.text), "decode_ids must only append as tokens are added"
        piece, self.text = new_text[len(self.text):], new_text
        return piece


class ReplyText:
    """A reply's text as its tokens arrive, ended by the eos token or the first stop string.

    Text that may be the start of a stop string is held back until the next tokens show whether
    it is; a stop string and whatever follows it are never handed out.
    """

    def __init__(self, stream: TextStream, *, eos_id: int, stops: Sequence[str] = ()):
        """Args:
            stream: decodes the reply's tokens (`ChatBot.text_stream()`), none added yet.
            eos_id: the token that ends a reply ([SEP]); it adds no text.
            stops: strings that end the reply where they start (OpenAI's `stop`).

        Raises:
            ValueError: for an empty stop string, which would end every reply before it began.
        """
        if "" in stops:
            raise ValueError(f"stop strings must not be empty, got {list(stops)!r}")
        self._stream, self._eos_id, self._stops = stream, eos_id, list(stops)
        self._sent = 0  # characters of the text already handed out
        self.finish_reason: str | None = None  # once ended: "stop" (eos or a stop string) or "length"

    def add(self, token_id: int, *, last: bool = False) -> str:
        """Take the reply's next token; return the text it releases, maybe "".

        Args:
            last: no token follows (the reply reached its length limit): the reply ends here,
                with finish reason "length" unless this token ends it anyway.
        """
        assert self.finish_reason is None, "the reply has ended: no token follows its end"
        eos = token_id == self._eos_id
        if not eos:
            self._stream.add(token_id)
        text = self._stream.text
        end = len(text) - self._held_back(text)
        if (cut := self._stop_position(text)) is not None:
            end, self.finish_reason = cut, "stop"
        elif eos or last:
            end, self.finish_reason = len(text), "stop" if eos else "length"
        piece, self._sent = text[self._sent:end], end
        return piece

    def _stop_position(self, text: str) -> int | None:
        """Where the first stop string starts in `text`, or None."""
        found = [i for i in (text.find(s) for s in self._stops) if i >= 0]
        return min(found) if found else None

    def _held_back(self, text: str) -> int:
        """Characters at the end of `text` that may be the start of a stop string, so not sent yet."""
        return max((n for s in self._stops for n in range(min(len(s) - 1, len(text)), 0, -1)
                    if text.endswith(s[:n])), default=0)
