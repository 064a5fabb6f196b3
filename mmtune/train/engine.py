"""How the processes of a run share the model: one process, DDP, FSDP2 or DeepSpeed ZeRO-2/3.

The loop asks this object and never the engines' own APIs:

    engine = Engine.choose(cfg, accelerator, mixed_precision)   # refuses, by name, what an engine cannot run
    engine.shard(model)                             # FSDP2: before the optimizer is built on the shards
    model, optimizer = engine.prepare(model, optimizer)
    with engine.accumulating(model, last): engine.backward(model, loss)
    engine.gather(module) / engine.load_weights(module, path)   # whole weights in and out of checkpoints

    name      process count  model held            optimizer state in a checkpoint
    single    1              whole                 optimizer.safetensors
    ddp       N              whole on each         optimizer.safetensors (one process's)
    fsdp      N              1/N (mmtune.train.fsdp)  optimizer.safetensors (gathered whole)
    zero2/3   N              whole / 1/N (mmtune.train.zero)  deepspeed/ (DeepSpeed's partitions)

The first three write the same checkpoints, so a run resumes under any of them and any process
count; a DeepSpeed checkpoint resumes under the same stage and process count (`check_resume`).
"""

import json
import logging
import shutil
from contextlib import nullcontext
from pathlib import Path

from accelerate.utils import DistributedType

from mmtune.config import Config, ConfigError
from mmtune.errors import CheckpointError
from mmtune.model.build import part_plans
from mmtune.model.checkpoint import load_weights
from mmtune.train import fsdp as fsdp_engine
from mmtune.train import zero
from mmtune.train.state import STATE_FILE

log = logging.getLogger("mmtune")


