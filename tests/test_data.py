"""The data pipeline: offline GPT-2 BPE, char tokenizer, prepare.py (both engines), and the loader's checks."""
from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pytest
import torch

import data.prepare as prep
from data.loader import DataError, TokenDataset
from data.prepare import ROOT, prepare, split_mask
from data.tokenizer import GPT2_RANKS, ByteTokenizer, CharTokenizer, GPT2Tokenizer, gpt2_encoding, load_tokenizer

EOT_TEXT = "<|endoftext|>"
UNICODE = ("Hello world! Ünïcødé — 日本語のテキスト, emoji 🙂🚀👩‍👩‍👧, tabs\tand\r\nnewlines,  double  spaces, "
           "zero\u200bwidth, RTL שלום, math ∑∫√, combining e\u0301, and the text <|endoftext|> itself.")
BUILTIN_OWT = "data/corpora/openwebtext_sample_1206docs.jsonl"
DOCS = ["First document.\n\nIt has a blank line.", "Second: ünïcode 日本 🙂", "", "Third\u2028with a line separator",
        "Fourth " * 40, "Fifth.", "Sixth, the last one\n"]


def write_jsonl(path: Path, docs: list[str]) -> Path:
    path.write_text("".join(json.dumps({"text": d, "id": i}) + "\n" for i, d in enumerate(docs)), encoding="utf-8")
    return path


def decoded_documents(ds: TokenDataset, split: str) -> list[str]:
    """The documents of one split: decoded text cut at every <|endoftext|> (each document ends with one)."""
    text = load_tokenizer(ds.meta).decode(ds.splits[split].tolist())
    assert text.endswith(EOT_TEXT)
    return text.split(EOT_TEXT)[:-1]


def is_subsequence(part: list[str], whole: list[str]) -> bool:
    it = iter(whole)
    return all(any(x == y for y in it) for x in part)


# ---------------------------------------------------------------- tokenizers

def test_gpt2_offline_encoding_and_unicode_round_trip():
    enc = gpt2_encoding()
    assert enc.encode_ordinary("Hello world") == [15496, 995]
    assert enc.n_vocab == 50257 and enc.eot_token == 50256
    tok = GPT2Tokenizer()
    ids = tok.encode(UNICODE)
    assert tok.decode(ids) == UNICODE
    assert ids.count(50256) == 1                       # a prompt may use <|endoftext|> as the special token
    assert 50256 not in enc.encode_ordinary(UNICODE)   # ...but a document's text is always plain text
    with pytest.raises(ValueError, match="vocab_size"):
        tok.decode([50300])                             # a padded-vocabulary id


def test_gpt2_matches_tiktoken_when_cached():
    """Compare with tiktoken's own gpt2 only if its files are cached: this test must never touch the network."""
    import tiktoken
    # tiktoken.load.read_file_cached keeps each download under sha1(url) in this folder
    cache = os.environ.get("TIKTOKEN_CACHE_DIR") or os.path.join(tempfile.gettempdir(), "data-gym-cache")
    base = "https://openaipublic.blob.core.windows.net/gpt-2/encodings/main/"
    urls = [base + "vocab.bpe", base + "encoder.json"]
    if not all(os.path.exists(os.path.join(cache, hashlib.sha1(u.encode()).hexdigest())) for u in urls):
        pytest.skip("tiktoken's gpt2 files are not cached (offline)")
    theirs = tiktoken.get_encoding("gpt2")
    ours = gpt2_encoding()
    docs = [UNICODE] + [json.loads(line)["text"] for line in (ROOT / BUILTIN_OWT).read_text().splitlines()[:50]]
    assert [theirs.encode_ordinary(d) for d in docs] == [ours.encode_ordinary(d) for d in docs]


def test_tampered_or_missing_rank_file_is_refused(tmp_path):
    tampered = tmp_path / "gpt2.tiktoken"
    data = bytearray(GPT2_RANKS.read_bytes())
    data[100] ^= 1
    tampered.write_bytes(bytes(data))
    with pytest.raises(DataError, match=r"sha256.*git checkout -- data/corpora/gpt2.tiktoken"):
        gpt2_encoding(tampered)
    with pytest.raises(DataError, match="missing.*git checkout"):
        gpt2_encoding(tmp_path / "absent.tiktoken")


