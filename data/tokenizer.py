"""Tokenizers of prepared datasets: GPT-2 byte-pair encoding (offline), characters and UTF-8 bytes.

`load_tokenizer(meta)` rebuilds the tokenizer a dataset was prepared with from its meta.json, so the
trainer and the sampler decode ids into text without knowing how the data was made.

GPT-2 BPE never touches the network: its rank file is carried in data/corpora/gpt2.tiktoken and
checked against a pinned sha256, so a run can't silently tokenize with a different vocabulary.
"""
from __future__ import annotations

import base64
import functools
import hashlib
from pathlib import Path
from typing import Protocol

import numpy as np

from data.loader import DataError

CORPORA = Path(__file__).resolve().parent / "corpora"
GPT2_RANKS = CORPORA / "gpt2.tiktoken"
GPT2_RANKS_SHA256 = "306cd27f03c1a714eca7108e03d66b7dc042abe8c258b44c199a7ed9838dd930"
GPT2_EOT = 50256          # <|endoftext|>, the document separator
GPT2_VOCAB = 50257        # 50256 merges + <|endoftext|>; models pad this to 50304
MAX_VOCAB = 1 << 16       # ids are stored as uint16
TOKENIZERS = ("gpt2", "char", "byte")


class Tokenizer(Protocol):
    name: str
    vocab_size: int
    eot: int | None       # id appended after every document, or None (nothing is appended)

    def encode(self, text: str) -> list[int]: ...

    def decode(self, ids: list[int]) -> str: ...

    def token_bytes(self) -> np.ndarray: ...  # (vocab_size,) UTF-8 bytes of each token, for bits per byte


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


@functools.lru_cache(maxsize=4)
def gpt2_encoding(path: Path = GPT2_RANKS):
    """tiktoken's `gpt2` encoding, built from the carried rank file (identical to tiktoken.get_encoding("gpt2")).

    The ranks are parsed here rather than with tiktoken.load.load_tiktoken_bpe, because that function
    caches files under a key made from the *path* only, so a changed file at the same path could be
    served stale from /tmp/data-gym-cache after our checksum passed.
    """
    import tiktoken
    from tiktoken_ext.openai_public import r50k_pat_str  # the GPT-2 split regex (same for r50k_base)

    path = Path(path)
    fix = f"restore the file from the repository (git checkout -- {GPT2_RANKS.relative_to(CORPORA.parent.parent)})"
    if not path.is_file():
        raise DataError(f"the GPT-2 rank file {path} is missing; {fix}")
    data = path.read_bytes()
    digest = hashlib.sha256(data).hexdigest()
    if digest != GPT2_RANKS_SHA256:
        raise DataError(f"{path} is not the GPT-2 rank file (sha256 {digest}, expected {GPT2_RANKS_SHA256}); {fix}")
    ranks = {}
    for line in data.splitlines():
        if line:
            token, rank = line.split()
            ranks[base64.b64decode(token)] = int(rank)
    return tiktoken.Encoding(name="gpt2", pat_str=r50k_pat_str, mergeable_ranks=ranks,
                             special_tokens={"<|endoftext|>": GPT2_EOT}, explicit_n_vocab=GPT2_VOCAB)


class GPT2Tokenizer:
    name = "gpt2"
    vocab_size = GPT2_VOCAB
    eot = GPT2_EOT

    def __init__(self) -> None:
        self.encoding = gpt2_encoding()

    def encode(self, text: str) -> list[int]:
        # A prompt may contain <|endoftext|> to mean "start of a document" (as nanoGPT's sampler allows);
        # prepare.py uses encode_ordinary instead, so a document's text is always just text.
        return self.encoding.encode(text, allowed_special={"<|endoftext|>"})

    def decode(self, ids: list[int]) -> str:
        bad = [i for i in ids if not 0 <= int(i) < GPT2_VOCAB]
        if bad:  # e.g. a padded-vocabulary id (50257..50303) sampled from an untrained model
            raise ValueError(f"token id {bad[0]} is outside the GPT-2 vocabulary (0..{GPT2_VOCAB - 1}); "
                             f"mask logits >= vocab_size before sampling")
        return self.encoding.decode([int(i) for i in ids])

    def token_bytes(self) -> np.ndarray:
        """(vocab_size,) UTF-8 bytes of each token's text, for bits per byte; <|endoftext|> is 0 (not text)."""
        lengths = np.array([len(self.encoding.decode_single_token_bytes(i)) for i in range(GPT2_VOCAB)],
                           dtype=np.int64)
        lengths[GPT2_EOT] = 0
        return lengths


