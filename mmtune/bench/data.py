"""`mmtune bench data`: the data pipeline at 2k, 20k and 200k rows, per-draw workers beside the eager way.

    result = run(sizes=(2000, 20000, 200000), steps=40, workers=2)

Data: the speech example's 2,000 clips (examples/speech_digits/data/train), reused row after row
to make manifests of each size (a 200k-row manifest then names each clip 100 times; the disk holds
2,000 files). Model: the speech example's tiny Whisper encoder + Qwen2 LLM, its batch of 16, one
torch thread (its config). Each measurement runs in a fresh process:

    cold    per-draw path, no index yet: the index is built (headers, `workers` processes)
    warm    per-draw path again: the index is read back from .mmtune_index/
    eager   every row decoded and encoded before step one, in the main process, kept in RAM (the
            pre-index pipeline); only up to `eager_max` rows (it grows linearly)

For each: seconds to the first optimizer step (after imports), peak RSS of the main process
(VmHWM), peak summed PSS of the worker processes (shared pages counted once), and over `steps`
steps the share of step time spent waiting for data, and samples/s of the pipeline alone.
"""

import json
import os
import sys
import tempfile
import threading
import time
from pathlib import Path

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "speech_digits"
MODES = ("cold", "warm", "eager")


def run(sizes=(2000, 20000, 200000), steps: int = 40, workers: int = 2, eager_max: int = 20000,
        folder: str | None = None) -> dict:
    """One fresh process per (size, mode); returns {"runs": [...], "machine": ..., "targets": ...}."""
    from mmtune.bench.report import machine, run_child

    if not (EXAMPLE / "data" / "train.jsonl").is_file():
        raise FileNotFoundError(f"{EXAMPLE / 'data'} is missing: the bench reads the speech example's clips")
    runs = []
    with tempfile.TemporaryDirectory(dir=folder) as tmp:
        for size in sizes:
            manifest = write_manifest(Path(tmp) / f"rows{size}", size)
            for mode in MODES:
                if mode == "eager" and size > eager_max:
                    continue
                runs.append(run_child("mmtune.bench.data", {"manifest": str(manifest), "mode": mode, "steps": steps,
                                                            "workers": workers}))
                print(json.dumps(runs[-1]), file=sys.stderr)
    return {"runs": runs, "machine": machine(), "steps": steps, "workers": workers, "targets": targets(runs)}


def write_manifest(folder: Path, size: int) -> Path:
    """`size` ASR rows that cycle through the example's 2,000 clips (absolute paths)."""
    rows = (EXAMPLE / "data" / "train.jsonl").read_text().splitlines()
    base = EXAMPLE / "data"
    lines = []
    for line in rows:
        row = json.loads(line)
        lines.append(json.dumps({"audio": str(base / row["audio"]), "text": row["text"]}))
    folder.mkdir(parents=True)
    path = folder / "train.jsonl"
    with path.open("w") as f:
        for k in range(size):
            f.write(lines[k % len(lines)] + "\n")
    return path


def targets(runs: list[dict]) -> dict:
    """The issue's targets, from the runs: RSS growth 2k -> 200k, warm start at 200k, data wait at 2 workers."""
    by = {(r["rows"], r["mode"]): r for r in runs}
    sizes = sorted({r["rows"] for r in runs})
    out = {}
    if len(sizes) > 1:
        lo, hi = by.get((sizes[0], "warm")), by.get((sizes[-1], "warm"))
        if lo and hi:
            out["main_rss_growth"] = hi["main_peak_rss_mb"] / lo["main_peak_rss_mb"] - 1
            out["total_rss_growth"] = ((hi["main_peak_rss_mb"] + hi["workers_peak_pss_mb"]) /
                                       (lo["main_peak_rss_mb"] + lo["workers_peak_pss_mb"]) - 1)
    if (sizes[-1], "warm") in by:
        out["warm_start_s_at_largest"] = by[(sizes[-1], "warm")]["first_step_s"]
    waits = [r["data_wait_fraction"] for r in runs if r["mode"] == "warm"]
    if waits:
        out["worst_data_wait_fraction"] = max(waits)
    return out


# ----------------------------------------------------------------------------- in the child process


