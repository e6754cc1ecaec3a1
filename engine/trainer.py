"""The training loop, for any registered model on any dataset: train(cfg) -> the final metrics.

Reads top to bottom: runtime and data, model (new or resumed), optimizer, compile and DDP, budget and
log, the loop, the result. The model is only ever used through the registry contract
(models.LanguageModel), so no line here knows its type. What a run carries from step to step is one
dataclass (RunState); checkpointing, restoring and rolling back are plain functions of a Run.
"""
from __future__ import annotations

import contextlib
import json
import math
import signal
import sys
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel as DDP

from config import Config, ConfigError, changed_keys, save_json
from data import Dataset
from engine import runtime
from engine.budget import Budget
from engine.checkpoint import atomic_write_text, has_checkpoint, keep_newest_only, load_checkpoint, save_checkpoint
from engine.evaluation import evaluate
from engine.guard import Diverged, LossGuard, Preempted, StopFlag
from engine.optim import make_optimizer, set_lr
from engine.perf import peak_flops, peak_memory_bytes
from engine.runlog import MetricsLog, run_record
from engine.setup import Setup, set_up
from models import LanguageModel
from models.layers import component_params


@dataclass
class RunState:
    """What a checkpoint restores besides weights, optimizer and RNG."""
    step: int = 0          # optimizer steps taken
    time_s: float = 0.0    # training wall-clock so far (evaluation, logging and checkpoints excluded)
    data_shift: int = 0    # batches skipped by rollbacks: the data position is step + data_shift
    rollbacks: int = 0


@dataclass
class Run:
    cfg: Config
    rt: runtime.Runtime
    data: Dataset
    model: LanguageModel            # the plain module: what is saved and restored
    step_model: torch.nn.Module     # what trains: the model, compiled and/or wrapped in DDP
    optimizer: torch.optim.Optimizer
    budget: Budget
    log: MetricsLog
    state: RunState = field(default_factory=RunState)
    final: dict = field(default_factory=dict)  # the last evaluation's per-position and per-window losses

    @property
    def out_dir(self) -> Path:
        return Path(self.cfg.train.out_dir)

    def say(self, *args) -> None:
        if self.rt.master:
            print(*args)


def train(cfg: Config) -> dict:
    rt = runtime.setup(cfg.train.device, cfg.train.dtype)
    try:
        return run_training(cfg, rt)
    finally:
        runtime.teardown()


def run_training(cfg: Config, rt: runtime.Runtime) -> dict:
    if cfg.train.threads:
        torch.set_num_threads(cfg.train.threads)
    local_micro_batches(cfg, rt)  # refuse an impossible split before anything is written
    setup, ckpt = start_model(set_up(cfg), rt)
    cfg, data, model = setup.cfg, setup.data, setup.model
    model.to(rt.device)
    optimizer = make_optimizer(model, cfg.optim, rt.device.type)
    step_model = torch.compile(model) if cfg.train.compile else model
    if rt.distributed:
        step_model = DDP(step_model, device_ids=[rt.device.index] if rt.device.type == "cuda" else None)

    tokens_per_step = setup.tokens_per_step
    flops_per_token = model.flops_per_token()
    budget = Budget(cfg.train, cfg.optim, tokens_per_step, flops_per_token)  # refuses impossible budgets early
    log = MetricsLog(Path(cfg.train.out_dir), cfg, rt, tokens_per_step, flops_per_token, peak_flops(rt.device),
                     resume_step=ckpt["step"] if ckpt else None)
    run = Run(cfg, rt, data, model, step_model, optimizer, budget, log)
    if ckpt is not None:
        restore(run, ckpt)
    else:
        torch.manual_seed(cfg.train.seed + rt.rank)  # dropout masks differ per process
    if rt.master:
        save_json(cfg, run.out_dir / "config.json")
        (run.out_dir / "run.json").write_text(json.dumps(run_record(cfg, rt, model), indent=2) + "\n")
    run.say(f"{sum(p.numel() for p in model.parameters()) / 1e6:.2f}M parameters, {flops_per_token / 1e6:.1f} "
            f"MFLOP/token, {tokens_per_step} tokens/step, device {rt.device}, {rt.world_size} process(es), "
            f"start at step {run.state.step}")

    if ckpt is None:  # the curve starts at the untrained model (about ln V)
        log.write(0, lr=budget.lr(0, 0.0), time_s=0.0, **evaluate(step_model, data, cfg, rt))
    loop(run)
    log.close()
    if rt.master:
        keep_newest_only(run.out_dir)
        write_result(run)
    return log.last


