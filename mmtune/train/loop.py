"""The training loop, start to end, on Accelerate (one process, or `accelerate launch` with DDP, FSDP2 or
DeepSpeed ZeRO-2/3: mmtune.train.engine).

    result = train(load_config("examples/speech_digits/config.yaml"))

One optimizer step consumes `grad_accum` micro-batches on every process. The loss of a step is
the summed token loss over the supervised tokens of the WHOLE step (all micro-batches, all
processes) divided by their count, so accumulation and process count do not change it.

A run is `train.max_steps` long, or `train.epochs` passes over the data (turned into steps from
the batch plans). With `train.best_metric` every evaluation that improves it is saved as a
checkpoint that pruning never removes; `train.early_stopping_patience` ends the run after that
many evaluations without improvement; `final/` holds the best or the last weights (`train.final`).
"""

import glob
import logging
import math
import os
import shutil
import time
from pathlib import Path

import torch
from accelerate import Accelerator
from accelerate.utils import broadcast, broadcast_object_list, set_seed

from mmtune.collators import collate_packed, collate_padded
from mmtune.config import Config, ConfigError, to_dict
from mmtune.console import progress_bar
from mmtune.data.dataset import MultimodalDataset
from mmtune.data.encode import MediaSpec
from mmtune.data.example import IGNORE_INDEX, to_device
from mmtune.data.loader import Draws, DrawLog, PlanSampler, draw_batches, worker_error
from mmtune.data.stream import batch_budget, check_budget, epoch_sizes, steps_for_epochs
from mmtune.errors import CheckpointError, DataError, MmtuneError
from mmtune.eval.run import evaluate, write_predictions
from mmtune.model.build import part_plans
from mmtune.model.checkpoint import WEIGHTS_FILE, save_checkpoint, start_model
from mmtune.model.whisper import WhisperASR
from mmtune.train.best import Best
from mmtune.train.engine import Engine
from mmtune.train.hft import HalfFineTuning
from mmtune.train.optim import build_optimizer, build_scheduler
from mmtune.train.rundir import (CHECKPOINT_PREFIX, FINAL_DIR, RunDir, checkpoints, config_changes, describe_changes,
                                 find_resume, prune_checkpoints, step_of)
from mmtune.train.state import load_training_state, saved_config, training_files
from mmtune.train.report import write_eval_json, write_report
from mmtune.train.tracker import Tracker, format_progress
from mmtune.train.zero import accelerator_options

log = logging.getLogger("mmtune")


IDLE_PARTS = {"audio": ("audio_encoder", "audio_projector"), "image": ("vision_tower", "vision_projector")}


class TrainingError(MmtuneError):
    """The run had to stop (NaN loss, nothing to resume); the message says what was kept."""


def train(cfg: Config) -> dict:
    """Run the configured training; returns the final eval metrics (also in OUTPUT_DIR/eval.json)."""
    if cfg.data.train is None:
        raise ConfigError("data.train: give the training manifest (JSONL or LLaVA .json), e.g. data.train=train.jsonl")
    if cfg.train.best_metric and cfg.data.eval is None:
        raise ConfigError("train.best_metric: needs held-out data to measure it on; set data.eval")
    check_data_paths(cfg)
    # without CUDA the processes join over gloo (DDP, FSDP and DeepSpeed alike)
    precision = _mixed_precision(cfg.train.mixed_precision)
    launched = os.environ.get("ACCELERATE_MIXED_PRECISION")  # the launch's (config file or --mixed_precision)
    if launched and launched != precision:
        log.warning("the launch asks for mixed precision %s; train.mixed_precision (%s) decides", launched, precision)
    accelerator = Accelerator(mixed_precision=precision, **accelerator_options())
    out = Path(cfg.train.output_dir)
    # the main process owns output_dir for the run; the others learn whether it claimed or refused it
    run_dir = on_main(accelerator, lambda: RunDir.claim(out, cfg.train.resume, cfg.train.overwrite))
    try:
        return _train(cfg, accelerator, out, precision)
    finally:
        if run_dir is not None:
            run_dir.release()