def _pss_kb(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            for line in f:
                if line.startswith("Pss:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def _children(pid: int) -> list[int]:
    out = []
    for task in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{task}/children") as f:
                out += [int(c) for c in f.read().split()]
        except OSError:
            pass
    return out


class _Sampler(threading.Thread):
    """Peak summed PSS of this process's children, sampled every 0.1 s."""

    def __init__(self):
        super().__init__(daemon=True)
        self.peak_kb, self.stop = 0, threading.Event()

    def run(self):
        while not self.stop.is_set():
            self.peak_kb = max(self.peak_kb, sum(_pss_kb(c) for c in _children(os.getpid())))
            self.stop.wait(0.1)


def child(args: dict) -> dict:
    import torch

    from mmtune.bench.report import status_kb
    from mmtune.collators import collate_padded
    from mmtune.config import load_config
    from mmtune.data.dataset import MultimodalDataset
    from mmtune.data.encode import MediaSpec, one_thread
    from mmtune.data.example import to_device
    from mmtune.data.loader import Draws, PlanSampler, draw_batches, encode_all
    from mmtune.data.stream import BatchStream
    from mmtune.model.build import build_model
    from mmtune.train.optim import build_optimizer

    sampler = _Sampler()
    sampler.start()
    started = time.perf_counter()
    eager = args["mode"] == "eager"
    cfg = load_config(EXAMPLE / "config.yaml", [f"data.train={args['manifest']}", "data.eval=null",
                                                f"data.num_workers={0 if eager else args['workers']}"])
    torch.manual_seed(0)
    torch.set_num_threads(cfg.train.cpu_threads or 1)
    model, tokenizer = build_model(cfg.model)
    spec = MediaSpec.from_config(cfg.model, cfg.data)
    dataset = MultimodalDataset.load(cfg.data.train, tokenizer, spec, cfg.data, train=True, progress=False)
    index_seconds = dataset.index.seconds
    if eager:  # the pre-index pipeline: everything decoded and encoded now, in this process, kept
        with one_thread():
            examples, _ = encode_all(dataset)
        stream = BatchStream(dataset.lengths, cfg.data, 0)
        batches = ({"batch": collate_padded([examples[k] for k in stream.next()], tokenizer.pad_token_id)}
                   for _ in iter(int, 1))
    else:
        draws = Draws(dataset, collate_padded, tokenizer.pad_token_id, padded=True, workers=cfg.data.num_workers)
        batches = draw_batches(draws, PlanSampler(dataset.lengths, cfg.data, 0), cfg.data)
    optimizer = build_optimizer(model, cfg.train, cfg.model)
    model.train()
    wait = compute = 0.0
    first_step = None
    for step in range(args["steps"] + 1):
        t = time.perf_counter()
        batch = to_device(next(batches)["batch"], "cpu")
        t_data = time.perf_counter()
        model(**batch).loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        t_done = time.perf_counter()
        if step == 0:
            first_step = t_done - started
        else:  # step 0 waits for the workers to start: counted in first_step_s, not in the wait share
            wait += t_data - t
            compute += t_done - t_data
    workers_peak_kb = sampler.peak_kb
    batches.close()  # its workers exit before the pipeline-alone measure starts its own
    pipeline = _pipeline_rate(dataset, cfg, tokenizer, eager, examples if eager else None)
    sampler.stop.set()
    sampler.join()
    return {"rows": len(dataset), "mode": args["mode"], "first_step_s": round(first_step, 2),
            "index_s": round(index_seconds, 2), "index_cached": dataset.index.cached,
            "main_peak_rss_mb": round(status_kb(os.getpid(), "VmHWM") / 1024, 1),
            "workers_peak_pss_mb": round(workers_peak_kb / 1024, 1),
            "data_wait_fraction": round(wait / max(wait + compute, 1e-9), 4),
            "step_s": round(compute / args["steps"], 4), "pipeline_samples_per_s": round(pipeline, 1),
            "model_samples_per_s": round(cfg.data.batch_size * args["steps"] / max(compute, 1e-9), 1)}


def _pipeline_rate(dataset, cfg, tokenizer, eager: bool, examples, batches: int = 40) -> float:
    """Samples/s the data path alone delivers (no model): draws in workers, or collation of kept examples."""
    from mmtune.collators import collate_padded
    from mmtune.data.loader import Draws, PlanSampler, draw_batches
    from mmtune.data.stream import BatchStream

    started, n = time.perf_counter(), 0
    if eager:
        stream = BatchStream(dataset.lengths, cfg.data, 1)
        for _ in range(batches):
            n += len(collate_padded([examples[k] for k in stream.next()], tokenizer.pad_token_id)["sources"])
    else:
        draws = Draws(dataset, collate_padded, tokenizer.pad_token_id, padded=True, workers=cfg.data.num_workers)
        for item in draw_batches(draws, PlanSampler(dataset.lengths, cfg.data, 1), cfg.data):
            n += len(item["batch"]["sources"])
            if n >= batches * cfg.data.batch_size:
                break
    return n / (time.perf_counter() - started)


if __name__ == "__main__":
    print(json.dumps(child(json.loads(sys.argv[1]))))
