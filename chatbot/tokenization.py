"""Load the tokenizer, encode utterances in batches, and decode ids back to readable text."""

from __future__ import annotations

import hashlib
from pathlib import Path

from tokenizers import Regex, pre_tokenizers
from transformers import BertTokenizerFast

from chatbot.layout import REQUIRED_TOKENS, SPEAKER_TOKENS

# Tokens that can appear in a vocabulary but must never reach a user: specials, speaker markers,
# and BERT's reserved [unusedN] slots (bert-base-chinese style vocabularies have 99 of them).
_HIDDEN_PREFIXES = ("[unused",)


def load_tokenizer(path: str | Path) -> BertTokenizerFast:
    """Load a BERT WordPiece tokenizer from a `vocab.txt` file or a folder holding tokenizer files.

    transformers 5 silently ignores a `vocab_file=` argument to BertTokenizerFast and builds a 5-token
    vocabulary, so a file is passed as `vocab=` and a folder goes through `from_pretrained`.

    Raises:
        FileNotFoundError: if `path` is neither a vocab file nor a folder with tokenizer files.
        ValueError: if the vocabulary lacks [PAD], [UNK], [CLS] or [SEP].
    """
    path = Path(path)
    if path.is_file() or (path.is_dir() and any((path / f).is_file() for f in ("tokenizer.json", "vocab.txt"))):
        tokenizer = _read_tokenizer(path)
        n_file = tokenizer.backend_tokenizer.get_vocab_size(with_added_tokens=False)
        if tokenizer.mask_token is not None and tokenizer.mask_token_id >= n_file:
            # A vocabulary without [MASK] (CDial-GPT's) would get one appended past the model's embedding.
            tokenizer = _read_tokenizer(path, mask_token=None)
    elif path.is_dir():
        raise FileNotFoundError(
            f"{path} has no tokenizer: expected tokenizer.json or vocab.txt in it. "
            "Pass --vocab vocab/vocab.txt or a model folder written by chatbot-train.")
    else:
        raise FileNotFoundError(f"vocabulary not found: {path} (expected a vocab.txt file or a folder)")
    vocab = tokenizer.get_vocab()
    # BertTokenizerFast appends specials the file lacks as extra ids past the vocabulary, which
    # a model's embedding would not cover: require them in the file itself.
    n_file = tokenizer.backend_tokenizer.get_vocab_size(with_added_tokens=False)
    missing = [t for t in REQUIRED_TOKENS if vocab.get(t, n_file) >= n_file]
    if missing:
        raise ValueError(f"{path}: the vocabulary lacks {', '.join(missing)}; a BERT-style vocab.txt "
                         "starts with [PAD] [UNK] [CLS] [SEP] [MASK] (see vocab/vocab.txt)")
    # Speaker markers are ordinary vocabulary lines; registering them keeps WordPiece from
    # splitting them if they ever appear in text.
    extra = [t for t in SPEAKER_TOKENS if t in vocab]
    if extra:
        tokenizer.add_special_tokens({"additional_special_tokens": extra})
    return tokenizer


def split_characters(tokenizer: BertTokenizerFast) -> BertTokenizerFast:
    """Make `tokenizer` read one token per character, dropping spaces, as CDial-GPT does
    (its interact.py turns "hi 你好" into "h i 你 好"): Latin letters and digits become
    characters of its vocabulary instead of [UNK] words. Changes `tokenizer` in place.
    """
    tokenizer.backend_tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Split(Regex("."), "isolated")])
    return tokenizer


def splits_characters(tokenizer: BertTokenizerFast) -> bool:
    """Whether `split_characters` was applied."""
    return "WhitespaceSplit" in str(tokenizer.backend_tokenizer.pre_tokenizer.__getstate__())


def _read_tokenizer(path: Path, **kwargs) -> BertTokenizerFast:
    if path.is_file():
        return BertTokenizerFast(vocab=str(path), **kwargs)
    return BertTokenizerFast.from_pretrained(str(path), **kwargs)


def vocab_fingerprint(tokenizer: BertTokenizerFast) -> str:
    """A short hash of the id→token table (and of character splitting, which changes the ids of the
    same text), to tell whether cached ids still match a tokenizer."""
    vocab = tokenizer.get_vocab()
    table = "\n".join(sorted(vocab, key=vocab.__getitem__)) + ("\nsplit-characters" * splits_characters(tokenizer))
    return hashlib.sha256(table.encode("utf-8")).hexdigest()[:16]


def encode_texts(tokenizer: BertTokenizerFast, texts: list[str]) -> list[list[int]]:
    """Ids of each text without special tokens, in one call to the Rust tokenizer."""
    # encode_batch_fast skips offset tracking, which we never use.
    return [e.ids for e in tokenizer.backend_tokenizer.encode_batch_fast(texts, add_special_tokens=False)]


def hidden_token_ids(tokenizer: BertTokenizerFast) -> set[int]:
    """Ids that decoding drops and sampling must never produce."""
    vocab = tokenizer.get_vocab()
    ids = set(tokenizer.all_special_ids)
    ids.update(i for t, i in vocab.items() if t.startswith(_HIDDEN_PREFIXES) or t in SPEAKER_TOKENS)
    return ids


def decode_ids(tokenizer: BertTokenizerFast, ids, hidden: set[int] | None = None, *,
               spaced_words: bool = True) -> str:
    """Turn ids into the text a person would write.

    Chinese characters are joined without spaces, `##` pieces are glued to the piece before,
    a single space separates two ASCII words or numbers, and special tokens are dropped.
    `hidden` may pass a precomputed `hidden_token_ids(tokenizer)` for hot loops. With
    `spaced_words=False` (a tokenizer that splits characters) every token is glued.
    """
    hidden = hidden_token_ids(tokenizer) if hidden is None else hidden
    tokens = tokenizer.convert_ids_to_tokens([int(i) for i in ids if int(i) not in hidden])
    out: list[str] = []
    for tok in tokens:
        if tok.startswith("##") and len(tok) > 2:
            out.append(tok[2:])
        elif spaced_words and out and _is_ascii_word_char(out[-1][-1]) and _is_ascii_word_char(tok[0]):
            out.append(" " + tok)
        else:
            out.append(tok)
    return "".join(out)


class TextStream:
    """A reply's text as its token ids arrive, one at a time.

    Decoding the whole reply each time (not token by token) lets `decode_ids` glue `##` pieces
    and space English words; each decode only extends the previous one.
    """

    def __init__(self, tokenizer: BertTokenizerFast, hidden: set[int] | None = None, *, spaced_words: bool = True):
        """Args: as `decode_ids`."""
        self._tokenizer = tokenizer
        self._hidden = hidden_token_ids(tokenizer) if hidden is None else hidden
        self._spaced_words = spaced_words
        self._ids: list[int] = []
        self.text = ""

    def add(self, token_id: int) -> str:
        """Append one token; return the text it adds ("" for a hidden token)."""
        self._ids.append(token_id)
        new_text = decode_ids(self._tokenizer, self._ids, self._hidden, spaced_words=self._spaced_words)
        assert new_text.startswith(self.text), "decode_ids must only append as tokens are added"
        piece, self.text = new_text[len(self.text):], new_text
        return piece


def _is_ascii_word_char(ch: str) -> bool:
    return ch.isascii() and ch.isalnum()