class Engine:
    def __init__(self, name: str, accelerator, mixed_precision: str):
        self.name, self.acc, self.mixed_precision = name, accelerator, mixed_precision
        self.stage = {"zero2": 2, "zero3": 3}.get(name, 0)

    @classmethod
    def choose(cls, cfg: Config, accelerator, mixed_precision: str) -> "Engine":
        """From the launch (accelerate's distributed type) and train.fsdp; mixed_precision: the one in use."""
        deepspeed = accelerator.distributed_type == DistributedType.DEEPSPEED
        wants_fsdp = cfg.train.fsdp or accelerator.distributed_type == DistributedType.FSDP or fsdp_engine.requested()
        if deepspeed and cfg.train.fsdp:
            raise ConfigError("train.fsdp with a DeepSpeed accelerate config: both shard the model; choose one "
                              "(drop train.fsdp, or launch with an FSDP or --multi_gpu config)")
        if deepspeed:
            name = f"zero{zero.configure(accelerator, cfg.train)}"
        elif wants_fsdp and accelerator.num_processes > 1:
            name = "fsdp"
        else:
            if wants_fsdp:
                log.info("train.fsdp: one process, nothing to shard; training unsharded")
            name = "ddp" if accelerator.num_processes > 1 else "single"
        what = {"fsdp": "train.fsdp"}.get(name, "DeepSpeed ZeRO")
        if name in ("fsdp", "zero2", "zero3"):
            if cfg.model.kind == "bridge" and "qlora" in part_plans(cfg.model).values():
                raise ConfigError(f"{what} with a qlora part: bitsandbytes' 4-bit weights cannot be sharded; use "
                                  f"lora (the engine already divides the base weights' state by the process "
                                  f"count) or launch with --multi_gpu (DDP)")
            if name != "fsdp" and cfg.model.kind == "bridge" and "hft" in part_plans(cfg.model).values():
                raise ConfigError("DeepSpeed ZeRO with a train: hft part: ZeRO steps flat partitions, so half a "
                                  "layer cannot be held still; launch with --multi_gpu (DDP) or use train.fsdp")
            if mixed_precision == "fp16":
                raise ConfigError(f"{what} with train.mixed_precision fp16: mmtune's loss scaling under a sharding "
                                  f"engine is not built; use bf16 (or no)")
        return cls(name, accelerator, mixed_precision)

    @property
    def deepspeed(self) -> bool:
        return self.stage > 0

    @property
    def every_process_evaluates(self) -> bool:
        """Sharded parameters: each forward gathers them, a collective every process joins."""
        return self.name in ("fsdp", "zero3")

    @property
    def record(self) -> dict:
        """What trainer_state.json keeps of the engine, for `check_resume`."""
        if self.deepspeed:
            return {"name": self.name, "processes": self.acc.num_processes}
        return {"name": "torch"}  # single, DDP and FSDP write the same checkpoints

    def building(self):
        """The context to build the model in. ZeRO-3: whole, as one process builds it, and partitioned at
        `prepare` (transformers would otherwise build it already partitioned, under deepspeed.zero.Init,
        where mmtune's build steps, which write weights, cannot reach the shards)."""
        return zero.built_whole(self.acc.state.deepspeed_plugin) if self.stage == 3 else nullcontext()

    def shard(self, model) -> None:
        if self.name == "fsdp":
            fsdp_engine.shard(model.to(self.acc.device), self.mixed_precision)

    def prepare(self, model, optimizer):
        """-> (model, optimizer) as the loop drives them: DDP- or DeepSpeed-wrapped, or as they are (FSDP)."""
        if self.name == "fsdp":  # accelerate would wrap a sharded model in DDP (or shard it again)
            return model, optimizer
        wrapped, wrapped_optimizer = self.acc.prepare(model, optimizer)
        if self.deepspeed:  # ZeRO now steps `optimizer` (the AdamW) on this process's partitions
            zero.report(model, optimizer, self.stage)
        return wrapped, wrapped_optimizer

    def accumulating(self, model, last: bool):
        """The context of a micro-batch: gradients not synchronized before the step's last one (DDP);
        DeepSpeed and FSDP2 reduce at the step's end themselves."""
        if last or self.deepspeed:
            return nullcontext()
        return self.acc.no_sync(model)

    def backward(self, model, loss) -> None:
        if self.deepspeed:
            zero.backward(model, loss)  # the engine steps the optimizer after the step's last micro-batch
        else:
            self.acc.backward(loss)

    def gather(self, module) -> dict | None:
        """The model's whole tensors where they are sharded (a collective); None where `module` holds them."""
        if self.name == "fsdp":
            return fsdp_engine.full_state(module)
        return zero.full_state(module, self.stage, keep=self.acc.is_main_process) if self.deepspeed else None

    def load_weights(self, module, path: Path) -> None:
        load_weights(module, path, assign=zero.load_full if self.stage == 3 else None)

    def save_state(self, model, out: Path, step: int) -> dict[str, Path]:
        """DeepSpeed: every process writes its optimizer partition into a staging folder under `out`;
        -> {checkpoint name: folder} for the checkpoint to move in (nothing for the torch engines)."""
        if not self.deepspeed:
            return {}
        staging = out / f".engine-{step}.tmp-0"  # a killed run's is removed at the next start (RunDir's .*.tmp-*)
        if self.acc.is_main_process:
            shutil.rmtree(staging, ignore_errors=True)
        self.acc.wait_for_everyone()
        zero.save_engine(model, staging)
        self.acc.wait_for_everyone()
        return {zero.ENGINE_DIR: staging / zero.ENGINE_DIR}

    def load_state(self, model, folder: Path) -> None:
        if self.deepspeed:
            zero.load_engine(model, folder)

    def check_resume(self, folder: Path) -> None:
        """A DeepSpeed checkpoint resumes under the same stage and process count; a torch one under any torch
        engine (DeepSpeed cannot take its optimizer state)."""
        try:
            saved = json.loads((folder / STATE_FILE).read_text()).get("engine") or {"name": "torch"}
        except (OSError, ValueError):
            return  # no or damaged training state: load_training_state says so, naming the folder
        if saved == self.record:
            return
        def says(r):
            return (f"DeepSpeed ZeRO-{r['name'][-1]} on {r['processes']} processes" if r["name"] != "torch"
                    else "one process, DDP or FSDP")

        raise CheckpointError(f"resume: {folder} was written by {says(saved)} and this run is {says(self.record)}; "
                            f"an optimizer state moves only between the same DeepSpeed stage and process count "
                            f"(or among the torch engines). Launch as it was, or start a new run from its weights "
                            f"with model.init_from={folder}")