def loop(run: Run) -> None:
    """Steps until the budget is spent; evaluates, logs and checkpoints on the way; rolls back on a bad
    loss; on SIGTERM/SIGINT finishes the step, evaluates, checkpoints and raises Preempted."""
    cfg, state = run.cfg, run.state
    guard = LossGuard(cfg.train.spike_factor)
    n_micro = local_micro_batches(cfg, run.rt)
    with StopFlag() as stop:
        while not run.budget.done(state.step, state.time_s):
            step, t0 = state.step, time.perf_counter()
            lr = run.budget.lr(step, state.time_s)
            set_lr(run.optimizer, lr)
            batches = [run.data.batch("train", cfg.train.batch_size, cfg.model.block_size, seed=cfg.train.seed,
                                      step=step + state.data_shift, micro=run.rt.rank * n_micro + i)
                       for i in range(n_micro)]
            logging = (step + 1) % cfg.train.log_interval == 0
            loss, norms = train_step(run.step_model, run.optimizer, batches, run.rt, cfg.optim.grad_clip,
                                     run.model.components() if logging else None)
            problem = guard.check(loss)
            stopping, bad, time_s = agree(run.rt, stop.signum is not None, problem is not None,
                                          state.time_s + time.perf_counter() - t0)
            if bad:
                roll_back(run, problem or "a bad loss on another process", step)
                guard.reset()
                continue
            prev_fraction = run.budget.fraction(step, state.time_s)
            state.step, state.time_s = step + 1, time_s
            record = {"loss": loss, **norms}
            evaluating = run.budget.eval_due(step + 1, time_s, prev_fraction) or stopping
            if evaluating:
                scores = evaluate(run.step_model, run.data, cfg, run.rt, detailed=run.budget.done(step + 1, time_s))
                run.final = {k: scores.pop(k) for k in list(scores) if isinstance(scores[k], list)}
                record.update(scores)
            if step + 1 in cfg.train.fork_steps:
                save(run, run.out_dir / "forks" / str(step + 1))
            if evaluating or logging:
                run.log.write(step + 1, lr=lr, time_s=time_s, **record)
            if evaluating:  # after the line: a checkpoint at step s implies metrics.jsonl holds step s
                save(run)
            if stopping:
                run.log.close()
                raise Preempted(stop.signum or signal.SIGTERM, step + 1)


def local_micro_batches(cfg: Config, rt: runtime.Runtime) -> int:
    if cfg.train.grad_accum % rt.world_size:
        raise ConfigError(f"train.grad_accum={cfg.train.grad_accum} micro-batches cannot be split evenly over "
                          f"{rt.world_size} processes; make it a multiple of {rt.world_size}")
    return cfg.train.grad_accum // rt.world_size


def train_step(model: torch.nn.Module, optimizer: torch.optim.Optimizer, batches: list, rt: runtime.Runtime,
               grad_clip: float, components: dict[str, list] | None = None) -> tuple[float, dict[str, float]]:
    """One optimizer step over this process's micro-batches: (their mean loss, figures). With `components`
    ({name: modules}) the figures are the whole gradient's norm (before clipping) and each component's,
    as grad_norm and grad_norm_<name>, and each component's relative update ||dtheta|| / ||theta||
    (update_<name>: what the optimizer did to it, which for Adam is not what its gradient norm says);
    else none are computed."""
    total = torch.zeros((), device=rt.device)
    for i, (x, y) in enumerate(batches):
        x, y = x.to(rt.device, non_blocking=True), y.to(rt.device, non_blocking=True)
        # DDP all-reduces gradients only after the last micro-batch of the step
        last = i == len(batches) - 1
        with (model.no_sync() if isinstance(model, DDP) and not last else contextlib.nullcontext()), rt.autocast():
            _, loss = model(x, y)
        (loss / len(batches)).backward()
        total += loss.detach()
    groups = component_params(components) if components is not None else {}
    figures = grad_norms(groups) if groups else {}
    before = {name: [p.detach().clone() for p in params] for name, params in groups.items()}
    if grad_clip > 0:
        torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    figures |= relative_updates(groups, before) if before else {}
    return total.item() / len(batches), figures  # .item(): the step's one host-device sync (two more on log steps)