def test_char_tokenizer_round_trip_and_errors():
    tok = CharTokenizer.from_texts(["hello", "wörld\n🙂"])
    assert tok.chars == sorted(set("hellowörld\n🙂")) and tok.vocab_size == len(tok.chars) and tok.eot is None
    assert tok.decode(tok.encode("wöhl 🙂\n".replace(" ", ""))) == "wöhl🙂\n"
    assert tok.encode("") == [] and tok.decode([]) == ""
    with pytest.raises(ValueError, match=r"'Z' \(U\+005A\) is not in"):
        tok.encode("helloZ")
    with pytest.raises(ValueError, match="outside"):
        tok.decode([tok.vocab_size])


def test_byte_tokenizer_round_trip_and_split_characters():
    tok = ByteTokenizer()
    ids = tok.encode(UNICODE)
    assert ids == list(UNICODE.encode("utf-8")) and tok.decode(ids) == UNICODE
    assert tok.vocab_size == 256 and tok.eot is None and tok.encode("") == [] and tok.decode([]) == ""
    assert tok.token_bytes().tolist() == [1] * 256
    # a character cut anywhere decodes to U+FFFD in its place instead of raising: "a日b" is 61 e6 97 a5 62
    a_ri_b = tok.encode("a日b")
    assert a_ri_b == [0x61, 0xE6, 0x97, 0xA5, 0x62]
    assert [tok.decode(a_ri_b[:k]) for k in range(6)] == ["", "a", "a\ufffd", "a\ufffd", "a日", "a日b"]
    assert tok.decode([0x62, 0x97, 0x62]) == "b\ufffdb" and tok.decode([0xFF]) == "\ufffd"  # no valid decoding
    with pytest.raises(ValueError, match="not a byte"):
        tok.decode([256])


def test_load_tokenizer_from_meta():
    assert load_tokenizer({"tokenizer": "gpt2", "vocab_size": 50257}).encode("Hello world") == [15496, 995]
    assert load_tokenizer({"tokenizer": "char", "chars": ["a", "b"], "vocab_size": 2}).decode([1, 0]) == "ba"
    assert load_tokenizer({"tokenizer": "byte", "vocab_size": 256}).encode("é") == [0xC3, 0xA9]
    with pytest.raises(DataError, match="known: gpt2, char, byte"):
        load_tokenizer({"tokenizer": "bpe32k"})
    with pytest.raises(DataError, match="prepare the dataset again"):
        load_tokenizer({"tokenizer": "gpt2", "vocab_size": 50304})


def test_split_mask_is_seeded_and_never_empty():
    assert split_mask(2, 0.0005).tolist().count(True) == 1      # at least one val document...
    assert split_mask(3, 0.99).tolist().count(False) == 1       # ...and at least one train document
    assert split_mask(1000, 0.1).sum() == 100
    assert (split_mask(1000, 0.1) == split_mask(1000, 0.1)).all()


# ---------------------------------------------------------------- prepare: round trips and format

def test_jsonl_round_trip_through_loader(tmp_path):
    prepare("mine", files=[write_jsonl(tmp_path / "docs.jsonl", DOCS)], out_root=tmp_path / "data")
    ds = TokenDataset(tmp_path / "data", "mine")
    train, val = decoded_documents(ds, "train"), decoded_documents(ds, "val")
    assert sorted(train + val) == sorted(DOCS)                  # every document exactly once
    assert is_subsequence(train, DOCS) and is_subsequence(val, DOCS)  # in their original order
    assert len(val) == ds.meta["val_documents"] == 1 and ds.meta["split"] == "documents"
    assert ds.vocab_size == 50257 and ds.meta["eot"] == 50256