def _train(cfg: Config, accelerator: Accelerator, out: Path, precision: str) -> dict:
    resume_dir = find_resume(out, cfg.train.resume)
    resumes = check_resume(resume_dir, cfg)
    set_seed(cfg.train.seed)
    if cfg.train.cpu_threads and accelerator.device.type == "cpu":
        torch.set_num_threads(cfg.train.cpu_threads)
    # DDP, FSDP2 (train.fsdp or an accelerate FSDP config) or DeepSpeed ZeRO (mmtune.train.engine)
    engine = Engine.choose(cfg, accelerator, precision)
    with engine.building():
        model, tokenizer = start_model(cfg.model, device=str(accelerator.device))
    check_positions(cfg, model)
    if cfg.train.gradient_checkpointing:
        model.enable_activation_checkpointing()
    engine.shard(model)  # FSDP2: before the optimizer is built, which then holds the shards
    train_set, eval_set = _datasets(cfg, tokenizer, accelerator)
    length = RunLength.of(cfg, train_set, accelerator.num_processes)
    optimizer = build_optimizer(model, cfg.train, cfg.model)
    scheduler = build_scheduler(optimizer, cfg.train, length.steps)
    model, optimizer = engine.prepare(model, optimizer)
    best = Best(cfg.train.best_metric, cfg.train.early_stopping_patience) if cfg.train.best_metric else None
    step, position = 0, {"epoch": 0, "index": 0}
    if resume_dir is not None:
        engine.check_resume(resume_dir)
        engine.load_weights(accelerator.unwrap_model(model), resume_dir / WEIGHTS_FILE)
        engine.load_state(model, resume_dir)  # DeepSpeed's optimizer partitions
        state = load_training_state(resume_dir, None if engine.deepspeed else optimizer, scheduler,
                                    train_set.encoder)
        step, position = state["step"], state["stream"]
        if best is not None and not best.load_state_dict(state.get("best")):
            log.info("%s tracked no best %s; the best checkpoint is chosen among this run's evaluations from now on",
                     resume_dir, best.metric)
        resumes = state.get("resumes", []) + resumes
        log.info("resumed from %s at step %d", resume_dir, step)
    run = _Run(cfg, accelerator, model, tokenizer, optimizer, scheduler, train_set, eval_set, out, position,
               length, best, resumes, engine)
    return run.loop(step)


class RunLength:
    """How long the run is in optimizer steps, and how many micro-batches an epoch's plan has.

    With train.epochs the epochs' plans are drawn up front (seconds at a million rows) and their
    micro-batches counted; the steps are that count / (grad_accum x processes), rounded down.
    """

    def __init__(self, steps: int, epoch_batches: list[int] | None, per_step: int):
        self.steps, self.epoch_batches, self.per_step = steps, epoch_batches, per_step

    @classmethod
    def of(cls, cfg: Config, train_set: MultimodalDataset, processes: int) -> "RunLength":
        t = cfg.train
        per_step = t.grad_accum * processes
        if t.epochs is None:
            return cls(t.max_steps, None, per_step)
        sizes = epoch_sizes(train_set.lengths, cfg.data, t.seed, math.ceil(t.epochs), train_set.shards)
        steps = steps_for_epochs(sizes, t.epochs, per_step)
        log.info("train.epochs=%g: %d optimizer steps (%s micro-batches an epoch, %d a step)", t.epochs, steps,
                 "/".join(map(str, sizes)), per_step)
        return cls(steps, sizes, per_step)

    def epoch(self, position: dict) -> float | None:
        """Epochs done at plan position {"epoch", "index"} (None when the epochs' sizes are not known)."""
        if self.epoch_batches is None:
            return None
        e = position["epoch"]
        size = self.epoch_batches[min(e, len(self.epoch_batches) - 1)]
        return e + position["index"] / max(size, 1)