class CharTokenizer:
    """One id per Unicode character; the vocabulary is the sorted set of the corpus' characters."""
    name = "char"
    eot = None  # characters carry their own separators (newlines); nothing is appended per document

    def __init__(self, chars: list[str]) -> None:
        if any(len(c) != 1 for c in chars) or list(chars) != sorted(set(chars)):
            raise DataError("a char vocabulary must be a sorted list of distinct single characters; "
                            "prepare the dataset again")
        self.chars = list(chars)
        self.vocab_size = len(self.chars)
        # Code points sorted like the characters, so np.searchsorted maps a text to ids in one pass.
        self._points = np.array([ord(c) for c in self.chars], dtype=np.int64)

    @classmethod
    def from_texts(cls, texts: list[str]) -> CharTokenizer:
        chars = sorted(set().union(*map(set, texts)))
        if len(chars) > MAX_VOCAB:
            raise DataError(f"the text has {len(chars)} distinct characters, more than the {MAX_VOCAB} that "
                            f"uint16 ids can hold; use --tokenizer byte or --tokenizer gpt2")
        return cls(chars)

    def encode_array(self, text: str) -> np.ndarray:
        points = np.frombuffer(text.encode("utf-32-le", "surrogatepass"), dtype=np.uint32).astype(np.int64)
        ids = np.searchsorted(self._points, points)
        unknown = (ids >= self.vocab_size) | (self._points[np.minimum(ids, self.vocab_size - 1)] != points)
        if unknown.any():
            c = chr(points[np.argmax(unknown)])
            raise ValueError(f"character {c!r} (U+{ord(c):04X}) is not in this dataset's vocabulary of "
                             f"{self.vocab_size} characters")
        return ids

    def encode(self, text: str) -> list[int]:
        return self.encode_array(text).tolist()

    def decode(self, ids: list[int]) -> str:
        bad = [i for i in ids if not 0 <= int(i) < self.vocab_size]
        if bad:
            raise ValueError(f"token id {bad[0]} is outside this dataset's vocabulary (0..{self.vocab_size - 1}); "
                             f"mask logits >= vocab_size before sampling")
        return "".join(self.chars[int(i)] for i in ids)

    def token_bytes(self) -> np.ndarray:
        """(vocab_size,) UTF-8 bytes of each character (1 to 4), for bits per byte."""
        return np.array([len(c.encode("utf-8", "surrogatepass")) for c in self.chars], dtype=np.int64)


class ByteTokenizer:
    """One id per UTF-8 byte (0-255): any text encodes, with no vocabulary learnt from a corpus.

    Decoding never raises on bytes that are not valid UTF-8 (a character cut by the end of a sample or a
    window, or a sequence a model made up): each invalid sequence becomes U+FFFD, the replacement character.
    """
    name = "byte"
    vocab_size = 256      # already a multiple of 64: the model's padded vocabulary has no unused ids
    eot = None            # like characters: documents carry their own separators

    def encode_array(self, text: str) -> np.ndarray:
        # surrogatepass: a lone surrogate (valid in JSON strings) gets bytes, as the char tokenizer gives it an id
        return np.frombuffer(text.encode("utf-8", "surrogatepass"), dtype=np.uint8).astype(np.int64)

    def encode(self, text: str) -> list[int]:
        return self.encode_array(text).tolist()

    def decode(self, ids: list[int]) -> str:
        bad = [i for i in ids if not 0 <= int(i) < self.vocab_size]
        if bad:
            raise ValueError(f"token id {bad[0]} is not a byte (0..255); mask logits >= vocab_size before sampling")
        return bytes(int(i) for i in ids).decode("utf-8", errors="replace")

    def token_bytes(self) -> np.ndarray:
        """(256,) ones: every token is one byte, so bits per byte is bits per token."""
        return np.ones(self.vocab_size, dtype=np.int64)


def build_tokenizer(kind: str, docs: list[str]) -> Tokenizer:
    """A new tokenizer of `kind` for these documents (only the char vocabulary depends on them)."""
    if kind == "gpt2":
        return GPT2Tokenizer()
    if kind == "char":
        return CharTokenizer.from_texts(docs)
    if kind == "byte":
        return ByteTokenizer()
    raise DataError(f"unknown tokenizer {kind!r}; known: {', '.join(TOKENIZERS)}")


def load_tokenizer(meta: dict) -> Tokenizer:
    """The tokenizer a dataset was prepared with, from its meta.json contents."""
    kind = meta.get("tokenizer")
    if kind == "gpt2":
        tok: Tokenizer = GPT2Tokenizer()
    elif kind == "char":
        if not isinstance(meta.get("chars"), list):
            raise DataError("meta.json of a char dataset has no 'chars' list; prepare the dataset again")
        tok = CharTokenizer(meta["chars"])
    elif kind == "byte":
        tok = ByteTokenizer()
    else:
        raise DataError(f"meta.json names tokenizer {kind!r}; known: {', '.join(TOKENIZERS)}. "
                        f"Prepare the dataset again")
    if "vocab_size" in meta and int(meta["vocab_size"]) != tok.vocab_size:
        raise DataError(f"meta.json says vocab_size {meta['vocab_size']} but the {kind} tokenizer has "
                        f"{tok.vocab_size}; prepare the dataset again")
    return tok
