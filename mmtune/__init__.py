"""mmtune: fine-tune speech and vision-language models built from any encoder and any causal LLM."""

__version__ = "0.1.0"
