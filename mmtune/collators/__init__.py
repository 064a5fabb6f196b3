"""Pure functions over `list[Example]`: padded batches and padding-free packed batches."""

from mmtune.collators.packed import collate_packed
from mmtune.collators.padded import collate_media, collate_padded

__all__ = ["collate_media", "collate_packed", "collate_padded"]
