"""The training loop, start to end, on Accelerate (one process or `accelerate launch`, DDP).

    result = train(load_config("examples/speech_digits/config.yaml"))

One optimizer step consumes `grad_accum` micro-batches on every process. The loss of a step is
the summed token loss over the supervised tokens of the WHOLE step (all micro-batches, all
processes) divided by their count, so accumulation and process count do not change it.
"""

import logging
import math
from contextlib import nullcontext
import shutil
import time
from pathlib import Path

import torch
from accelerate import Accelerator
from accelerate.utils import set_seed
from tqdm.auto import tqdm

from mmtune.collators import collate_packed, collate_padded
from mmtune.config import Config, ConfigError, to_dict
from mmtune.data.dataset import MultimodalDataset
from mmtune.data.encode import MediaSpec
from mmtune.data.example import IGNORE_INDEX, to_device
from mmtune.data.loader import Draws, DrawLog, PlanSampler, draw_batches, worker_error
from mmtune.data.stream import batch_budget
from mmtune.errors import DataError, MmtuneError
from mmtune.eval.run import evaluate, write_predictions
from mmtune.model.build import build_model
from mmtune.model.checkpoint import WEIGHTS_FILE, load_weights, save_checkpoint
from mmtune.model.plan import describe_parameters
from mmtune.train.optim import build_optimizer, build_scheduler
from mmtune.train.state import load_training_state, training_files
from mmtune.train.report import write_eval_json, write_report
from mmtune.train.tracker import Tracker, format_progress

log = logging.getLogger("mmtune")
CHECKPOINT_PREFIX = "checkpoint-"


class TrainingError(MmtuneError):
    """The run had to stop (NaN loss, nothing to resume); the message says what was kept."""


def train(cfg: Config) -> dict:
    """Run the configured training; returns the final eval metrics (also in OUTPUT_DIR/eval.json)."""
    if cfg.data.train is None:
        raise ConfigError("data.train: give the training manifest (JSONL or LLaVA .json), e.g. data.train=train.jsonl")
    # cpu=True without CUDA: `accelerate launch --multi_gpu --num_processes N` then joins N CPU processes over gloo
    accelerator = Accelerator(mixed_precision=_mixed_precision(cfg.train.mixed_precision),
                              cpu=not torch.cuda.is_available())
    out = Path(cfg.train.output_dir)
    resume_dir = find_resume(out, cfg.train.resume)
    set_seed(cfg.train.seed)
    if cfg.train.cpu_threads and accelerator.device.type == "cpu":
        torch.set_num_threads(cfg.train.cpu_threads)
    model, tokenizer = build_model(cfg.model, device=str(accelerator.device))
    if cfg.train.gradient_checkpointing:
        model.llm.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    train_set, eval_set = _datasets(cfg, tokenizer, accelerator)
    optimizer = build_optimizer(model, cfg.train)
    scheduler = build_scheduler(optimizer, cfg.train)
    model, optimizer = accelerator.prepare(model, optimizer)
    step, position = 0, {"epoch": 0, "index": 0}
    if resume_dir is not None:
        load_weights(accelerator.unwrap_model(model), resume_dir / WEIGHTS_FILE)
        state = load_training_state(resume_dir, optimizer, scheduler, train_set.encoder)
        step, position = state["step"], state["stream"]
        log.info("resumed from %s at step %d", resume_dir, step)
    run = _Run(cfg, accelerator, model, tokenizer, optimizer, scheduler, train_set, eval_set, out, position)
    return run.loop(step)


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
    return train_set, eval_set