def test_txt_and_jsonl_files_together(tmp_path):
    txt = tmp_path / "book.txt"
    txt.write_text(UNICODE + "\n\nA second paragraph stays in the same document.\n", encoding="utf-8")
    prepare("mixed", files=[txt, write_jsonl(tmp_path / "docs.jsonl", DOCS)], out_root=tmp_path)
    ds = TokenDataset(tmp_path, "mixed")
    documents = decoded_documents(ds, "train") + decoded_documents(ds, "val")
    # <|endoftext|> inside the .txt is plain text, so the decoded text has one more cut there
    assert sorted(documents) == sorted(DOCS + txt.read_bytes().decode().split(EOT_TEXT))  # bytes: keep \r\n
    assert ds.meta["documents"] == 1 + len(DOCS)


def test_single_txt_splits_last_tokens(tmp_path):
    txt = tmp_path / "one.txt"
    txt.write_text(UNICODE * 20, encoding="utf-8")
    prepare("one", files=[txt], out_root=tmp_path, val_fraction=0.25)
    ds = TokenDataset(tmp_path, "one")
    train, val = ds.splits["train"], ds.splits["val"]
    tok = load_tokenizer(ds.meta)
    assert tok.decode(np.concatenate([train, val]).tolist()) == UNICODE * 20 + EOT_TEXT
    assert len(train) == int((len(train) + len(val)) * 0.75) and ds.meta["split"] == "tokens"


def test_meta_schema_and_token_counts_match_files(tmp_path):
    src = write_jsonl(tmp_path / "docs.jsonl", DOCS)
    folder = prepare("schema", files=[src], out_root=tmp_path)
    meta = json.loads((folder / "meta.json").read_text())
    for split in ("train", "val"):
        assert (folder / f"{split}.bin").stat().st_size == 2 * meta[f"{split}_tokens"] > 0
    assert meta["sources"] == [{"path": str(src), "bytes": src.stat().st_size,
                                "sha256": hashlib.sha256(src.read_bytes()).hexdigest()}]
    expected = {"name": "schema", "tokenizer": "gpt2", "vocab_size": 50257, "dtype": "uint16", "eot": 50256,
                "val_fraction": 0.1, "split": "documents", "documents": len(DOCS), "val_documents": 1}
    assert {k: meta[k] for k in expected} == expected
    assert sorted(p.name for p in folder.iterdir()) == ["meta.json", "train.bin", "val.bin"]  # no temp files left


def test_char_dataset_round_trip(tmp_path):
    text = (UNICODE + "\n") * 30
    (tmp_path / "t.txt").write_text(text, encoding="utf-8")
    prepare("chars", files=[tmp_path / "t.txt"], tokenizer="char", out_root=tmp_path)
    ds = TokenDataset(tmp_path, "chars")
    assert ds.meta["chars"] == sorted(set(text)) and ds.vocab_size == len(set(text)) and ds.meta["eot"] is None
    ids = np.concatenate([ds.splits["train"], ds.splits["val"]]).tolist()
    assert load_tokenizer(ds.meta).decode(ids) == text
    assert len(ds.splits["train"]) == int(len(text) * 0.9)     # nanoGPT's shakespeare_char split


def test_byte_dataset_round_trip(tmp_path):
    text = (UNICODE + "\n") * 30
    (tmp_path / "t.txt").write_text(text, encoding="utf-8")
    prepare("bytes", files=[tmp_path / "t.txt"], tokenizer="byte", out_root=tmp_path)
    ds = TokenDataset(tmp_path, "bytes")
    assert ds.vocab_size == 256 and ds.meta["eot"] is None and "chars" not in ds.meta
    ids = np.concatenate([ds.splits["train"], ds.splits["val"]])
    assert ids.tobytes() == np.frombuffer(text.encode("utf-8"), dtype=np.uint8).astype(np.uint16).tobytes()
    assert load_tokenizer(ds.meta).decode(ids.tolist()) == text


def test_owt_byte_holds_the_sample_bytes_with_the_char_datasets_split(tmp_path):
    docs = [json.loads(line)["text"] for line in (ROOT / BUILTIN_OWT).read_text().splitlines() if line.strip()]
    ds = TokenDataset(prepare("owt_byte", out_root=tmp_path).parent, "owt_byte")
    val = split_mask(len(docs), 0.1)  # the split every built-in of this corpus uses (owt_char's too)
    for split in ("train", "val"):
        want = b"".join(d.encode("utf-8") for d, v in zip(docs, val) if v == (split == "val"))
        assert ds.splits[split].astype(np.uint8).tobytes() == want and ds.splits[split].max() < 256
    assert ds.meta["documents"] == 1206 and ds.meta["tokenizer"] == "byte" and ds.vocab_size == 256


