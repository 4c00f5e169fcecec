"""Datasets on HF `datasets`: local files or hub datasets in, tokenised and padded batches out."""

from coati_ray.data.datasets import (
    LoadReport,
    build_preference_dataset,
    build_prompt_dataset,
    build_sft_dataset,
    collate_pairs,
    collate_prompts,
    collate_sft,
    tokenize_conversation,
)
from coati_ray.data.loading import load_rows
from coati_ray.data.template import COATI_TEMPLATE, ChatFormat

__all__ = [
    "LoadReport", "build_preference_dataset", "build_prompt_dataset", "build_sft_dataset", "collate_pairs",
    "collate_prompts", "collate_sft", "tokenize_conversation", "load_rows", "COATI_TEMPLATE", "ChatFormat",
]
