"""Shared test fixtures (the tiny dataset and run live in engine/smoke.py, which scripts use too)."""
from __future__ import annotations

from engine.smoke import ROOT, tiny_overrides, write_byte_dataset, write_char_dataset

__all__ = ["ROOT", "tiny_overrides", "write_byte_dataset", "write_char_dataset"]


def model_variants() -> list[tuple[str, dict]]:
    """Every registered model at its tiny preset, plus the image model with every other mixer and each
    option that changes its wiring (the study's controls among them), so that registry-wide tests cover
    a new mixer or option as soon as it is registered."""
    from models import MODELS
    from models.mixers import MIXERS
    return ([(name, {}) for name in MODELS]
            + [("image_sum", {"mixer": m}) for m in MIXERS if m != "sum"]
            + [("image_sum", {"own_image": True}), ("image_sum", {"warmup": "mlp"}),
               ("image_attn", {"n_chain": 0, "head": "plain", "img_norm": "none"}), ("image_sum", {"n_chain": 0}),
               ("image_sum", {"img_norm": "layer"}),
               ("image_attn", {"image_stage": False}), ("image_sum", {"warmup": "mlp", "mixer": "none"})])


def variant_id(variant: tuple[str, dict]) -> str:
    name, overrides = variant
    return "-".join([name, *(f"{k}={v}" for k, v in overrides.items())])