def test_datasets_engine_equals_memory_engine(tmp_path, monkeypatch):
    """The bounded-memory path (datasets.map in 2 processes, memmap written in batches) gives the same bytes."""
    monkeypatch.setattr(prep, "BATCH_DOCS", 2)  # several write batches per split
    files = [write_jsonl(tmp_path / "a.jsonl", DOCS * 3), write_jsonl(tmp_path / "b.jsonl", DOCS[::-1])]
    simple = prepare("simple", files=files, out_root=tmp_path)
    streamed = prepare("streamed", files=files, out_root=tmp_path, engine="datasets", num_proc=2)
    for name in ("train.bin", "val.bin"):
        assert (simple / name).read_bytes() == (streamed / name).read_bytes()
    metas = [json.loads((f / "meta.json").read_text()) for f in (simple, streamed)]
    assert [m["engine"] for m in metas] == ["memory", "datasets"]
    assert [m["train_tokens"] for m in metas][0] == metas[1]["train_tokens"] and metas[0]["val_documents"] == 3
    assert metas[0]["val_tune_tokens"] == metas[1]["val_tune_tokens"] > 0
    assert not (streamed / ".datasets_cache").exists()


def test_the_tuning_and_reported_validation_windows_come_from_disjoint_documents(tmp_path):
    """Every document is one character repeated, so a window's characters name its documents: the windows
    of val_tune read only the first half of the validation documents, those of val_report only the rest,
    and val_tune_tokens is the first half's length, counted from the documents themselves."""
    docs = [chr(ord("A") + i) * (40 + 7 * i) for i in range(24)]
    folder = prepare("halves", files=[write_jsonl(tmp_path / "d.jsonl", docs)], out_root=tmp_path, tokenizer="char")
    meta = json.loads((folder / "meta.json").read_text())
    val_docs = [d for d, is_val in zip(docs, prep.split_mask(len(docs), meta["val_fraction"])) if is_val]
    first, rest = val_docs[:(len(val_docs) + 1) // 2], val_docs[(len(val_docs) + 1) // 2:]
    assert len(val_docs) >= 2 and meta["val_tune_tokens"] == sum(map(len, first))
    ds, tok = TokenDataset(tmp_path, "halves"), load_tokenizer(meta)
    seen = {}
    for split in ("val_tune", "val_report"):
        x, y = ds.batch(split, 64, 8, seed=0, step=0, micro=0)
        seen[split] = set(tok.decode(torch.cat([x, y[:, -1:]], 1).flatten().tolist()))
    assert seen["val_tune"] <= {d[0] for d in first} and seen["val_report"] <= {d[0] for d in rest}
    assert seen["val_tune"] and seen["val_report"] and not seen["val_tune"] & seen["val_report"]


def test_a_dataset_prepared_before_the_halves_gets_them_from_its_end_of_text_tokens_or_says_how(tmp_path):
    """GPT-2 BPE documents end with <|endoftext|>: the halves of an older dataset are read off them, at the
    cut prepare.py now records; a char dataset has no such token, and the error names the command, with
    its --files for a corpus of one's own."""
    for name, tokenizer in (("old_bpe", "gpt2"), ("old_char", "char")):
        folder = prepare(name, files=[write_jsonl(tmp_path / f"{name}.jsonl", DOCS * 3)], out_root=tmp_path,
                         tokenizer=tokenizer)
        meta = json.loads((folder / "meta.json").read_text())
        recorded = meta.pop("val_tune_tokens")
        (folder / "meta.json").write_text(json.dumps(meta))
        ds = TokenDataset(tmp_path, name)
        if tokenizer == "gpt2":
            assert len(ds.splits["val_tune"]) == recorded
            continue
        with pytest.raises(DataError, match=f"no val_report split .* python data/prepare.py old_char .*--files "
                                            f".*old_char.jsonl"):
            ds.batch("val_report", 2, 4, seed=0, step=0, micro=0)


def test_owt_sample_token_count(tmp_path):
    meta = json.loads((prepare("owt_sample", out_root=tmp_path) / "meta.json").read_text())
    assert meta["train_tokens"] + meta["val_tokens"] == 1_428_564
    assert meta["documents"] == 1206 and meta["val_documents"] == 121 and meta["sources"][0]["path"] == BUILTIN_OWT


# ---------------------------------------------------------------- idempotence and interruption

def test_rerun_is_a_no_op_until_sources_change(tmp_path, capsys):
    src = write_jsonl(tmp_path / "docs.jsonl", DOCS)
    folder = prepare("idem", files=[src], out_root=tmp_path)
    inode = (folder / "train.bin").stat().st_ino
    prepare("idem", files=[src], out_root=tmp_path)
    assert "already prepared" in capsys.readouterr().out and (folder / "train.bin").stat().st_ino == inode
    prepare("idem", files=[src], out_root=tmp_path, force=True)
    assert (folder / "train.bin").stat().st_ino != inode                   # --force rewrites
    write_jsonl(src, DOCS + ["one more document"])
    prepare("idem", files=[src], out_root=tmp_path)
    assert json.loads((folder / "meta.json").read_text())["documents"] == len(DOCS) + 1
    prepare("idem", files=[src], out_root=tmp_path, val_fraction=0.5)     # another split is another dataset
    assert "already prepared" not in capsys.readouterr().out.splitlines()[-1]


def test_interrupted_prepare_keeps_previous_dataset(tmp_path, monkeypatch):
    src = write_jsonl(tmp_path / "docs.jsonl", DOCS)
    folder = prepare("safe", files=[src], out_root=tmp_path)
    before = {p.name: p.read_bytes() for p in folder.iterdir()}
    real, calls = prep.write_ids, []

    def write_then_interrupt(*args):
        calls.append(1)
        if len(calls) == 2:  # train.bin.tmp is written, val.bin.tmp is not
            raise KeyboardInterrupt
        return real(*args)

    monkeypatch.setattr(prep, "write_ids", write_then_interrupt)
    with pytest.raises(KeyboardInterrupt):
        prepare("safe", files=[src], out_root=tmp_path, force=True)
    assert {p.name: p.read_bytes() for p in folder.iterdir()} == before
    assert len(TokenDataset(tmp_path, "safe").splits["val"]) > 0


# ---------------------------------------------------------------- errors

def _error_cases(tmp: Path) -> dict:
    (tmp / "empty.txt").write_text("")
    (tmp / "blank.jsonl").write_text("\n\n")
    write_jsonl(tmp / "empties.jsonl", ["", ""])
    (tmp / "latin1.txt").write_bytes("café".encode("latin-1"))
    (tmp / "notext.jsonl").write_text('{"text": "fine"}\n{"body": "no text here"}\n')
    (tmp / "broken.jsonl").write_text('{"text": "unterminated\n')
    (tmp / "data.csv").write_text("a,b\n")
    (tmp / "tiny.txt").write_text("a")
    (tmp / "huge.txt").write_text("".join(map(chr, range(0x10000, 0x10000 + 70_000))), encoding="utf-8")
    return {  # kwargs for prepare -> fragments the message must contain (what went wrong and how to fix it)
        "empty file": (dict(name="x", files=[tmp / "empty.txt"]), ["empty.txt is empty", "contains text"]),
        "blank jsonl": (dict(name="x", files=[tmp / "blank.jsonl"]), ["is empty"]),
        "empty documents": (dict(name="x", files=[tmp / "empties.jsonl"]), ["all empty", "files with text"]),
        "unknown name": (dict(name="nope"), ["unknown dataset 'nope'", "owt_sample", "shakespeare_char", "--files"]),
        "missing path": (dict(name="x", files=[tmp / "absent.txt"]), ["absent.txt does not exist", "--files"]),
        "not utf-8": (dict(name="x", files=[tmp / "latin1.txt"]), ["not UTF-8", "byte 3", "iconv"]),
        "no text field": (dict(name="x", files=[tmp / "notext.jsonl"]), ['notext.jsonl:2 has no "text" field',
                                                                        '{"text": "..."}']),
        "bad json": (dict(name="x", files=[tmp / "broken.jsonl"]), ["broken.jsonl:1 is not valid JSON"]),
        "bad extension": (dict(name="x", files=[tmp / "data.csv"]), [".txt", ".jsonl"]),
        "too little text": (dict(name="x", files=[tmp / "tiny.txt"], tokenizer="char"), ["too few", "more text"]),
        "vocab over uint16": (dict(name="x", files=[tmp / "huge.txt"], tokenizer="char"),
                              ["70000 distinct characters", "uint16", "--tokenizer gpt2"]),
        "built-in name": (dict(name="shakespeare", files=[tmp / "tiny.txt"]), ["built-in", "another name"]),
        "built-in tokenizer": (dict(name="shakespeare", tokenizer="char"), ["tokenized with gpt2", "--files"]),
        "bad fraction": (dict(name="shakespeare", val_fraction=1.5), ["between 0 and 1"]),
        "bad name": (dict(name="../up", files=[tmp / "tiny.txt"]), ["plain folder name"]),
        "hub data in memory": (dict(name="openwebtext", engine="memory"), ["--engine datasets"]),
    }


ERROR_CASES = ["empty file", "blank jsonl", "empty documents", "unknown name", "missing path", "not utf-8",
               "no text field", "bad json", "bad extension", "too little text", "vocab over uint16", "built-in name",
               "built-in tokenizer", "bad fraction", "bad name", "hub data in memory"]


@pytest.mark.parametrize("case", ERROR_CASES)
def test_errors_name_the_fix(tmp_path, case):
    kwargs, fragments = _error_cases(tmp_path)[case]
    with pytest.raises(DataError) as info:
        prepare(out_root=tmp_path / "out", **kwargs)
    for fragment in fragments:
        assert fragment in str(info.value)
    assert not (tmp_path / "out" / kwargs["name"] / "meta.json").exists()


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "data/prepare.py", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=120)