def _datasets(cfg: Config, tokenizer, accelerator) -> tuple[MultimodalDataset, MultimodalDataset | None]:
    """The train and eval datasets; the main process builds (or reads) the index first, the others read it."""
    spec = MediaSpec.from_config(cfg.model, cfg.data)
    progress = accelerator.is_main_process
    with accelerator.main_process_first():
        train_set = MultimodalDataset.load(cfg.data.train, tokenizer, spec, cfg.data, train=True,
                                           seed=cfg.train.seed, progress=progress)
        eval_set = (MultimodalDataset.load(cfg.data.eval, tokenizer, spec, cfg.data, train=False, progress=progress)
                    if cfg.data.eval else None)
    _report_data(train_set, eval_set)
    check_budget(train_set.lengths, cfg.data)
    return train_set, eval_set


class _Run:
    """The state of one run, so the loop below reads top to bottom."""

    def __init__(self, cfg, accelerator, model, tokenizer, optimizer, scheduler, train_set, eval_set, out, position,
                 length: RunLength, best: Best | None, resumes: list[dict], engine: Engine):
        self.cfg, self.acc, self.model, self.tokenizer = cfg, accelerator, model, tokenizer
        self.engine = engine
        self.optimizer, self.scheduler = optimizer, scheduler
        self.train_set, self.eval_set, self.out = train_set, eval_set, out
        self.length, self.best = length, best
        self.hft = (HalfFineTuning.of(accelerator.unwrap_model(model), part_plans(cfg.model), cfg.model.hft.rounds,
                                      cfg.model.hft.seed, length.steps) if cfg.model.kind == "bridge" else None)
        found = sorted(checkpoints(out), key=step_of)
        self.last_checkpoint: Path | None = found[-1] if found else None  # every checkpoint saved has finite weights
        self.resumes = resumes  # the settings each resume changed: [{"step", "from", "changed"}]
        self.saved_step: int | None = None  # step of the newest checkpoint written
        self.evaluated: dict[int, tuple[dict, list[dict]]] = {}  # step -> (metrics, records): latest and best only
        self.stopped: str | None = None  # why the run ended before its last step (early stopping)
        self.position = position  # the batch plan's position after the last micro-batch trained on
        self.draws = DrawLog()
        self.data_wait = 0.0  # seconds the loop waited for batches from the data workers
        data = cfg.data
        sampler = PlanSampler(train_set.lengths, data, cfg.train.seed, position, accelerator.process_index,
                              accelerator.num_processes, train_set.shards)
        collate = collate_packed if data.batching == "packed" else collate_padded
        draws = Draws(train_set, collate, tokenizer.pad_token_id, batch_budget(train_set.lengths, data),
                      padded=data.batching == "padded", on_bad=data.on_bad_sample, workers=data.num_workers)
        self.draw_source = draws
        self.batches = draw_batches(draws, sampler, data)

    def loop(self, start_step: int) -> dict:
        tracker = Tracker(self.out, resume_step=start_step) if self.acc.is_main_process else None
        try:
            return self._steps(start_step, tracker)
        except RuntimeError as e:  # a data worker died while the loop was elsewhere than next(batches)
            raise worker_error(self.draw_source, e) from None
        finally:
            self.batches.close()  # the data workers exit now, not when the run object is collected
            if tracker:
                tracker.close()  # flushes TensorBoard even when the run stops on an error

    def _steps(self, start_step: int, tracker) -> dict:
        cfg, acc, total = self.cfg.train, self.acc, self.length.steps
        bar = progress_bar(total=total, initial=start_step, desc="train", unit="step", disable=not acc.is_main_process)
        started, tokens_seen, last = time.perf_counter(), 0, start_step
        self.model.train()
        for step in range(start_step + 1, total + 1):
            loss, tokens = self.train_step(step)
            last, tokens_seen = step, tokens_seen + tokens
            tokens_per_s = tokens_seen / max(time.perf_counter() - started, 1e-9)
            lr = self.scheduler.get_last_lr()[0]
            bar.update(1)
            bar.set_postfix(format_progress(loss, lr, tokens_per_s, self.length.epoch(self.position)))
            if tracker and (step % cfg.log_every == 0 or step == 1 or step == total):
                data_wait = self.data_wait / max(time.perf_counter() - started, 1e-9)  # share of wall time so far
                tracker.log(step, loss=loss, lr=lr, tokens_per_s=tokens_per_s, data_wait=round(data_wait, 4))
            if step == total:
                break  # the last step's evaluation and checkpoint are the finish's
            if cfg.eval_every and step % cfg.eval_every == 0:
                self.evaluate(step, tracker)
                if self.best is not None and self.best.exhausted:
                    self.stopped = (f"early stopping at step {step}: {self.best.metric} did not improve in "
                                    f"{self.best.waited} evaluations after step {self.best.step}")
                    log.info("%s", self.stopped)
                    break
            if cfg.save_every and step % cfg.save_every == 0:
                self.save_checkpoint(step)
        bar.close()
        elapsed = time.perf_counter() - started
        return self.finish(last, tracker, {"train_seconds": elapsed, "tokens_per_s": tokens_seen / max(elapsed, 1e-9),
                                           "data_wait_fraction": self.data_wait / max(elapsed, 1e-9)})

    def train_step(self, step: int) -> tuple[float, int]:
        """One optimizer step over grad_accum micro-batches; returns (step loss, real tokens)."""
        batches = [self._micro_batch() for _ in range(self.cfg.train.grad_accum)]
        local = sum(_supervised(b["labels"]) for b in batches)
        total = int(self.acc.reduce(torch.tensor(local, device=self.acc.device), reduction="sum"))
        loss_sum = torch.zeros((), device=self.acc.device)
        idle = None  # modalities idle (dummy input only) in every micro-batch of this process
        for i, batch in enumerate(batches):
            last = i == len(batches) - 1
            with self.engine.accumulating(self.model, last), self.acc.autocast():
                out = self.model(**batch)
                # DDP averages gradients over processes, so scale by their number to get a global token mean
                self.engine.backward(self.model, out.loss_sum * self.acc.num_processes / total)
            loss_sum += out.loss_sum.detach()
            idle = set(out.idle) if idle is None else idle & set(out.idle)
        if self.acc.num_processes > 1 and not self.engine.deepspeed:  # ZeRO's gradients are in its own buffers
            self._skip_idle_parts(idle or set())
        if self.hft is not None:
            self.hft.drop_frozen(step)  # this round's frozen half: no gradient, so AdamW leaves it as it is
        loss = float(self.acc.reduce(loss_sum, reduction="sum")) / total
        if not math.isfinite(loss):
            kept = self.last_checkpoint or "none (no checkpoint was written yet)"
            raise TrainingError(f"the loss is {loss} at step {step}; the run stopped. Last good checkpoint: {kept}. "
                                f"Lower train.lr, enable train.max_grad_norm, or check the data with `mmtune data check`")
        if not self.engine.deepspeed:  # DeepSpeed clipped and stepped in the last micro-batch's backward
            if self.cfg.train.max_grad_norm:
                self.acc.clip_grad_norm_(self.model.parameters(), self.cfg.train.max_grad_norm)
            self.optimizer.step()
            self.optimizer.zero_grad(set_to_none=True)
        self.scheduler.step()
        return loss, sum(int(b["input_ids"].numel() if "attention_mask" not in b else b["attention_mask"].sum())
                         for b in batches)

    def _skip_idle_parts(self, idle: set[str]) -> None:
        """A tower and projector that saw no input on any process this step get no gradient (not a zero
        one), so the optimizer skips them as it does in one process: N processes step as one does."""
        flags = torch.tensor([m in idle for m in IDLE_PARTS], dtype=torch.float32, device=self.acc.device)
        everywhere = self.acc.reduce(flags, reduction="sum") == self.acc.num_processes  # idle on every process
        model = self.acc.unwrap_model(self.model)
        for parts, skip in zip(IDLE_PARTS.values(), everywhere.tolist()):
            if skip:
                for part in (getattr(model, name) for name in parts):
                    for p in (part.parameters() if part is not None else ()):
                        p.grad = None

    def _micro_batch(self) -> dict:
        """The next micro-batch of this process (process r takes every r-th of the global plan); a batch
        whose every row was skipped is passed over (but not forever: more empty batches in a row than
        there are samples means every row fails when decoded)."""
        for _ in range(len(self.train_set) + 1):
            started = time.perf_counter()
            item = next(self.batches)
            self.data_wait += time.perf_counter() - started
            self.position = item["after"]
            self.draws.add(item)
            if item["batch"] is not None:
                return to_device(item["batch"], self.acc.device)
        raise DataError(self.cfg.data.train, f"every row fails when decoded ({len(self.draws.skipped)} skipped, "
                                             f"e.g. {next(iter(self.draws.skipped.values()), ('', ''))[1]}); run "
                                             f"`mmtune data check` on it")

    def measure(self) -> tuple[dict, list[dict]]:
        """Eval metrics and prediction records of the model as it is now (the main process; under FSDP every
        process, on the same rows: each forward is a collective)."""
        ev = self.cfg.eval
        metrics, records = evaluate(self.acc.unwrap_model(self.model), self.tokenizer, self.eval_set, ev.metrics,
                                    ev.max_new_tokens, ev.batch_size, ev.max_samples,
                                    progress=self.acc.is_main_process,
                                    group_by=ev.group_by, normalizer_name=ev.normalizer, num_beams=ev.num_beams)
        self.model.train()
        return metrics, records

    def evaluate(self, step: int, tracker) -> dict:
        """Evaluate at `step` (on the main process), log it and, with train.best_metric, save the weights
        as a checkpoint when they are the best so far (every process takes part in that save)."""
        if self.eval_set is None:
            return {}
        metrics, records = {}, []
        if self.engine.every_process_evaluates and not self.acc.is_main_process:
            self.measure()  # its forwards are collectives; the main process keeps the results
        if self.acc.is_main_process:
            metrics, records = self.measure()
            scalars = {k: v for k, v in metrics.items() if k != "groups"}
            if tracker:
                tracker.log_eval(step, scalars)
            log.info("step %d eval: %s", step, ", ".join(f"{k}={v:.4g}" for k, v in scalars.items()))
        keep = {s: e for s, e in self.evaluated.items() if self.best is not None and s == self.best.step}
        self.evaluated = keep | {step: (metrics, records)}
        if self.best is not None:
            value = float(metrics.get(self.best.metric, math.nan)) if self.acc.is_main_process else 0.0
            value = float(broadcast(torch.tensor([value], device=self.acc.device))[0])  # every process decides alike
            if self.best.update(step, {self.best.metric: value}):
                self.best.checkpoint = f"{CHECKPOINT_PREFIX}{step}"
                log.info("best %s so far: %.4g at step %d", self.best.metric, value, step)
                self.save_checkpoint(step)
        return metrics

    def save_checkpoint(self, step: int) -> None:
        if self.saved_step == step:
            return
        self.acc.wait_for_everyone()
        folder = self.out / f"{CHECKPOINT_PREFIX}{step}"
        # sharded: every process gathers the whole weights (and, FSDP, optimizer state: collectives), DeepSpeed
        # writes its optimizer partitions beside; the main process writes the checkpoint
        state = self.engine.gather(self.acc.unwrap_model(self.model))
        dirs = self.engine.save_state(self.model, self.out, step)
        gathered = self._training_files(step) if self.engine.name == "fsdp" else None

        def write():
            try:
                self._save(folder, gathered or self._training_files(step), state, dirs)
            finally:
                for staged in dirs.values():
                    shutil.rmtree(staged.parent, ignore_errors=True)
            prune_checkpoints(self.out, self.cfg.train.keep_last, keep=self.best.checkpoint if self.best else None)

        on_main(self.acc, write)  # a failed write stops every process with its message
        self.last_checkpoint = folder
        self.saved_step = step

    def _training_files(self, step: int) -> dict:
        return training_files(step, None if self.engine.deepspeed else self.optimizer, self.scheduler,
                              self.position, self.train_set.encoder, self.best, config=to_dict(self.cfg),
                              resumes=self.resumes, engine=self.engine.record)

    def _save(self, folder: Path, extra: dict | None = None, state: dict | None = None,
              dirs: dict | None = None) -> None:
        """Write a checkpoint folder; weights that are not finite, or a failed write, stop the run naming
        the last good checkpoint (which the failed write never touches)."""
        try:
            save_checkpoint(self.acc.unwrap_model(self.model), self.tokenizer, self.cfg.model, folder, extra,
                            data=self.cfg.data, state=state, extra_dirs=dirs)
        except CheckpointError as e:
            kept = self.last_checkpoint or "none (no checkpoint was written yet)"
            raise TrainingError(f"{e}. The run stopped; last good checkpoint: {kept}") from None

    def finish(self, last: int, tracker, timing: dict) -> dict:
        """Evaluate and save the last step, write final/ (the best or the last weights), eval.json and report.md."""
        if last not in self.evaluated:
            self.evaluate(last, tracker)
        self.save_checkpoint(last)
        if not self.acc.is_main_process and not self.engine.every_process_evaluates:
            self.acc.wait_for_everyone()
            return {}
        model = self.acc.unwrap_model(self.model)
        t = self.cfg.train
        choice = t.final or ("best" if t.best_metric else "last")
        final_step = last
        if choice == "best" and self.best is not None and self.best.step not in (None, last):
            final_step = self.best.step
            self.engine.load_weights(model, self.out / self.best.checkpoint / WEIGHTS_FILE)
            log.info("final/ holds the best checkpoint, %s (%s %.4g)", self.best.checkpoint, self.best.metric,
                     self.best.value)
            if final_step not in self.evaluated:  # evaluated before a resume: measure it again for eval.json
                self.evaluated[final_step] = self.measure()
        state = self.engine.gather(model)  # sharded: gathered by every process
        if not self.acc.is_main_process:
            self.acc.wait_for_everyone()
            return {}
        metrics, records = self.evaluated.get(final_step, ({}, []))
        final = self.out / FINAL_DIR
        self._save(final, state=state)
        if records:
            write_predictions(records, self.out / "predictions.jsonl")
        summary = {"step": final_step, "final": choice, "normalizer": self.cfg.eval.normalizer}
        if self.best is not None:
            summary["best"] = {k: v for k, v in self.best.state_dict().items() if k not in ("patience", "waited")}
        write_eval_json(self.out, {**metrics, **summary} if metrics else {})
        extra = {"train_data": self.train_set.stats(self.draws.skipped) | self.draws.stats(), **timing,
                 "eval_data": self.eval_set.stats() if self.eval_set else None, "steps": last, **summary,
                 "stopped": self.stopped, "epochs": self.length.epoch(self.position), "resumes": self.resumes}
        write_report(self.out, to_dict(self.cfg), metrics, tracker.history(), extra)  # draws curves.png
        log.info("final checkpoint: %s (step %d); metrics: %s", final, final_step,
                 {k: v for k, v in metrics.items() if k != "groups"})
        self.acc.wait_for_everyone()
        return metrics


