"""Prepare a token dataset: text -> OUT_ROOT/NAME/{train,val}.bin (flat uint16 ids) + meta.json.

    python data/prepare.py owt_byte                    # built-in: owt_sample, owt_char, owt_byte, shakespeare(_char)
    python data/prepare.py openwebtext --num_proc 8    # the Hugging Face hub (~54 GB download, ~9B tokens)
    python data/prepare.py my_corpus --files a.txt b.jsonl [--tokenizer char|byte] [--val_fraction 0.05]

Documents: a .txt file is one document (blank lines are kept as text: splitting there would cut plays and
chapters into pieces); each line of a .jsonl file is an object whose "text" is one document.
GPT-2 BPE appends <|endoftext|> after every document, as GPT-2 was trained; the char and byte tokenizers
append nothing (byte: UTF-8 bytes, ids 0-255, any text). Split: with several documents a seeded random
subset of whole documents is the validation split, so no document straddles both; a single document gives
its last val_fraction of tokens to validation.
Engines (same ids): "memory" keeps a local corpus in RAM; "datasets" tokenizes with Hugging Face datasets
in parallel into an on-disk cache and writes batch by batch into a np.memmap, so memory stays bounded even
for OpenWebText (openwebtext always uses it; --engine datasets for large local .jsonl corpora).
Files appear atomically and meta.json last: a folder with a meta.json holds a complete dataset.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # `python data/prepare.py` puts data/, not the repo root, on sys.path
    sys.path.insert(0, str(ROOT))

from data.documents import DTYPE, encode_documents, read_documents  # noqa: E402
from data.loader import SPLITS, DataError  # noqa: E402
from data.tokenizer import (CORPORA, GPT2_EOT, GPT2_RANKS_SHA256, TOKENIZERS, CharTokenizer,  # noqa: E402
                            GPT2Tokenizer, Tokenizer, build_tokenizer, gpt2_encoding, sha256_file)

FORMAT_VERSION = 2          # 2: meta.json records val_tune_tokens (the validation halves)
SPLIT_SEED = 2357          # nanoGPT's seed for the OpenWebText split
ENGINES = ("memory", "datasets")
BATCH_DOCS = 1024          # documents per write batch of the datasets engine (~1M OpenWebText tokens)


@dataclass(frozen=True)
class Recipe:
    """What a dataset is made of: equal recipes over equal source bytes give byte-identical files."""
    files: tuple[Path, ...] = ()
    hf: str | None = None      # a Hugging Face hub dataset with a "text" column
    tokenizer: str = "gpt2"
    val_fraction: float = 0.1


BUILTIN = {
    "owt_sample": Recipe(files=(CORPORA / "openwebtext_sample_1206docs.jsonl",)),
    # the same documents one character per token: on a CPU a model gets past the bigram within minutes
    "owt_char": Recipe(files=(CORPORA / "openwebtext_sample_1206docs.jsonl",), tokenizer="char"),
    # one UTF-8 byte per token: a fixed vocabulary of 256, so a model scores any text, seen characters or not
    "owt_byte": Recipe(files=(CORPORA / "openwebtext_sample_1206docs.jsonl",), tokenizer="byte"),
    "shakespeare": Recipe(files=(CORPORA / "tinyshakespeare.txt",)),
    "shakespeare_char": Recipe(files=(CORPORA / "tinyshakespeare.txt",), tokenizer="char"),
    "openwebtext": Recipe(hf="Skylion007/openwebtext", val_fraction=0.0005),  # nanoGPT's test_size
}


def resolve_recipe(name: str, files: list | None = None, tokenizer: str | None = None,
                   val_fraction: float | None = None) -> Recipe:
    """The recipe of a built-in dataset or of --files under a new name, with overrides checked."""
    if not name or name != Path(name).name or name.startswith("."):
        raise DataError(f"dataset name {name!r} must be a plain folder name, e.g. my_corpus")
    if tokenizer is not None and tokenizer not in TOKENIZERS:
        raise DataError(f"unknown tokenizer {tokenizer!r}; choose one of {', '.join(TOKENIZERS)}")
    if files:
        if name in BUILTIN:
            raise DataError(f"{name!r} is a built-in dataset; give your --files another name")
        recipe = Recipe(files=tuple(Path(f).expanduser().resolve() for f in files))
    elif name in BUILTIN:
        recipe = BUILTIN[name]
        if tokenizer not in (None, recipe.tokenizer):
            raise DataError(f"{name!r} is tokenized with {recipe.tokenizer}; for {tokenizer} prepare its files "
                            f"under a new name with --files ... --tokenizer {tokenizer}")
    else:
        raise DataError(f"unknown dataset {name!r}; built-in datasets: {', '.join(BUILTIN)}. For your own text "
                        f"use: python data/prepare.py {name} --files PATH ... (.txt or .jsonl files)")
    for path in recipe.files:
        if not path.is_file():
            raise DataError(f"input file {path} does not exist; check the path given to --files")
        if path.suffix not in (".txt", ".jsonl"):
            raise DataError(f"{path}: only .txt (one document) and .jsonl ({{\"text\": ...}} per line) are read; "
                            f"convert the file or rename it")
    if val_fraction is not None and not 0 < val_fraction < 1:
        raise DataError(f"val_fraction must lie strictly between 0 and 1, got {val_fraction}")
    return dataclasses.replace(recipe, tokenizer=tokenizer or recipe.tokenizer,
                               val_fraction=recipe.val_fraction if val_fraction is None else float(val_fraction))


# ---------------------------------------------------------------- recording sources

def display_path(path: Path) -> str:
    """Repository-relative where possible, so a meta.json stays meaningful on another machine."""
    try:
        return str(path.relative_to(ROOT))
    except ValueError:
        return str(path)


def file_source(path: Path) -> dict:
    return {"path": display_path(path), "bytes": path.stat().st_size, "sha256": sha256_file(path)}


# ---------------------------------------------------------------- splitting and writing

def split_mask(n_docs: int, val_fraction: float, seed: int = SPLIT_SEED) -> np.ndarray:
    """True for validation documents: a seeded random round(n * f) of them, at least one, never all."""
    n_val = min(max(1, round(n_docs * val_fraction)), n_docs - 1)
    mask = np.zeros(n_docs, dtype=bool)
    mask[np.random.default_rng(seed).choice(n_docs, size=n_val, replace=False)] = True
    return mask


def tune_tokens(val_lengths: list[int]) -> int:
    """Where the validation split's first half of documents ends, in tokens: studies choose learning rates
    on windows of the documents before it and report on windows of those after (data/loader.py
    VAL_HALVES). A single validation document is halved by position instead."""
    if len(val_lengths) == 1:
        return int(val_lengths[0]) // 2
    return int(sum(val_lengths[:(len(val_lengths) + 1) // 2]))


def write_ids(path: Path, batches: Iterable[np.ndarray], total: int) -> Path:
    """Stream `total` ids into a memmap at path + '.tmp' (never the final name); returns that path."""
    tmp = path.with_name(path.name + ".tmp")
    out = np.memmap(tmp, dtype=DTYPE, mode="w+", shape=(total,))
    pos = 0
    for ids in batches:
        out[pos:pos + len(ids)] = ids
        pos += len(ids)
    out.flush()
    del out
    assert pos == total, f"wrote {pos} ids into {tmp}, expected {total}"
    return tmp


def commit(folder: Path, tmps: dict[str, Path], meta: dict) -> None:
    """Move finished splits into place, meta.json last, so a folder with a meta.json is complete."""
    (folder / "meta.json").unlink(missing_ok=True)  # the old dataset stops counting before any file changes
    for split, tmp in tmps.items():
        os.replace(tmp, folder / f"{split}.bin")
    tmp = folder / "meta.json.tmp"
    tmp.write_text(json.dumps(meta, indent=2, ensure_ascii=False) + "\n")
    os.replace(tmp, folder / "meta.json")


def recipe_key(meta: dict) -> dict:
    """The meta.json fields that decide the token files (paths and timestamps don't)."""
    sources = [{k: s.get(k) for k in ("bytes", "sha256", "hf", "rows", "fingerprint")} for s in meta.get("sources", [])]
    return {k: meta.get(k) for k in ("format_version", "tokenizer", "tokenizer_sha256", "val_fraction",
                                     "split_seed")} | {"sources": sources}


def up_to_date(folder: Path, key: dict) -> bool:
    try:
        meta = json.loads((folder / "meta.json").read_text())
        if recipe_key(meta) != key:
            return False
        return all((folder / f"{s}.bin").stat().st_size == meta[f"{s}_tokens"] * DTYPE().itemsize for s in SPLITS)
    except (OSError, ValueError, KeyError, TypeError):
        return False


def base_meta(name: str, recipe: Recipe, sources: list[dict]) -> dict:
    return {"format_version": FORMAT_VERSION, "name": name, "tokenizer": recipe.tokenizer,
            "tokenizer_sha256": GPT2_RANKS_SHA256 if recipe.tokenizer == "gpt2" else None,
            "val_fraction": recipe.val_fraction, "split_seed": SPLIT_SEED, "sources": sources}


# ---------------------------------------------------------------- the two engines

def prepare_in_memory(name: str, recipe: Recipe, folder: Path, num_proc: int, force: bool) -> dict | None:
    """Local files, all in RAM. Returns the new meta, or None when the dataset is already up to date."""
    meta = base_meta(name, recipe, [file_source(p) for p in recipe.files])
    if not force and up_to_date(folder, recipe_key(meta)):
        return None
    docs = [doc for path in recipe.files for doc in read_documents(path)]
    if not any(docs):
        raise DataError(f"the documents of {', '.join(map(str, recipe.files))} are all empty; give files with text")
    tok = build_tokenizer(recipe.tokenizer, docs)
    chunks = encode_documents(tok, docs, num_proc)
    if len(chunks) == 1:  # one document: the last val_fraction of its tokens (nanoGPT's shakespeare split)
        ids = chunks[0]
        n_train = int(len(ids) * (1 - recipe.val_fraction))  # int(), as nanoGPT: 1,003,854 chars of shakespeare
        if not 0 < n_train < len(ids):
            raise DataError(f"{recipe.files[0]} gives only {len(ids)} tokens, too few to split; give more text")
        parts = {"train": [ids[:n_train]], "val": [ids[n_train:]]}
        meta |= {"split": "tokens", "documents": 1, "val_tune_tokens": tune_tokens([len(ids) - n_train])}
    else:
        mask = split_mask(len(chunks), recipe.val_fraction)
        parts = {s: [c for c, v in zip(chunks, mask) if v == (s == "val")] for s in SPLITS}
        meta |= {"split": "documents", "documents": len(chunks), "val_documents": int(mask.sum()),
                 "val_tune_tokens": tune_tokens([len(c) for c in parts["val"]])}
    tmps = {s: write_ids(folder / f"{s}.bin", parts[s], sum(map(len, parts[s]))) for s in SPLITS}
    meta |= {"chars": tok.chars} if isinstance(tok, CharTokenizer) else {}
    return finish(folder, tmps, meta, tok, "memory")


def _encode_batch(batch: dict) -> dict:
    """datasets.map worker: GPT-2 ids of each document followed by <|endoftext|>."""
    texts = batch["text"]
    if not all(isinstance(t, str) for t in texts):
        raise DataError('a document has a missing or non-string "text" field; fix or drop those rows')
    ids = gpt2_encoding().encode_ordinary_batch(texts, num_threads=1)  # the processes are the parallelism
    for row in ids:
        row.append(GPT2_EOT)
    return {"ids": ids, "len": [len(row) for row in ids]}


def load_documents(recipe: Recipe, cache_dir: Path, num_proc: int):
    """The documents as a datasets.Dataset with a "text" column, and their source records."""
    import datasets

    if recipe.hf is None:
        try:
            ds = datasets.load_dataset("json", data_files=[str(p) for p in recipe.files], split="train",
                                       cache_dir=str(cache_dir))
        except Exception as e:  # pyarrow's reader errors are terse; the memory engine pinpoints the line
            raise DataError(f"datasets could not read {', '.join(map(str, recipe.files))} ({e}); "
                            f"check the files, or run with --engine memory for a precise error") from None
        sources = [file_source(p) for p in recipe.files]
    else:
        try:
            try:
                ds = datasets.load_dataset(recipe.hf, split="train", num_proc=num_proc)
            except RuntimeError as e:  # datasets >= 4 refuses loading scripts: read the hub's parquet conversion
                if "scripts are no longer supported" not in str(e):
                    raise
                ds = datasets.load_dataset(recipe.hf, split="train", num_proc=num_proc,
                                           revision="refs/convert/parquet")
        except ConnectionError as e:
            raise DataError(f"{e}; connect to the internet (or fill the Hugging Face cache), or prepare "
                            f"owt_sample, the offline sample of OpenWebText") from None
        sources = [{"hf": recipe.hf, "rows": len(ds), "fingerprint": ds._fingerprint}]
    if "text" not in ds.column_names:
        raise DataError(f'the documents have no "text" field (columns: {ds.column_names}); '
                        'every record must look like {"text": "..."}')
    return ds, sources


def prepare_with_datasets(name: str, recipe: Recipe, folder: Path, num_proc: int, force: bool) -> dict | None:
    """Parallel tokenization to an on-disk cache, then a bounded-memory write. None if already up to date."""
    import datasets
    from tqdm import tqdm

    # Local files get a private cache, deleted afterwards; hub datasets keep the shared one (a 54 GB download).
    cache = folder / ".datasets_cache"
    try:
        ds, sources = load_documents(recipe, cache, num_proc)
        meta = base_meta(name, recipe, sources)
        if not force and up_to_date(folder, recipe_key(meta)):
            return None
        if len(ds) < 2:
            raise DataError("the datasets engine splits whole documents and needs at least 2; use --engine memory")
        mask = split_mask(len(ds), recipe.val_fraction)  # the same split as the memory engine
        features = datasets.Features({"ids": datasets.List(datasets.Value("uint16")), "len": datasets.Value("int64")})
        ds = ds.map(_encode_batch, batched=True, remove_columns=ds.column_names, features=features,
                    num_proc=num_proc if num_proc > 1 else None, desc="tokenizing")
        tmps = {}
        for split in SPLITS:
            part = ds.select(np.flatnonzero(mask == (split == "val")))
            total = int(part.with_format("numpy", columns=["len"])[:]["len"].sum(dtype=np.int64))  # ids stay on disk
            batches = (np.concatenate(b["ids"]) for b in part.with_format("numpy", columns=["ids"]).iter(BATCH_DOCS))
            bar = tqdm(batches, total=-(-len(part) // BATCH_DOCS), desc=f"writing {split}.bin", unit="batch")
            tmps[split] = write_ids(folder / f"{split}.bin", bar, total)
            if split == "val":
                meta["val_tune_tokens"] = tune_tokens(part.with_format("numpy", columns=["len"])[:]["len"].tolist())
        meta |= {"split": "documents", "documents": len(ds), "val_documents": int(mask.sum())}
        return finish(folder, tmps, meta, GPT2Tokenizer(), "datasets")
    finally:
        shutil.rmtree(cache, ignore_errors=True)


def finish(folder: Path, tmps: dict[str, Path], meta: dict, tok: Tokenizer, engine: str) -> dict:
    meta |= {"vocab_size": tok.vocab_size, "dtype": np.dtype(DTYPE).name, "eot": tok.eot, "engine": engine,
             "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    meta |= {f"{s}_tokens": os.path.getsize(tmps[s]) // DTYPE().itemsize for s in SPLITS}
    commit(folder, tmps, meta)
    return meta


def prepare(name: str, files: list | None = None, tokenizer: str | None = None, val_fraction: float | None = None,
            out_root: str | Path = ROOT / "data", num_proc: int | None = None, engine: str | None = None,
            force: bool = False) -> Path:
    """Prepare dataset `name` into out_root/name (a no-op if it is already prepared the same way)."""
    recipe = resolve_recipe(name, files, tokenizer, val_fraction)
    engine = engine or ("datasets" if recipe.hf else "memory")
    if engine not in ENGINES:
        raise DataError(f"unknown engine {engine!r}; choose one of {', '.join(ENGINES)}")
    if engine == "memory" and recipe.hf:
        raise DataError(f"{name!r} comes from the Hugging Face hub; it needs --engine datasets")
    if engine == "datasets" and (recipe.tokenizer != "gpt2" or any(p.suffix != ".jsonl" for p in recipe.files)):
        raise DataError("--engine datasets reads .jsonl files with the gpt2 tokenizer; use --engine memory")
    if num_proc is not None and num_proc < 1:
        raise DataError(f"num_proc must be at least 1, got {num_proc}")
    num_proc = num_proc or max(1, (os.cpu_count() or 2) // 2)
    folder = Path(out_root) / name
    folder.mkdir(parents=True, exist_ok=True)
    run = prepare_in_memory if engine == "memory" else prepare_with_datasets
    try:
        meta = run(name, recipe, folder, num_proc, force)
    finally:  # an interrupted run leaves the previous dataset (or none), never a half-written one
        for leftover in ("train.bin.tmp", "val.bin.tmp", "meta.json.tmp"):
            (folder / leftover).unlink(missing_ok=True)
    if meta is None:
        print(f"{folder} is already prepared from the same sources and tokenizer; nothing to do (--force redoes it)")
    else:
        print(f"{name}: {meta['train_tokens']:,} train + {meta['val_tokens']:,} val tokens "
              f"({meta['tokenizer']}, vocab {meta['vocab_size']}) -> {folder}")
    return folder


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("name", help=f"a built-in dataset ({', '.join(BUILTIN)}) or a new name for --files")
    parser.add_argument("--files", nargs="+", metavar="PATH", help=".txt or .jsonl files to prepare as NAME")
    parser.add_argument("--tokenizer", choices=TOKENIZERS, help="default: gpt2 (built-ins fix their own)")
    parser.add_argument("--val_fraction", type=float, help="default: 0.1 (openwebtext: 0.0005)")
    parser.add_argument("--num_proc", type=int, help="tokenizer processes/threads; default: half the CPUs")
    parser.add_argument("--engine", choices=ENGINES, help="default: datasets for hub data, else memory")
    parser.add_argument("--out_root", default=str(ROOT / "data"), help="datasets go to OUT_ROOT/NAME")
    parser.add_argument("--force", action="store_true", help="prepare again even if up to date")
    args = parser.parse_args(argv)
    try:
        prepare(args.name, args.files, args.tokenizer, args.val_fraction, args.out_root, args.num_proc,
                args.engine, args.force)
    except DataError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    # Run as the importable module data.prepare rather than __main__, so that datasets' worker processes
    # pickle _encode_batch by reference instead of trying to serialize this script's globals.
    from data.prepare import main as module_main
    sys.exit(module_main())
