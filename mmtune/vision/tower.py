"""A CLIP or SigLIP vision tower that returns patch features from a chosen layer.

As LLaVA: the hidden state of `feature_layer` (default -2, the second to last layer) and,
for CLIP, the class token dropped, so an image becomes (image_size / patch_size)^2 tokens.
Layers after the feature layer (and SigLIP's pooling head) never reach the LLM, so they are
removed when the tower is built (so is the final layer norm, which only the pooled output uses): no compute is spent on them and no frozen-but-dead weights
pretend to train.
"""

import torch
from torch import nn

from mmtune.config import ConfigError
from mmtune.model.placeholders import num_image_tokens


class VisionTower(nn.Module):
    def __init__(self, vision_model: nn.Module, feature_layer: int = -2):
        super().__init__()
        self.model = vision_model  # transformers CLIPVisionModel or SiglipVisionModel
        config = vision_model.config
        self.feature_layer = feature_layer
        self.has_cls = config.model_type.startswith("clip")
        self.hidden_size = config.hidden_size
        self.image_size = config.image_size
        self.patch_size = config.patch_size
        n_states = config.num_hidden_layers + 1  # embeddings + every layer
        if not -n_states <= feature_layer < n_states:
            raise ConfigError(f"model.vision.feature_layer: {feature_layer} is outside the tower's {n_states} hidden "
                              f"states ({-n_states} .. {n_states - 1}; -1: the last layer, -2: the second to last)")
        keep = feature_layer % n_states  # layers needed: hidden_states[k] is the output of layer k
        inner = getattr(vision_model, "vision_model", vision_model)  # older transformers nest the transformer
        inner.encoder.layers = inner.encoder.layers[:keep]
        config.num_hidden_layers = keep
        inner.post_layernorm = nn.Identity()  # applies to the pooled/last output only, which is not used
        if getattr(inner, "head", None) is not None:
            del inner.head
            inner.use_head = False
            config.vision_use_head = False

    @property
    def num_tokens(self) -> int:
        return num_image_tokens(self.image_size, self.patch_size)

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """pixel_values (I, 3, H, W) -> (I, N, C), N patches."""
        pixel_values = pixel_values.to(next(self.model.parameters()).dtype)
        out = self.model(pixel_values=pixel_values, output_hidden_states=True)
        hidden = out.hidden_states[-1]  # the feature layer's output: (I, 1 + N, C) for CLIP, (I, N, C) for SigLIP
        return hidden[:, 1:] if self.has_cls else hidden
