"""Shared test fixtures (the tiny dataset and run live in tools/smoke.py, which scripts use too)."""
from __future__ import annotations

from tools.smoke import ROOT, tiny_overrides, write_byte_dataset, write_char_dataset

__all__ = ["ROOT", "tiny_overrides", "write_byte_dataset", "write_char_dataset", "model_variants", "variant_id",
           "is_image"]


def model_variants() -> list[tuple[str, dict]]:
    """Every registered model at its tiny preset; the backbone with every registered token mixer (in each
    layer; an image block after an attention layer, the form the presets and studies use: as the only mixer
    of a tiny model an image block does not learn in the learning test's 150 steps, see issue 17's note);
    and each option that changes the image presets' wiring (the study's controls among them), so that
    registry-wide tests cover a new mixer or option as soon as it is registered."""
    from models import MIXERS, MODELS
    return ([(name, {}) for name in MODELS if name != "lm"]
            + [("lm", {"mixers": ["attn", m] if m.startswith("image_") else [m]})
               for m in MIXERS if m != "attn"]  # attn everywhere is the gpt preset
            + [("lm", {"mixers": ["attn", "hyena"], "mlp": [True, False]}),
               ("lm", {"mixers": ["attn", "image_attn"], "mlp": [True]}),
               ("image_sum", {"own_image": True}), ("image_sum", {"warmup": "mlp"}),
               ("image_attn", {"n_chain": 0, "head": "plain", "img_norm": "none"}), ("image_sum", {"n_chain": 0}),
               ("image_sum", {"img_norm": "layer"}),
               ("image_attn", {"image_stage": False}), ("image_sum", {"warmup": "mlp", "mixer": "none"})])


def variant_id(variant: tuple[str, dict]) -> str:
    name, overrides = variant
    return "-".join([name, *(f"{k}={'+'.join(map(str, v)) if isinstance(v, list) else v}" for k, v in overrides.items())])


def is_image(variant: tuple[str, dict]) -> bool:
    """Whether the variant has an image block (the image-specific tests apply)."""
    from models import tiny_config
    return any(layer.mixer.startswith("image_") for layer in tiny_config(variant[0], **variant[1]).layers())
