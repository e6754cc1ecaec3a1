"""Documents from local files, and their token ids, the same way for data/prepare.py and eval.py.

A .txt file is one document (blank lines are kept as text: splitting there would cut plays and
chapters into pieces); each line of a .jsonl file is an object whose "text" is one document. GPT-2 BPE
appends <|endoftext|> after every document, as GPT-2 was trained; the char and byte tokenizers append
nothing.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from data.loader import DataError
from data.tokenizer import GPT2Tokenizer, Tokenizer

DTYPE = np.uint16  # token ids on disk (prepared datasets hold vocabularies below 65536)


def read_text(path: Path) -> str:
    data = path.read_bytes()
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise DataError(f"{path} is not UTF-8 text (byte {e.start} is {data[e.start:e.start + 1]!r}); convert it, "
                        f"e.g. iconv -f latin1 -t utf-8 {path.name} > fixed{path.suffix}") from None


def _jsonl_text(line: str, path: Path, number: int) -> str:
    example = 'every line must be one JSON object like {"text": "..."}'
    try:
        record = json.loads(line)
    except json.JSONDecodeError as e:
        raise DataError(f"{path}:{number} is not valid JSON ({e.msg}); {example}") from None
    if not isinstance(record, dict) or "text" not in record:
        raise DataError(f'{path}:{number} has no "text" field; {example}')
    if not isinstance(record["text"], str):
        raise DataError(f'{path}:{number}: "text" is {type(record["text"]).__name__}, not a string; {example}')
    return record["text"]


def read_documents(path: Path) -> list[str]:
    """The documents of one .txt (the whole file) or .jsonl file (one per non-blank line)."""
    text = read_text(path)
    if not text.strip():
        raise DataError(f"{path} is empty; give a file that contains text")
    if path.suffix == ".txt":
        return [text]
    # split("\n"), not splitlines(): JSON strings may hold raw U+2028 or \x1c, which splitlines() breaks on
    return [_jsonl_text(line, path, n) for n, line in enumerate(text.split("\n"), 1) if line.strip()]


def encode_documents(tok: Tokenizer, docs: list[str], num_threads: int) -> list[np.ndarray]:
    """Each document's ids followed by the tokenizer's end-of-text id, if it has one."""
    if isinstance(tok, GPT2Tokenizer):
        lists = tok.encoding.encode_ordinary_batch(docs, num_threads=num_threads)
        return [np.array(ids + [tok.eot], dtype=DTYPE) for ids in lists]
    return [tok.encode_array(doc).astype(DTYPE) for doc in docs]


def read_ids(files: list[str | Path], tokenizer: Tokenizer) -> np.ndarray:
    """All documents of the files, tokenized and joined as data/prepare.py joins them: int64 ids."""
    docs = [doc for path in files for doc in read_documents(Path(path))]
    chunks = encode_documents(tokenizer, docs, num_threads=1)
    return np.concatenate(chunks).astype(np.int64) if chunks else np.zeros(0, dtype=np.int64)