def test_cli_error_exits_2_without_traceback(tmp_path):
    result = _cli("nope", "--out_root", str(tmp_path))
    assert result.returncode == 2
    assert "Traceback" not in result.stderr and result.stderr.startswith("error: unknown dataset 'nope'")
    assert "--files" in result.stderr


def test_cli_prepares_files(tmp_path):
    (tmp_path / "t.txt").write_text(UNICODE * 5, encoding="utf-8")
    result = _cli("clitest", "--files", str(tmp_path / "t.txt"), "--tokenizer", "char", "--out_root", str(tmp_path))
    assert result.returncode == 0, result.stderr
    assert TokenDataset(tmp_path, "clitest").meta["tokenizer"] == "char"


# ---------------------------------------------------------------- the loader refuses what prepare would not write

def test_loader_names_the_prepare_command(tmp_path):
    with pytest.raises(DataError, match="python data/prepare.py absent"):
        TokenDataset(tmp_path, "absent")


@pytest.mark.parametrize("damage", ["truncate one byte", "extra tokens"])
def test_loader_refuses_damaged_split(tmp_path, damage):
    folder = prepare("dmg", files=[write_jsonl(tmp_path / "d.jsonl", DOCS)], out_root=tmp_path)
    train = folder / "train.bin"
    if damage == "truncate one byte":
        os.truncate(train, train.stat().st_size - 1)
        match = "not a whole number"
    else:
        with open(train, "ab") as f:
            f.write(np.array([1, 2], dtype=np.uint16).tobytes())
        match = "meta.json says"
    with pytest.raises(DataError, match=match) as info:
        TokenDataset(tmp_path, "dmg")
    assert "python data/prepare.py dmg" in str(info.value)


def test_builtin_corpora_are_present():
    """The built-ins read carried files; a missing one would only show up when someone prepares it."""
    for recipe in prep.BUILTIN.values():
        assert all(path.is_file() for path in recipe.files)
