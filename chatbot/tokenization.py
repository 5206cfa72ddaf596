"""Load the tokenizer, encode utterances in batches, and decode ids back to readable text."""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path

from tokenizers import Regex, decoders, pre_tokenizers
from transformers import BertTokenizerFast

from chatbot.layout import REQUIRED_TOKENS, SPEAKER_TOKENS

# What a model folder's tokenizer is read from, in the order transformers reads them.
_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.txt")
# Tokens that can appear in a vocabulary but must never reach a user: specials, speaker markers,
# and BERT's reserved [unusedN] slots (bert-base-chinese style vocabularies have 99 of them).
_HIDDEN_PREFIXES = ("[unused",)
# Lone surrogates: half of a UTF-16 pair, which no UTF-8 text holds (see `replace_lone_surrogates`).
_SURROGATE = re.compile("[\ud800-\udfff]")


def readable_decoder(*, spaced_words: bool = True) -> decoders.Decoder:
    """The decoder saved in every tokenizer.json we write: ids to the text a person would write.

    BERT's WordPiece decoder puts a space between every two tokens (`你 好 。`). This one glues
    `##` pieces, then keeps a space only between two ASCII letters or digits (English words,
    numbers), so `tokenizer.decode`, `pipeline` and any other reader of tokenizer.json print `你好。`
    and `hello world`. With `spaced_words=False` (a tokenizer that splits characters, whose
    words are letters) every space goes.
    """
    return decoders.Sequence([
        decoders.WordPiece(prefix="##", cleanup=False),
        decoders.Fuse(),
        # WordPiece leaves the prefix on a first token; a typed "##" is "# #" at this point.
        decoders.Replace(Regex("^##"), ""),
        decoders.Replace(Regex(r"(?<![A-Za-z0-9]) | (?![A-Za-z0-9])" if spaced_words else " "), ""),
    ])


def load_tokenizer(path: str | Path) -> BertTokenizerFast:
    """Load a BERT WordPiece tokenizer from a `vocab.txt` file or a folder holding tokenizer files.

    transformers 5 silently ignores a `vocab_file=` argument to BertTokenizerFast and builds a 5-token
    vocabulary, so a file is passed as `vocab=` and a folder goes through `from_pretrained`.

    Raises:
        FileNotFoundError: if `path` is neither a vocab file nor a folder with tokenizer files.
        ValueError: if the vocabulary lacks [PAD], [UNK], [CLS] or [SEP], or a tokenizer file is
            damaged or not a WordPiece tokenizer's (the file named).
    """
    path = Path(path)
    has_files = path.is_dir() and any((path / f).is_file() for f in ("tokenizer.json", "vocab.txt"))
    if path.is_file() or has_files:
        tokenizer = _read_tokenizer(path)
        n_file = tokenizer.backend_tokenizer.get_vocab_size(with_added_tokens=False)
        if tokenizer.mask_token is not None and tokenizer.mask_token_id >= n_file:
            # A vocabulary without [MASK] (CDial-GPT's) would get one appended past the model's embedding.
            tokenizer = _read_tokenizer(path, mask_token=None)
    elif path.is_dir():
        raise FileNotFoundError(
            f"{path} has no tokenizer: expected tokenizer.json or vocab.txt in it. "
            "Pass --vocab FILE or a model folder written by chatbot-train.")
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
    # BertTokenizerFast rebuilds BERT's spaced decoder on every load, whatever tokenizer.json holds.
    tokenizer.backend_tokenizer.decoder = readable_decoder()
    # Folders written before issue 19 name no eos/bos and let the tokenizer return all-zero
    # token_type_ids; set here as chatbot.model.hf_files.tokenizer_fields saves them. Neither
    # changes an encoding: the post-processor in tokenizer.json adds [CLS] and [SEP] itself.
    tokenizer.bos_token, tokenizer.eos_token = tokenizer.cls_token, tokenizer.sep_token
    tokenizer.model_input_names = ["input_ids", "attention_mask"]
    return tokenizer


def split_characters(tokenizer: BertTokenizerFast) -> BertTokenizerFast:
    """Make `tokenizer` read one token per character, dropping spaces, as CDial-GPT does
    (its interact.py turns "hi 你好" into "h i 你 好"): Latin letters and digits become
    characters of its vocabulary instead of [UNK] words. Changes `tokenizer` in place.
    """
    tokenizer.backend_tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Split(Regex("."), "isolated")])
    tokenizer.backend_tokenizer.decoder = readable_decoder(spaced_words=False)
    return tokenizer


def splits_characters(tokenizer: BertTokenizerFast) -> bool:
    """Whether `split_characters` was applied."""
    return "WhitespaceSplit" in str(tokenizer.backend_tokenizer.pre_tokenizer.__getstate__())


