"""This project's checkpoints as a model of EleutherAI's lm-evaluation-harness (lm-eval, an optional extra).

    python harness.py --model t2i --model_args out_dir=out/byte_gpt --tasks lambada_openai --batch_size 16

harness.py registers the model and hands over to lm-eval's own command line; this module holds the model.
model_args: out_dir (the run, required), dtype (float32, the default and exact | bfloat16 | auto), device
(or lm-eval's --device; default: a GPU if there is one). The tokenizer is the run's own (GPT-2 BPE, char or
byte, rebuilt from the checkpoint as sample.py and eval.py rebuild it).

How each request is answered (the model reads at most block_size tokens):
- loglikelihood(context, continuation): lm-eval's TemplateLM tokenizes context + continuation and splits
  it where the context's own tokens end; an empty context is the prefix token. A request longer than one
  window is LEFT-TRUNCATED: the model reads the last block_size + 1 tokens (the context's first ones dropped).
- loglikelihood_rolling(text): lm-eval's rolling windows (utils.get_rolling_token_windows): every token is
  scored once, the first from the prefix token, each later window with up to block_size tokens of context.
- generate_until: the project's sampling.generate (incremental decoding while the text fits in block_size,
  then a sliding window), greedy unless do_sample; cut at the first stop sequence.
The prefix token stands before a text that starts from nothing: <|endoftext|> for GPT-2 BPE (as GPT-2 was
trained), a newline for char and byte models (their corpora separate documents by text, not by a token).
Scores are log-softmax over the model's whole (padded) vocabulary, exactly as the training loss.
Batches: loglikelihood requests are sorted by length and right-padded (the models are causal, so padding
after a row never changes its scores); generation batches rows of equal context length, since the models
take no padding mask.
"""
from __future__ import annotations

from collections import defaultdict

import torch

from data.tokenizer import TOKENIZERS, Tokenizer, load_tokenizer
from engine.checkpoint import load_for_inference
from engine.evaluation import amp
from engine.runtime import pick_device, pick_dtype
from models import LanguageModel
from sampling import generate
from schema import ConfigError

try:
    import lm_eval.models  # noqa: F401  lm-eval's own models first: its registry fills itself only while empty
    from lm_eval.api.model import TemplateLM
    from lm_eval.api.registry import register_model
except ImportError as e:  # harness.py prints this as its one-line error
    raise ImportError(f"lm-eval is not installed ({e}); install the optional extra: pip install -e '.[lmeval]' "
                      f"(or pip install lm-eval==0.4.13)") from None

MODEL_NAME = "t2i"
AUTO_BATCH = 32  # what --batch_size auto means here: lm-eval's auto-tuning probes HF models only
Row = tuple[list[int], int]  # a window of ids (the model reads all but the last) and how many last targets count


class HarnessError(ValueError):
    """A request or setting this adapter cannot serve; the message says what to do instead."""


@torch.inference_mode()
def score_rows(model: LanguageModel, rows: list[Row], batch_size: int,
               dtype: torch.dtype = torch.float32) -> list[tuple[float, bool]]:
    """For each row (ids, n): the summed log-probability of the last n ids, each given the ids before it
    in the row, and whether each of them is the model's argmax. Rows of at most block_size + 1 ids."""
    device = next(model.parameters()).device
    order = sorted(range(len(rows)), key=lambda i: -len(rows[i][0]))  # similar lengths share a batch
    out: list[tuple[float, bool]] = [(0.0, True)] * len(rows)
    for start in range(0, len(order), batch_size):
        chunk = order[start:start + batch_size]
        x = torch.zeros(len(chunk), len(rows[chunk[0]][0]) - 1, dtype=torch.long)  # (B, T) right-padded
        for b, i in enumerate(chunk):
            x[b, :len(rows[i][0]) - 1] = torch.tensor(rows[i][0][:-1])
        with amp(device, dtype):
            logits, _ = model(x.to(device))  # (B, T, V)
        sums, greedy = [], []
        for b, i in enumerate(chunk):
            ids, n = rows[i]
            logp = torch.log_softmax(logits[b, len(ids) - 1 - n:len(ids) - 1].float(), dim=-1)  # (n, V)
            target = torch.tensor(ids[len(ids) - n:], device=device)  # (n,)
            sums.append(logp.gather(-1, target[:, None]).sum())
            greedy.append((logp.argmax(-1) == target).all())
        for i, total, is_greedy in zip(chunk, torch.stack(sums).tolist(), torch.stack(greedy).tolist()):
            out[i] = (total, is_greedy)  # one transfer per batch, not one per row
    return out


