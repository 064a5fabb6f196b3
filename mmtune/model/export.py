"""Export: merge LoRA into the LLM and write a plain transformers checkpoint.

The result loads with `AutoModelForCausalLM.from_pretrained(OUT)` and `AutoTokenizer` without
mmtune. Towers and projectors are written beside it (`mmtune_towers.safetensors`) so nothing
trained is lost; mmtune itself keeps loading the original checkpoint folder.
"""

from pathlib import Path

import peft
from safetensors.torch import save_file

from mmtune.model.checkpoint import load_checkpoint


def export_checkpoint(checkpoint: str | Path, out_dir: str | Path) -> Path:
    model, tokenizer, _ = load_checkpoint(checkpoint)
    out_dir = Path(out_dir)
    llm = model.llm
    if isinstance(llm, peft.PeftModel):
        llm = llm.merge_and_unload()
    llm.config.use_cache = True
    llm.save_pretrained(str(out_dir))
    tokenizer.save_pretrained(str(out_dir))
    towers = {k: v.contiguous() for k, v in model.state_dict().items() if not k.startswith("llm.")}
    if towers:
        save_file({k: v.clone() for k, v in towers.items()}, str(out_dir / "mmtune_towers.safetensors"))
    return out_dir
