"""What the trainer logs about routing: each component's relative update size ||dtheta|| / ||theta|| per
logged step (checked against a hand computation), and the attention layers' entropy against uniform at
every evaluation (checked on maps whose entropy is known)."""
from __future__ import annotations

import json
import math

import torch
import torch.nn as nn

from config import load_config
from engine import runtime
from engine.evaluation import relative_entropy, row_entropy
from engine.trainer import train, train_step
from helpers import tiny_overrides, write_char_dataset


def test_uniform_causal_attention_has_the_entropy_of_a_uniform_row():
    n = 9
    uniform = torch.tril(torch.ones(n, n, dtype=torch.float64))
    uniform = uniform / uniform.sum(-1, keepdim=True)  # row t: 1 / (t + 1) on keys 0..t
    torch.testing.assert_close(row_entropy(uniform), torch.log(torch.arange(1, n + 1, dtype=torch.float64)),
                               rtol=1e-14, atol=1e-14)
    assert abs(relative_entropy(uniform[None, None]) - 1) < 1e-14
    one_key = torch.eye(n, dtype=torch.float64)[None, None]  # every query on itself: no spread at all
    assert relative_entropy(one_key) == 0.0
    half = torch.zeros(1, 1, 3, 3, dtype=torch.float64)
    half[..., 0, 0], half[..., 1, :2], half[..., 2, :2] = 1.0, 0.5, 0.5  # row 2 spreads over 2 of its 3 keys
    assert abs(relative_entropy(half) - (1.0 + math.log(2) / math.log(3)) / 2) < 1e-14


class TwoParameters(nn.Module):
    """loss = (a * x - y)^2 + (b * x - y)^2 summed: two components with a known gradient."""

    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Linear(1, 1, bias=False), nn.Linear(1, 1, bias=False)
        with torch.no_grad():
            self.a.weight.fill_(2.0)
            self.b.weight.fill_(-0.5)

    def forward(self, x, y):
        loss = ((self.a(x) - y) ** 2).sum() + ((self.b(x) - y) ** 2).sum()
        return None, loss


def test_relative_update_size_equals_a_hand_computation():
    model = TwoParameters()
    x, y = torch.tensor([[1.0], [3.0]]), torch.tensor([[1.0], [0.0]])
    # d/da sum (a x - y)^2 = sum 2 x (a x - y) = 2*1*(2-1) + 2*3*(6-0) = 38; for b: 2*1*(-1.5) + 2*3*(-1.5) = -12
    lr = 0.01
    optimizer = torch.optim.SGD(model.parameters(), lr=lr)
    rt = runtime.Runtime(torch.device("cpu"), torch.float32)
    _, figures = train_step(model, optimizer, [(x, y)], rt, grad_clip=0.0, components={"a": [model.a], "b": [model.b]})
    assert figures["grad_norm_a"] == 38.0 and figures["grad_norm_b"] == 12.0
    assert abs(figures["update_a"] - lr * 38 / 2.0) < 1e-6 and abs(figures["update_b"] - lr * 12 / 0.5) < 1e-6
    assert abs(model.a.weight.item() - (2.0 - lr * 38)) < 1e-6  # the step itself is the optimizer's, unchanged


def test_the_trainer_logs_update_sizes_and_attention_entropy(tmp_path):
    write_char_dataset(tmp_path / "data")
    train(load_config(None, tiny_overrides(tmp_path / "data", tmp_path / "run", **{"train.log_interval": 5})))
    lines = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    logged = [line for line in lines if "grad_norm" in line]
    parts = {"embedding", "h0.attn", "h0.mlp", "h1.attn", "h1.mlp", "head"}
    assert logged and all({f"update_{p}" for p in parts} <= line.keys() for line in logged)
    assert all(0 < line[f"update_{p}"] < 1 for line in logged for p in parts)
    evals = [line for line in lines if "val_loss" in line]
    assert evals[0]["step"] == 0 and all({"attn_entropy_h0", "attn_entropy_h1"} <= e.keys() for e in evals)
    assert all(0 < e["attn_entropy_h0"] <= 1 for e in evals) and evals[0]["attn_entropy_h0"] > 0.99  # at init: near uniform