def squared_norms(groups: dict[str, list[torch.Tensor]]) -> dict[str, float]:
    """The summed squares of each group's tensors, in one host-device transfer for all groups."""
    sums = [torch.stack([t.float().pow(2).sum() for t in ts]).sum() if ts else torch.zeros(()) for ts in groups.values()]
    return dict(zip(groups, torch.stack([s.cpu() for s in sums]).tolist()))


def grad_norms(groups: dict[str, list[torch.nn.Parameter]]) -> dict[str, float]:
    """L2 norm of the gradient of each component's parameters, and of all."""
    squares = squared_norms({name: [p.grad for p in params if p.grad is not None] for name, params in groups.items()})
    return {"grad_norm": math.sqrt(sum(squares.values())),
            **{f"grad_norm_{name}": math.sqrt(v) for name, v in squares.items()}}


def relative_updates(groups: dict[str, list[torch.nn.Parameter]], before: dict[str, list[torch.Tensor]]
                     ) -> dict[str, float | None]:
    """update_<name>: ||theta_after - theta_before|| / ||theta_before|| over each component's parameters
    (None where they were all zero)."""
    change = squared_norms({name: [p.detach() - b for p, b in zip(groups[name], old)] for name, old in before.items()})
    size = squared_norms(before)
    return {f"update_{name}": math.sqrt(change[name] / size[name]) if size[name] > 0 else None for name in before}


def start_model(setup: Setup, rt: runtime.Runtime) -> tuple[Setup, dict | None]:
    """(set-up, checkpoint or None): the fresh model, or it with a checkpoint's weights, or GPT-2's weights
    (whose shape the config then records). Never overwrites an earlier run by accident."""
    cfg, data = setup.cfg, setup.data
    out_dir, init = Path(cfg.train.out_dir), cfg.train.init_from
    if init == "auto":
        init = "resume" if has_checkpoint(out_dir) else "scratch"
    if init == "scratch" and has_checkpoint(out_dir):
        raise ConfigError(f"{out_dir} already holds a checkpoint; continue it with --train.init_from=resume "
                          f"(or auto), or choose another --train.out_dir")
    if init == "resume":
        ckpt = load_checkpoint(out_dir, map_location="cpu", log=print if rt.master else lambda *_: None)
        check_resumable(ckpt["config"], cfg, out_dir)
        setup.model.load_state_dict(ckpt["model"])
        return setup, ckpt
    if init.startswith("gpt2"):
        from models.hf_gpt2 import load_hf_gpt2  # imports transformers: only when asked for
        model = load_hf_gpt2(init, dropout=cfg.model.dropout)
        if data.vocab_size > model.cfg.vocab_size:
            raise ConfigError(f"GPT-2 weights cover {model.cfg.vocab_size} tokens but the dataset has "
                              f"{data.vocab_size}; prepare the data with --tokenizer gpt2")
        return replace(setup, cfg=Config(model.cfg, cfg.data, cfg.optim, cfg.train, cfg.wandb), model=model), None
    return setup, None


def check_resumable(saved: dict, cfg: Config, out_dir: Path) -> None:
    """A ConfigError naming the fix unless the checkpoint's model and optimizer groups are this config's."""
    now = asdict(cfg.model)
    if set(now) - set(saved["model"]):
        raise ConfigError(f"the checkpoint in {out_dir} was written by an older version of this project (its "
                          f"[model] has no {', '.join(sorted(set(now) - set(saved['model'])))}); this code cannot "
                          f"resume it: start a new run with --train.init_from=scratch and a fresh --train.out_dir")
    if saved["model"] != now:
        changed = changed_keys(saved["model"], now)
        raise ConfigError(f"the checkpoint in {out_dir} was trained with other model settings "
                          f"({', '.join('model.' + k for k in changed)}); resume with the same [model]")
    if saved.get("optim", {}).get("lr_mult", {}) != cfg.optim.lr_mult:  # it decides the optimizer's groups
        raise ConfigError(f"the checkpoint in {out_dir} was trained with optim.lr_mult = "
                          f"{saved.get('optim', {}).get('lr_mult', {})}; resume with the same optim.lr_mult")


