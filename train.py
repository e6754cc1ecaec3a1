"""Train any registered model: python train.py CONFIG.toml [--section.key=value ...] [--summary]

One process:  python train.py configs/shakespeare_char_cpu.toml
Many GPUs:    torchrun --standalone --nproc_per_node=4 train.py configs/owt_gpt2.toml
Many nodes:   torchrun --nnodes=2 --node_rank=R --master_addr=HOST --master_port=29500 --nproc_per_node=8 train.py ...

Reads top to bottom: config, runtime, data, model (new or resumed), optimizer, compile, DDP, loop.
The model is only ever used through the registry contract, so no line here knows its type.
"""
from __future__ import annotations

import contextlib
import json
import resource
import signal
import sys
import time
from pathlib import Path

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel as DDP

from config import Config, ConfigError, load_config, save_json
from data.loader import DataError, open_dataset
from engine import runtime
from engine.budget import Budget
from engine.guard import Diverged, LossGuard, Preempted, StopFlag
from engine.checkpoint import (CheckpointError, atomic_write_text, has_checkpoint, keep_newest_only,
                               load_checkpoint, save_checkpoint)
from engine.optim import make_optimizer
from engine.perf import peak_flops
from engine.runlog import MetricsLog, run_record
from models import build_model
from models.hf_gpt2 import HFLoadError

# Evaluation windows come from a fixed seed and a step number no training run reaches: every
# evaluation of every run (any model, any training seed) scores the same windows, which are never
# the windows of a training step. Comparisons across arms and seeds are then paired.
EVAL_SEED, EVAL_STEP = 0, 2 ** 40


def eval_batch(data, split: str, i: int, batch_size: int, block_size: int):
    return data.batch(split, batch_size, block_size, seed=EVAL_SEED, step=EVAL_STEP, micro=i)