def parse_batch_size(batch_size: int | str, max_batch_size: int | None) -> int:
    """lm-eval's --batch_size: an integer, or auto / auto:N (here AUTO_BATCH, or --max_batch_size)."""
    if str(batch_size).startswith("auto"):
        return max_batch_size or AUTO_BATCH
    if not str(batch_size).isdigit() or int(batch_size) < 1:
        raise HarnessError(f"--batch_size {batch_size!r}: give a positive integer (or auto)")
    return int(batch_size)


def pick_precision(device: str | None, dtype: str) -> tuple[torch.device, torch.dtype]:
    """The device (None: a GPU if there is one) and the autocast dtype, as eval.py picks them."""
    if dtype not in ("float32", "bfloat16", "auto"):
        raise HarnessError(f"dtype={dtype}: choose float32 (exact), bfloat16 or auto")
    try:
        chosen = pick_device(str(device or "auto"))
    except ConfigError as e:  # the runtime's message names the trainer's key
        message = str(e).replace("--train.device=auto", "device=auto").replace("train.device", "device")
        raise HarnessError(message) from None
    return chosen, pick_dtype(dtype, chosen)


def run_tokenizer(meta: dict, out_dir: str) -> Tokenizer:
    """The run's tokenizer, or a HarnessError when the run was not trained on prepared text."""
    if meta.get("tokenizer") not in TOKENIZERS:
        raise HarnessError(f"out_dir={out_dir} was trained on {meta.get('name', 'data')!r}, which has no text "
                           f"tokenizer (a synthetic task?); lm-eval needs a run trained on text prepared by "
                           f"data/prepare.py (tokenizer {', '.join(TOKENIZERS)})")
    return load_tokenizer(meta)