def _supervised(labels: torch.Tensor) -> int:
    """Supervised targets of a batch, as the loss counts them (labels shifted by one)."""
    return int((labels[:, 1:] != IGNORE_INDEX).sum())


def _mixed_precision(requested: str) -> str:
    if requested == "fp16" and not torch.cuda.is_available():
        log.warning("train.mixed_precision: fp16 needs CUDA; training in fp32")
        return "no"
    if requested == "bf16" and torch.cuda.is_available() and not torch.cuda.is_bf16_supported():
        log.warning("train.mixed_precision: this GPU has no bf16; training in fp32")
        return "no"
    return requested


def _report_data(train_set: MultimodalDataset, eval_set: MultimodalDataset | None) -> None:
    for name, ds in (("train", train_set), ("eval", eval_set)):
        if ds is None:
            continue
        s = ds.stats()
        log.info("%s data: %d rows, %d skipped, %d cut to data.max_length, supervised token fraction %.3f", name,
                 s["rows"], s["skipped"], s.get("truncated", 0), s["supervised_fraction"])
        for err in ds.skipped[:20]:
            log.warning("skipped %s", err)


def on_main(accelerator: Accelerator, fn):
    """Run fn on the main process (None elsewhere); every process then returns, or raises the main
    process's MmtuneError with its message, so no process waits for one that has stopped."""
    result, error = None, None
    if accelerator.is_main_process:
        try:
            result = fn()
        except MmtuneError as e:
            error = e
    if accelerator.num_processes > 1:
        message = [None if error is None else (type(error).__name__, str(error))]
        broadcast_object_list(message)  # from the main process to the others
        if message[0] is not None and error is None:
            error = TrainingError(message[0][1]) if message[0][0] == "TrainingError" else MmtuneError(message[0][1])
    if error is not None:
        raise error
    return result