def padded_vocab(n: int, multiple: int = 64) -> int:
    """Round the vocabulary up (50257 -> 50304) so the head's matmul tiles evenly on GPUs."""
    return -(-n // multiple) * multiple


def resolve_vocab(cfg: Config, dataset_vocab: int) -> None:
    if cfg.model.vocab_size == 0:
        cfg.model.vocab_size = padded_vocab(dataset_vocab)
    elif cfg.model.vocab_size < dataset_vocab:
        raise ConfigError(f"model.vocab_size={cfg.model.vocab_size} is smaller than the dataset's vocabulary "
                          f"({dataset_vocab}); set it to 0 to size it from the data")


def local_micro_batches(cfg: Config, rt: runtime.Runtime) -> int:
    if cfg.train.grad_accum % rt.world_size:
        raise ConfigError(f"train.grad_accum={cfg.train.grad_accum} micro-batches cannot be split evenly over "
                          f"{rt.world_size} processes; make it a multiple of {rt.world_size}")
    return cfg.train.grad_accum // rt.world_size


def train_step(model, optimizer, batches, rt: runtime.Runtime, grad_clip: float) -> float:
    """One optimizer step over this process's micro-batches; returns their mean loss."""
    total = torch.zeros((), device=rt.device)
    for i, (x, y) in enumerate(batches):
        x, y = x.to(rt.device, non_blocking=True), y.to(rt.device, non_blocking=True)
        # DDP all-reduces gradients only after the last micro-batch of the step
        last = i == len(batches) - 1
        with (model.no_sync() if isinstance(model, DDP) and not last else contextlib.nullcontext()), rt.autocast():
            _, loss = model(x, y)
        (loss / len(batches)).backward()
        total += loss.detach()
    if grad_clip > 0:
        torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return total.item() / len(batches)  # the step's one host-device sync


@torch.no_grad()
def evaluate(model, data, cfg: Config, rt: runtime.Runtime) -> dict[str, float]:
    """Mean loss over the same cfg.train.eval_iters batches per split at every evaluation, shared out
    over the processes; a process with no batch still joins the all-reduce, so none can deadlock."""
    model.eval()
    out = {}
    for split in ("train", "val"):
        loss_sum, batches, hits, scored = 0.0, 0, 0, 0
        for i in range(rt.rank, cfg.train.eval_iters, rt.world_size):
            x, y = eval_batch(data, split, i, cfg.train.eval_batch_size or cfg.train.batch_size,
                              cfg.model.block_size)
            x, y = x.to(rt.device), y.to(rt.device)
            with rt.autocast():
                logits, loss = model(x, y)
            mask = y != -1  # accuracy where the loss is scored (every position for text)
            loss_sum, batches = loss_sum + loss.item(), batches + 1
            hits, scored = hits + (logits.argmax(-1) == y)[mask].sum().item(), scored + mask.sum().item()
        loss_sum, batches, hits, scored = runtime.all_reduce_sum([loss_sum, batches, hits, scored], rt)
        out[f"{split}_loss"], out[f"{split}_acc"] = loss_sum / batches, hits / max(scored, 1)
    model.train()
    return out


def gather_rng(rt: runtime.Runtime) -> list:
    """Every process's RNG state (dropout differs per process), so resume restores all of them."""
    state = runtime.rng_state()
    if not rt.distributed:
        return [state]
    states = [None] * rt.world_size
    dist.all_gather_object(states, state)
    return states


def build_or_resume(cfg: Config, data, rt: runtime.Runtime):
    """(model, checkpoint state or None). Never overwrites an earlier run by accident."""
    out_dir, init = Path(cfg.train.out_dir), cfg.train.init_from
    if init == "auto":
        init = "resume" if has_checkpoint(out_dir) else "scratch"
    if init == "scratch" and has_checkpoint(out_dir):
        raise ConfigError(f"{out_dir} already holds a checkpoint; continue it with --train.init_from=resume "
                          f"(or auto), or choose another --train.out_dir")
    if init == "resume":
        state = load_checkpoint(out_dir, map_location="cpu", log=print if rt.master else lambda *_: None)
        saved = state["config"]["model"]
        if saved != vars(cfg.model):
            changed = sorted(k for k in saved.keys() | vars(cfg.model).keys()
                             if saved.get(k) != vars(cfg.model).get(k))
            raise ConfigError(f"the checkpoint in {out_dir} was trained with other model settings "
                              f"({', '.join('model.' + k for k in changed)}); resume with the same [model]")
        model = build_model(cfg.model)
        model.load_state_dict(state["model"])
        return model, state
    if init.startswith("gpt2"):
        from models.hf_gpt2 import load_hf_gpt2  # imports transformers: only when asked for
        model = load_hf_gpt2(init, dropout=cfg.model.dropout)
        if data.vocab_size > model.cfg.vocab_size:
            raise ConfigError(f"GPT-2 weights cover {model.cfg.vocab_size} tokens but the dataset has "
                              f"{data.vocab_size}; prepare the data with --tokenizer gpt2")
        cfg.model = model.cfg  # the checkpoint and config.json record the shape that was loaded
        return model, None
    return build_model(cfg.model), None


def train(cfg: Config) -> dict:
    rt = runtime.setup(cfg.train.device, cfg.train.dtype)
    try:
        return _train(cfg, rt)
    finally:
        runtime.teardown()


def _train(cfg: Config, rt: runtime.Runtime) -> dict:
    if cfg.train.threads:
        torch.set_num_threads(cfg.train.threads)
    n_micro = local_micro_batches(cfg, rt)
    data = open_dataset(cfg.data)
    resolve_vocab(cfg, data.vocab_size)
    data.check_block_size(cfg.model.block_size)
    out_dir = Path(cfg.train.out_dir)

    torch.manual_seed(cfg.train.seed)  # identical initial weights on every process
    raw_model, state = build_or_resume(cfg, data, rt)
    raw_model.to(rt.device)
    optimizer = make_optimizer(raw_model, cfg.optim, rt.device.type)
    # step: optimizer steps taken; data_shift: batches skipped by rollbacks (the data position is step + shift)
    run = {"step": 0, "time_s": 0.0, "data_shift": 0, "rollbacks": 0}

    def restore(state: dict) -> None:
        raw_model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        run.update({k: state[k] for k in ("step", "time_s", "data_shift", "rollbacks")})
        rng = state["rng"]
        runtime.set_rng_state(rng[rt.rank] if rt.rank < len(rng) else rng[0])

    if state is not None:
        restore(state)
    else:
        torch.manual_seed(cfg.train.seed + rt.rank)  # dropout masks differ per process

    model = torch.compile(raw_model) if cfg.train.compile else raw_model
    if rt.distributed:
        model = DDP(model, device_ids=[rt.device.index] if rt.device.type == "cuda" else None)

    tokens_per_step = cfg.train.batch_size * cfg.train.grad_accum * cfg.model.block_size  # all processes
    flops_per_token = raw_model.flops_per_token()
    budget = Budget(cfg.train, cfg.optim, tokens_per_step, flops_per_token)  # refuses impossible budgets early
    log = MetricsLog(out_dir, cfg, rt, tokens_per_step, flops_per_token, peak_flops(rt.device),
                     resume_step=run["step"] if state else None)
    if rt.master:
        save_json(cfg, out_dir / "config.json")
        (out_dir / "run.json").write_text(json.dumps(run_record(cfg, rt, raw_model), indent=2) + "\n")
        print(f"{sum(p.numel() for p in raw_model.parameters()) / 1e6:.2f}M parameters, "
              f"{flops_per_token / 1e6:.1f} MFLOP/token, {tokens_per_step} tokens/step, device {rt.device}, "
              f"{rt.world_size} process(es), start at step {run['step']}")

    def checkpoint() -> None:
        rng = gather_rng(rt)  # a collective: every process must take part
        if rt.master and cfg.train.checkpoint:
            try:
                save_checkpoint(out_dir, {"model": raw_model.state_dict(), "optimizer": optimizer.state_dict(),
                                          "rng": rng, "config": cfg.to_dict(), "data_meta": data.meta, **run})
            except OSError as e:  # e.g. a full disk: the previous checkpoint is intact, so train on
                print(f"warning: could not write a checkpoint at step {run['step']} ({e}); the last good one "
                      f"is kept; free space in {out_dir} or the next attempt fails too", file=sys.stderr)

    def roll_back(reason: str, bad_step: int) -> None:
        if run["rollbacks"] >= cfg.train.max_rollbacks or not has_checkpoint(out_dir):
            raise Diverged(f"{reason} at step {bad_step} after {run['rollbacks']} rollback(s)"
                           f"{'' if has_checkpoint(out_dir) else ' and before any checkpoint'}; lower optim.lr, "
                           f"raise optim.warmup_iters or tighten optim.grad_clip")
        shift, rollbacks = run["data_shift"], run["rollbacks"]
        restore(load_checkpoint(out_dir, map_location="cpu", log=print if rt.master else lambda *_: None))
        # skip every batch from the checkpoint to the bad one: the replay sees fresh data
        run.update(data_shift=shift + bad_step + 1 - run["step"], rollbacks=rollbacks + 1)
        guard.reset()
        log.rewind(run["step"], event="rollback", reason=reason, bad_step=bad_step, rollbacks=run["rollbacks"])

    if state is None:  # the curve starts at the untrained model (about ln V)
        log.write(0, lr=budget.lr(0, 0.0), time_s=0.0, **evaluate(model, data, cfg, rt))
    guard = LossGuard(cfg.train.spike_factor)
    with StopFlag() as stop:
        t0 = time.perf_counter()
        while not budget.done(run["step"], run["time_s"]):
            step = run["step"]
            lr = budget.lr(step, run["time_s"])
            for group in optimizer.param_groups:
                group["lr"] = lr
            batches = [data.batch("train", cfg.train.batch_size, cfg.model.block_size, seed=cfg.train.seed,
                                  step=step + run["data_shift"], micro=rt.rank * n_micro + i) for i in range(n_micro)]
            loss = train_step(model, optimizer, batches, rt, cfg.optim.grad_clip)
            problem = guard.check(loss)
            stopping, bad, time_s = agree(rt, stop.signum is not None, problem is not None,
                                          run["time_s"] + time.perf_counter() - t0)
            if bad:
                roll_back(problem or "a bad loss on another process", step)
                t0 = time.perf_counter()
                continue
            prev_fraction = budget.fraction(step, run["time_s"])
            run.update(step=step + 1, time_s=time_s)
            record = {"loss": loss}
            evaluating = budget.eval_due(step + 1, time_s, prev_fraction) or stopping
            if evaluating:
                record.update(evaluate(model, data, cfg, rt))
            if evaluating or (step + 1) % cfg.train.log_interval == 0:
                log.write(step + 1, lr=lr, time_s=time_s, **record)
            if evaluating:  # after the line: a checkpoint at step s implies metrics.jsonl holds step s
                checkpoint()
            if stopping:
                log.close()
                raise Preempted(stop.signum or signal.SIGTERM, step + 1)
            t0 = time.perf_counter()  # evaluation, checkpoints and logging are not training time
    log.close()
    if rt.master:
        keep_newest_only(out_dir)
        write_result(out_dir, log.last, raw_model, flops_per_token, rt)
    return log.last


def agree(rt: runtime.Runtime, stop: bool, bad: bool, time_s: float) -> tuple[bool, bool, float]:
    """Processes must take the same branch at every step: stop if any was signalled, roll back if any
    saw a bad loss, and measure clock budgets on the slowest process's clock."""
    if not rt.distributed:
        return stop, bad, time_s
    t = torch.tensor([float(stop), float(bad), time_s], dtype=torch.float64, device=rt.device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t[0]), bool(t[1]), t[2].item()


def write_result(out_dir: Path, last: dict, model, flops_per_token: float, rt: runtime.Runtime) -> None:
    """result.json marks a finished run and holds its final figures (the study reads it)."""
    memory = (torch.cuda.max_memory_allocated(rt.device) if rt.device.type == "cuda"
              else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)
    mean_rate = last["tokens"] / last["time_s"] if last.get("time_s") else None
    peak = peak_flops(rt.device)
    result = {key: last.get(key) for key in ("step", "tokens", "flops", "time_s", "val_loss", "train_loss",
                                             "val_acc", "train_acc")}
    result.update(parameters=sum(p.numel() for p in model.parameters()), flops_per_token=flops_per_token,
                  tokens_per_s=mean_rate, peak_memory_bytes=memory,
                  mfu=mean_rate * flops_per_token / (peak * rt.world_size) if mean_rate and peak else None)
    atomic_write_text(out_dir / "result.json", json.dumps(result, indent=2) + "\n")


def main(argv: list[str]) -> int:
    args = [a for a in argv if a != "--summary"]
    if not args or args[0].startswith("--"):
        print("usage: python train.py CONFIG.toml [--section.key=value ...] [--summary]", file=sys.stderr)
        return 2
    try:
        cfg = load_config(args[0], args[1:])
        if "--summary" in argv:
            from engine.summary import print_summary
            print_summary(cfg)
        else:
            train(cfg)
    except (ConfigError, DataError, CheckpointError, HFLoadError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except Diverged as e:
        print(f"error: training diverged: {e}", file=sys.stderr)
        return 1
    except Preempted as e:
        print(f"{e}; checkpoint written, continue with --train.init_from=resume", file=sys.stderr)
        return 128 + e.signum  # the shell's convention for "ended by a signal": not finished
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