class _Run:
    """The state of one run, so the loop below reads top to bottom."""

    def __init__(self, cfg, accelerator, model, tokenizer, optimizer, scheduler, train_set, eval_set, out, position):
        self.cfg, self.acc, self.model, self.tokenizer = cfg, accelerator, model, tokenizer
        self.optimizer, self.scheduler = optimizer, scheduler
        self.train_set, self.eval_set, self.out = train_set, eval_set, out
        self.last_checkpoint: Path | None = None
        self.records: list[dict] | None = None  # per-sample predictions of the latest evaluation
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
        cfg, acc = self.cfg.train, self.acc
        bar = tqdm(total=cfg.max_steps, initial=start_step, desc="train", unit="step", disable=not acc.is_main_process)
        log.info("%s", describe_parameters(acc.unwrap_model(self.model)))
        started, tokens_seen = time.perf_counter(), 0
        self.model.train()
        for step in range(start_step + 1, cfg.max_steps + 1):
            loss, tokens = self.train_step(step)
            tokens_seen += tokens
            tokens_per_s = tokens_seen / max(time.perf_counter() - started, 1e-9)
            lr = self.scheduler.get_last_lr()[0]
            bar.update(1)
            bar.set_postfix(format_progress(loss, lr, tokens_per_s))
            if tracker and (step % cfg.log_every == 0 or step == 1 or step == cfg.max_steps):
                data_wait = self.data_wait / max(time.perf_counter() - started, 1e-9)  # share of wall time so far
                tracker.log(step, loss=loss, lr=lr, tokens_per_s=tokens_per_s, data_wait=round(data_wait, 4))
            if cfg.eval_every and step % cfg.eval_every == 0 and step < cfg.max_steps:
                self.evaluate(step, tracker)
            if cfg.save_every and step % cfg.save_every == 0 and step < cfg.max_steps:
                self.save_checkpoint(step)
        bar.close()
        elapsed = time.perf_counter() - started
        return self.finish(tracker, {"train_seconds": elapsed, "tokens_per_s": tokens_seen / max(elapsed, 1e-9),
                                     "data_wait_fraction": self.data_wait / max(elapsed, 1e-9)})

    def train_step(self, step: int) -> tuple[float, int]:
        """One optimizer step over grad_accum micro-batches; returns (step loss, real tokens)."""
        batches = [self._micro_batch() for _ in range(self.cfg.train.grad_accum)]
        local = sum(_supervised(b["labels"]) for b in batches)
        total = int(self.acc.reduce(torch.tensor(local, device=self.acc.device), reduction="sum"))
        loss_sum = torch.zeros((), device=self.acc.device)
        for i, batch in enumerate(batches):
            last = i == len(batches) - 1
            with (nullcontext() if last else self.acc.no_sync(self.model)), self.acc.autocast():
                out = self.model(**batch)
                # DDP averages gradients over processes, so scale by their number to get a global token mean
                self.acc.backward(out.loss_sum * self.acc.num_processes / total)
            loss_sum += out.loss_sum.detach()
        loss = float(self.acc.reduce(loss_sum, reduction="sum")) / total
        if not math.isfinite(loss):
            kept = self.last_checkpoint or "none (no checkpoint was written yet)"
            raise TrainingError(f"the loss is {loss} at step {step}; the run stopped. Last good checkpoint: {kept}. "
                                f"Lower train.lr, enable train.max_grad_norm, or check the data with `mmtune data check`")
        if self.cfg.train.max_grad_norm:
            self.acc.clip_grad_norm_(self.model.parameters(), self.cfg.train.max_grad_norm)
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        return loss, sum(int(b["input_ids"].numel() if "attention_mask" not in b else b["attention_mask"].sum())
                         for b in batches)

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

    def evaluate(self, step: int, tracker) -> dict:
        if self.eval_set is None or not self.acc.is_main_process:
            return {}
        model = self.acc.unwrap_model(self.model)
        ev = self.cfg.eval
        metrics, records = evaluate(model, self.tokenizer, self.eval_set, ev.metrics, ev.max_new_tokens,
                                    ev.batch_size, ev.max_samples, progress=True)
        self.model.train()
        if tracker:
            tracker.log_eval(step, metrics)
        log.info("step %d eval: %s", step, ", ".join(f"{k}={v:.4g}" for k, v in metrics.items()))
        self.records = records
        return metrics

    def save_checkpoint(self, step: int) -> None:
        self.acc.wait_for_everyone()
        if self.acc.is_main_process:
            folder = self.out / f"{CHECKPOINT_PREFIX}{step}"
            extra = training_files(step, self.optimizer, self.scheduler, self.position, self.train_set.encoder)
            save_checkpoint(self.acc.unwrap_model(self.model), self.tokenizer, self.cfg.model, folder, extra,
                            data=self.cfg.data)
            self.last_checkpoint = folder
            prune_checkpoints(self.out, self.cfg.train.keep_last)
        self.acc.wait_for_everyone()

    def finish(self, tracker, timing: dict) -> dict:
        self.save_checkpoint(self.cfg.train.max_steps)
        metrics = {}
        if self.acc.is_main_process:
            final = self.out / "final"
            save_checkpoint(self.acc.unwrap_model(self.model), self.tokenizer, self.cfg.model, final, data=self.cfg.data)
            metrics = self.evaluate(self.cfg.train.max_steps, tracker)
            if self.records is not None:
                write_predictions(self.records, self.out / "predictions.jsonl")
            write_eval_json(self.out, metrics)
            extra = {"train_data": self.train_set.stats(self.draws.skipped) | self.draws.stats(), **timing,
                     "eval_data": self.eval_set.stats() if self.eval_set else None}
            write_report(self.out, to_dict(self.cfg), metrics, tracker.history(), extra)  # draws curves.png
            log.info("final checkpoint: %s; metrics: %s", final, metrics)
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


def find_resume(out: Path, resume: str | None) -> Path | None:
    """`auto`: the newest OUTPUT_DIR/checkpoint-N (None if there is none); a path: that folder."""
    if resume is None:
        return None
    if resume != "auto":
        path = Path(resume)
        if not path.is_dir():
            raise TrainingError(f"train.resume: {path} is not a folder; give a checkpoint-N folder or 'auto'")
        return path
    found = sorted(out.glob(f"{CHECKPOINT_PREFIX}*"), key=_step_of)
    if not found:
        log.info("resume=auto: no checkpoint in %s, starting from scratch", out)
        return None
    return found[-1]


def _step_of(path: Path) -> int:
    suffix = path.name[len(CHECKPOINT_PREFIX):]
    return int(suffix) if suffix.isdigit() else -1


def prune_checkpoints(out: Path, keep_last: int) -> None:
    found = sorted((p for p in out.glob(f"{CHECKPOINT_PREFIX}*") if _step_of(p) >= 0), key=_step_of)
    for old in found[: max(len(found) - keep_last, 0)]:
        shutil.rmtree(old, ignore_errors=True)
