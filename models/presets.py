"""Presets of the backbone (models/backbone.py): the GPT, and the original study's image models with the
keys their configs have always used (n_layer warm-up blocks, mixer, n_chain, ...), from which their
layer list is derived. A preset only changes defaults (`preset`), so --help shows each one's own."""
from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass

from models.backbone import Layer, LMConfig, check_layers
from models.image import MIXINGS
from schema import ConfigError, option


def preset(base: type, class_name: str, **defaults) -> type:
    """A subclass of the config dataclass `base` whose fields named in `defaults` default to those values
    (same meaning, same choices): the schema of a registered model."""
    hints = typing.get_type_hints(base)
    fields = [(f.name, hints[f.name], option(defaults[f.name], f.metadata["doc"], f.metadata["choices"]))
              for f in dataclasses.fields(base) if f.name in defaults]
    unknown = set(defaults) - {name for name, _, _ in fields}
    assert not unknown, f"{base.__name__} has no fields {unknown}"
    return dataclasses.make_dataclass(class_name, fields, bases=(base,))


@dataclass
class ImageConfig(LMConfig):
    """The original study's image models: embedding -> n_layer warm-up blocks [-> one attention-only layer]
    -> n_chain residual image blocks (or, with n_chain = 0, one image block that the head reads)."""
    name: str = option("image_sum", "the registered model (models/__init__.py)")
    n_layer: int = option(3, "warm-up blocks before the first image block (the original: 3)")
    warmup: str = option("gpt", "warm-up blocks: gpt (attention + MLP) or mlp (MLP only: no attention anywhere "
                         "before the image blocks, the convolution-only control)", ("gpt", "mlp"))
    extra_attn: bool = option(False, "one attention-only residual layer after the warm-up (idea 2's original)")
    image_stage: bool = option(True, "false: the warm-up blocks alone with the tied head (the front-only control)")
    mixer: str = option("sum", "the image blocks' causal mixing: sum or mean (idea 1), attn (idea 2), none (control)",
                        tuple(MIXINGS))
    n_chain: int = option(1, "k > 0: k residual image blocks, then the tied head; 0: one image block whose features "
                          "the head reads (the original's plain form, see model.head)")
    head: str = option("proj", "n_chain = 0 only: proj (features -> width d -> tied head) or plain (the original: "
                       "features -> untied head)", ("proj", "plain"))

    def layers(self) -> list[Layer]:
        warm = Layer("attn" if self.warmup == "gpt" else "none", True)
        images = max(1, self.n_chain) if self.image_stage else 0
        return [warm] * self.n_layer + [Layer("attn", False)] * self.extra_attn + \
            [Layer(f"image_{self.mixer}", False)] * images

    def output_head(self) -> str:
        return self.head if self.image_stage and self.n_chain == 0 else "tied"

    def validate_layers(self) -> None:
        if self.mixers != ["attn"] or self.mlp:
            raise ConfigError(f"model.mixers and model.mlp are derived from n_layer, warmup, extra_attn, mixer and "
                              f"n_chain in the {self.name} preset; for a layer list of your own use model.name = \"lm\"")
        for key in ("n_layer", "n_chain"):
            if getattr(self, key) < 0:
                raise ConfigError(f"model.{key} must be >= 0, got {getattr(self, key)}")
        if self.n_chain and self.head != "proj":
            raise ConfigError(f"model.head = {self.head!r} applies to the plain form (model.n_chain = 0); with "
                              f"n_chain = {self.n_chain} the residual stream feeds the tied head: remove model.head "
                              f"or set model.n_chain = 0")
        if self.image_heads and self.mixer != "attn":
            raise ConfigError(f"model.image_heads applies to model.mixer = \"attn\", not {self.mixer!r}; remove it")
        check_layers(self.layers(), self.output_head())