def _read_tokenizer(path: Path, **kwargs) -> BertTokenizerFast:
    if path.is_dir():
        _check_tokenizer_files(path)
    try:
        if path.is_file():
            return BertTokenizerFast(vocab=str(path), **kwargs)
        return BertTokenizerFast.from_pretrained(str(path), **kwargs)
    except Exception as e:  # noqa: BLE001 - tokenizers and transformers raise bare Exception and KeyError
        files = [path] if path.is_file() else [path / f for f in _TOKENIZER_FILES if (path / f).is_file()]
        reason = f"it lacks the field {e}" if isinstance(e, KeyError) else " ".join(str(e).split())
        raise ValueError(f"{', '.join(map(str, files))}: not a BERT tokenizer that can be read ({reason}); "
                         "a vocab.txt is one UTF-8 token a line: copy the files again, or pass the "
                         "tokenizer the model was trained with") from None


def _check_tokenizer_files(folder: Path) -> None:
    """Name the file, not only the parser's complaint, for a damaged JSON tokenizer file; refuse a
    tokenizer.json of another kind (BPE, Unigram), which BertTokenizerFast would misread.

    Raises:
        ValueError: naming the file, the field and the fix.
    """
    for name in _TOKENIZER_FILES[:3]:
        file = folder / name
        if not file.is_file():
            continue
        try:
            fields = json.loads(file.read_text(encoding="utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise ValueError(f"{file} is not valid JSON ({e}); it is damaged: copy it again from where the "
                             "model came from") from None
        model = fields.get("model") if isinstance(fields, dict) else None
        kind = model.get("type", "WordPiece") if isinstance(model, dict) else None
        if name == "tokenizer.json" and kind != "WordPiece":
            raise ValueError(
                f"{file}: model.type is {json.dumps(kind)}, but chatbot reads BERT WordPiece tokenizers "
                '("WordPiece", as bert-base-chinese and chatbot-train write them): use the tokenizer the '
                "model was trained with, or a vocab.txt (python -m chatbot.data.vocab builds one)")


def vocab_fingerprint(tokenizer: BertTokenizerFast) -> str:
    """A short hash of the id→token table (and of character splitting, which changes the ids of the
    same text), to tell whether cached ids still match a tokenizer."""
    vocab = tokenizer.get_vocab()
    table = "\n".join(sorted(vocab, key=vocab.__getitem__))
    table += "\nsplit-characters" * splits_characters(tokenizer)
    return hashlib.sha256(table.encode("utf-8")).hexdigest()[:16]


def replace_lone_surrogates(text: str) -> str:
    """`text` with each lone surrogate replaced by U+FFFD, as a UTF-8 decoder replaces a bad byte.

    They come from a JSON `"\\ud83d"` (a string cut inside an emoji by UTF-16 length) and from
    bytes that Python decoded with `surrogateescape`; the Rust tokenizer refuses such a string
    whole, and UTF-8 cannot store it.
    """
    return _SURROGATE.sub("\ufffd", text)


def encode_texts(tokenizer: BertTokenizerFast, texts: list[str]) -> list[list[int]]:
    """Ids of each text without special tokens, in one call to the Rust tokenizer.

    Every text reaches the tokenizer here, so this is where a lone surrogate becomes U+FFFD
    (`replace_lone_surrogates`), read as that character is anywhere (BERT's normalizer drops it).
    """
    texts = [replace_lone_surrogates(text) for text in texts]
    # encode_batch_fast skips offset tracking, which we never use.
    return [e.ids for e in tokenizer.backend_tokenizer.encode_batch_fast(texts, add_special_tokens=False)]


def hidden_token_ids(tokenizer: BertTokenizerFast) -> set[int]:
    """Ids that decoding drops and sampling must never produce."""
    vocab = tokenizer.get_vocab()
    ids = set(tokenizer.all_special_ids)
    ids.update(i for t, i in vocab.items() if t.startswith(_HIDDEN_PREFIXES) or t in SPEAKER_TOKENS)
    return ids


def banned_token_ids(tokenizer: BertTokenizerFast) -> set[int]:
    """Ids sampling must never produce: the hidden ones except [SEP], which ends a reply."""
    return hidden_token_ids(tokenizer) - {tokenizer.sep_token_id}


def decode_ids(tokenizer: BertTokenizerFast, ids, hidden: set[int] | None = None) -> str:
    """Turn ids into the text a person would write, with the tokenizer's own decoder (see
    `readable_decoder`), dropping hidden tokens.

    `hidden` may pass a precomputed `hidden_token_ids(tokenizer)` for hot loops.
    """
    hidden = hidden_token_ids(tokenizer) if hidden is None else hidden
    shown = [int(i) for i in ids if int(i) not in hidden]
    return tokenizer.backend_tokenizer.decode(shown, skip_special_tokens=False)