@register_model(MODEL_NAME)
class CheckpointLM(TemplateLM):
    """A run directory's newest checkpoint, answering lm-eval's three request types (see the module doc)."""

    def __init__(self, out_dir: str | None = None, dtype: str = "float32", device: str | None = None,
                 batch_size: int | str = 1, max_batch_size: int | None = None, **unknown) -> None:
        super().__init__()
        if unknown:
            raise HarnessError(f"unknown model_args {', '.join(sorted(unknown))}; valid: out_dir, dtype, device "
                               f"(and lm-eval's --batch_size, --max_batch_size, --device)")
        if out_dir is None:
            raise HarnessError("no run given: --model_args out_dir=RUN (a directory written by train.py)")
        self._device, self.dtype = pick_precision(device, dtype)
        model, cfg, meta = load_for_inference(str(out_dir), str(self._device), option="--model_args out_dir=RUN")
        self.model, self.tokenizer = model, run_tokenizer(meta, str(out_dir))
        self.block_size: int = cfg.model.block_size
        self.batch_size = parse_batch_size(batch_size, max_batch_size)

    @property
    def eot_token_id(self) -> int:
        return self.prefix_token_id

    @property
    def prefix_token_id(self) -> int:
        tok = self.tokenizer
        if tok.eot is not None:
            return tok.eot
        try:
            (newline,) = tok.encode("\n")
        except ValueError:
            raise HarnessError("this char model's vocabulary has no newline to start a text from; give every "
                               "request a context, or evaluate a byte or GPT-2 BPE model") from None
        return newline

    def tok_encode(self, string: str, add_special_tokens: bool | None = None, **kwargs) -> list[int]:
        try:
            return self.tokenizer.encode(string)
        except ValueError as e:  # a character outside a char model's vocabulary
            raise HarnessError(f"{e}; a char model reads only the characters of its training data: evaluate "
                               f"a byte or GPT-2 BPE model on this task") from None

    def tok_decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids)

    def _loglikelihood_tokens(self, requests, disable_tqdm: bool = False) -> list[tuple[float, bool]]:
        """requests: ((context, continuation), context ids, continuation ids), from TemplateLM.loglikelihood."""
        rows = []
        for (context, continuation), context_ids, continuation_ids in requests:
            if len(continuation_ids) > self.block_size:
                raise HarnessError(f"a continuation of {len(continuation_ids)} tokens is longer than the model's "
                                   f"block_size {self.block_size}: it cannot be scored in one window; "
                                   f"use a model with a longer block_size or a task with shorter answers")
            rows.append(((context_ids + continuation_ids)[-(self.block_size + 1):], len(continuation_ids)))
        results = score_rows(self.model, rows, self.batch_size, self.dtype)
        for (pair, _, _), result in zip(requests, results):
            self.cache_hook.add_partial("loglikelihood", pair, result)
        return results

    def loglikelihood_rolling(self, requests, disable_tqdm: bool = False) -> list[float]:
        from lm_eval.utils import get_rolling_token_windows, make_disjoint_window
        rows, owner = [], []
        for k, request in enumerate(requests):
            ids = self.tok_encode(request.args[0])
            for context, predicted in map(make_disjoint_window, get_rolling_token_windows(
                    ids, self.prefix_token_id, max_seq_len=self.block_size, context_len=1)):
                rows.append((context + predicted, len(predicted)))
                owner.append(k)
        totals = [0.0] * len(requests)
        for k, (logprob, _) in zip(owner, score_rows(self.model, rows, self.batch_size, self.dtype)):
            totals[k] += logprob
        for request, total in zip(requests, totals):
            self.cache_hook.add_partial("loglikelihood_rolling", (request.args[0],), total)
        return totals

    def generate_until(self, requests, disable_tqdm: bool = False) -> list[str]:
        from lm_eval.models.utils import handle_stop_sequences, normalize_gen_kwargs
        eos = self.tokenizer.decode([self.tokenizer.eot]) if self.tokenizer.eot is not None else None
        groups: dict[tuple, list[int]] = defaultdict(list)  # equal settings and context length -> request indices
        jobs = []
        for i, request in enumerate(requests):
            context, gen_kwargs = request.args
            kwargs = normalize_gen_kwargs(gen_kwargs)
            ids = self.tok_encode(context)[-self.block_size:] if context else [self.prefix_token_id]
            sampling = (float(kwargs.get("temperature", 0.0)), kwargs.get("top_k"), kwargs.get("top_p"))
            settings = (len(ids), kwargs["max_gen_toks"], *(sampling if kwargs["do_sample"] else (0.0, None, None)))
            jobs.append((ids, handle_stop_sequences(kwargs["until"], eos)))
            groups[settings].append(i)
        out = [""] * len(requests)
        for (_, max_new, temperature, top_k, top_p), members in groups.items():
            for start in range(0, len(members), self.batch_size):
                chunk = members[start:start + self.batch_size]
                idx = torch.tensor([jobs[i][0] for i in chunk], device=self._device)  # (B, T0)
                with amp(self._device, self.dtype):
                    new = generate(self.model, idx, max_new, temperature=temperature, top_k=top_k, top_p=top_p,
                                   vocab_size=self.tokenizer.vocab_size)[:, idx.size(1):]  # (B, max_new)
                for i, row in zip(chunk, new.tolist()):
                    out[i] = cut_at_stop(self.tokenizer.decode(row), jobs[i][1])
                    self.cache_hook.add_partial("generate_until", requests[i].args, out[i])
        return out


def cut_at_stop(text: str, until: list[str]) -> str:
    """text up to the earliest of the stop sequences (all of it when none occurs)."""
    return text[:min([text.find(s) for s in until if s and s in text], default=len(text))]