def save(run: Run, folder: Path | None = None) -> None:
    """Checkpoint the run into out_dir, or a fork point into `folder` (a collective: every process
    gathers its RNG state). A failed write, e.g. a full disk, leaves the previous checkpoint intact, so
    training goes on."""
    rng = gather_rng(run.rt)
    if not (run.rt.master and (run.cfg.train.checkpoint or folder is not None)):
        return
    try:
        save_checkpoint(folder or run.out_dir, {"model": run.model.state_dict(), "optimizer": run.optimizer.state_dict(),
                                      "rng": rng, "config": run.cfg.to_dict(), "data_meta": run.data.meta,
                                      **asdict(run.state)})
    except OSError as e:
        print(f"warning: could not write a checkpoint at step {run.state.step} ({e}); the last good one is kept; "
              f"free space in {run.out_dir} or the next attempt fails too", file=sys.stderr)


def restore(run: Run, ckpt: dict) -> None:
    """Weights, optimizer, run state and this process's RNG from a checkpoint."""
    run.model.load_state_dict(ckpt["model"])
    run.optimizer.load_state_dict(ckpt["optimizer"])
    for key in asdict(run.state):  # in place: the loop holds run.state
        setattr(run.state, key, ckpt[key])
    rng = ckpt["rng"]
    runtime.set_rng_state(rng[run.rt.rank] if run.rt.rank < len(rng) else rng[0])


def roll_back(run: Run, reason: str, bad_step: int) -> None:
    """Back to the last good checkpoint, skipping every batch from there to the bad one (the replay
    sees fresh data); Diverged once cfg.train.max_rollbacks are spent or with no checkpoint."""
    rollbacks, shift = run.state.rollbacks, run.state.data_shift
    if rollbacks >= run.cfg.train.max_rollbacks or not has_checkpoint(run.out_dir):
        raise Diverged(f"{reason} at step {bad_step} after {rollbacks} rollback(s)"
                       f"{'' if has_checkpoint(run.out_dir) else ' and before any checkpoint'}; lower optim.lr, "
                       f"raise optim.warmup_iters or tighten optim.grad_clip")
    restore(run, load_checkpoint(run.out_dir, map_location="cpu", log=run.say))
    run.state.data_shift, run.state.rollbacks = shift + bad_step + 1 - run.state.step, rollbacks + 1
    run.log.rewind(run.state.step, event="rollback", reason=reason, bad_step=bad_step, rollbacks=run.state.rollbacks)


def gather_rng(rt: runtime.Runtime) -> list:
    """Every process's RNG state (dropout differs per process), so resume restores all of them."""
    state = runtime.rng_state()
    if not rt.distributed:
        return [state]
    states = [None] * rt.world_size
    dist.all_gather_object(states, state)
    return states


def agree(rt: runtime.Runtime, stop: bool, bad: bool, time_s: float) -> tuple[bool, bool, float]:
    """Processes must take the same branch at every step: stop if any was signalled, roll back if any
    saw a bad loss, and measure clock budgets on the slowest process's clock."""
    if not rt.distributed:
        return stop, bad, time_s
    t = torch.tensor([float(stop), float(bad), time_s], dtype=torch.float64, device=rt.device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t[0]), bool(t[1]), t[2].item()


def write_result(run: Run) -> None:
    """result.json marks a finished run and holds its final figures (the study reads it)."""
    rt, last, fpt = run.rt, run.log.last, run.model.flops_per_token()
    memory = peak_memory_bytes(rt.device)
    mean_rate = last["tokens"] / last["time_s"] if last.get("time_s") else None
    peak = peak_flops(rt.device)
    result = {key: last.get(key) for key in ("step", "tokens", "flops", "time_s", "val_loss", "train_loss",
                                             "val_acc", "train_acc")}
    result.update(parameters=sum(p.numel() for p in run.model.parameters()), flops_per_token=fpt,
                  hardware_flops_per_token=fpt + run.model.recompute_flops_per_token(),
                  tokens_per_s=mean_rate, peak_memory_bytes=memory,
                  mfu=mean_rate * fpt / (peak * rt.world_size) if mean_rate and peak else None, **run.final)
    atomic_write_text(run.out_dir / "result.json", json.dumps(result, indent=2) + "\n")