def check_data_paths(cfg: Config) -> None:
    """data.train and data.eval exist (a glob of tar shards matches), before any model is built."""
    for key, value in (("data.train", cfg.data.train), ("data.eval", cfg.data.eval)):
        if value is None or Path(value).exists() or (any(c in value for c in "*?[") and glob.glob(value)):
            continue
        raise ConfigError(f"{key}: {value} does not exist (relative paths resolve against the config file's folder, "
                          f"{cfg.base_dir}); give an existing manifest, Parquet/Arrow file, datasets folder or shards")


def check_positions(cfg: Config, model) -> None:
    """data.max_length fits an LLM with a learned position table (past it step 1 fails on an index);
    rotary LLMs run past max_position_embeddings, so they get a warning. (Whisper's data step drops
    transcripts longer than its decoder's 448 positions itself.)"""
    if isinstance(model, WhisperASR):
        return
    limit = getattr(model.llm.config, "max_position_embeddings", None)
    rotary = getattr(model.llm.config, "rope_parameters", None) is not None
    if limit is None or cfg.data.max_length <= limit:
        return
    if not rotary:
        raise ConfigError(f"data.max_length: {cfg.data.max_length} is over the {limit} positions of this LLM's "
                          f"learned position table (max_position_embeddings); lower it to at most {limit}")
    log.warning("data.max_length %d is over the LLM's max_position_embeddings %d: rotary positions run past it, "
                "but the LLM was not trained that long", cfg.data.max_length, limit)


def check_resume(resume_dir: Path | None, cfg: Config) -> list[dict]:
    """Compare the checkpoint's run config with this one's: [{"step", "from", "changed"}] for the
    settings that may change (applied), a TrainingError listing any other change."""
    if resume_dir is None:
        return []
    saved = saved_config(resume_dir)
    if saved is None:  # written before checkpoints kept their run's config
        log.warning("%s does not record its run's config; the settings given now are used as they are", resume_dir)
        return []
    applied, refused = config_changes(saved["config"], to_dict(cfg))
    if refused:
        raise TrainingError(f"resume: {resume_dir} was trained with other settings: {describe_changes(refused)}. "
                            f"A resumed run cannot apply them; restore them, or start a new run from its weights "
                            f"with model.init_from={resume_dir} and another output_dir")
    applied.pop("train.resume", None)
    if applied:
        log.info("resume: applying %s", describe_changes(applied))
    return [{"step": saved["step"], "from": str(resume_dir), "changed": describe_changes(applied)}] if applied else []
