"""Tokenizers: loading with mmtune's placeholder tokens, and a small trainable one for offline work.

Real LLMs bring their own tokenizer and chat template. The offline examples and tests ship a
tiny byte-level BPE tokenizer trained by `train_tokenizer` on the example's own text, with a
ChatML template, so nothing is downloaded.
"""

from pathlib import Path

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import AutoTokenizer, PreTrainedTokenizerBase, PreTrainedTokenizerFast

from mmtune.model.placeholders import PLACEHOLDERS

# The plain fallback for a tokenizer without a chat template (documented in the README): ChatML.
CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "<|im_start|>{{ message['role'] }}\n{{ message['content'] }}<|im_end|>\n"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
CHATML_SPECIAL = ["<|pad|>", "<|im_start|>", "<|im_end|>"]


def load_tokenizer(path: str, chat_template: str | None = None) -> PreTrainedTokenizerBase:
    """The LLM's tokenizer with `<|audio|>`/`<|image|>` added as special tokens and a chat template."""
    tokenizer = AutoTokenizer.from_pretrained(path)
    missing = [t for t in PLACEHOLDERS.values() if t not in tokenizer.get_vocab()]
    if missing:
        tokenizer.add_tokens(missing, special_tokens=True)
    if chat_template is not None:
        tokenizer.chat_template = chat_template
    elif not tokenizer.chat_template:
        tokenizer.chat_template = CHATML_TEMPLATE
        tokenizer.add_tokens([t for t in CHATML_SPECIAL if t not in tokenizer.get_vocab()], special_tokens=True)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def placeholder_ids(tokenizer: PreTrainedTokenizerBase) -> dict[str, int]:
    """{"audio": id, "image": id} of the placeholder tokens."""
    return {modality: tokenizer.convert_tokens_to_ids(token) for modality, token in PLACEHOLDERS.items()}


def train_tokenizer(texts: list[str], vocab_size: int = 512) -> PreTrainedTokenizerFast:
    """A byte-level BPE tokenizer trained on `texts`, with ChatML and placeholder special tokens."""
    special = CHATML_SPECIAL + list(PLACEHOLDERS.values())
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=special,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(texts, trainer)
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<|pad|>", eos_token="<|im_end|>",
                                        bos_token=None, unk_token=None)
    tokenizer.add_tokens(list(PLACEHOLDERS.values()), special_tokens=True)
    tokenizer.chat_template = CHATML_TEMPLATE
    return tokenizer


def save_tokenizer(tokenizer: PreTrainedTokenizerBase, folder: str | Path) -> None:
    Path(folder).mkdir(parents=True, exist_ok=True)
    tokenizer.save_pretrained(str(folder))
