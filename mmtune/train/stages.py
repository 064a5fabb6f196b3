"""Several configs as the stages of one job: `mmtune train stage1.yaml stage2.yaml [overrides]`.

    metrics = train_stages(["stage1.yaml", "stage2.yaml"], ["seed=1", "2:train.max_steps=500"])

Each stage is a run of its own (its own output_dir, checkpoints, report), run in the order given;
every stage after the first starts from the previous stage's final/ (its model.init_from is set to
that folder), as LLaVA's pretrain -> fine-tune or a curriculum needs. Overrides apply to every
stage; `N:key=value` applies to stage N only (1-based). All configs are loaded and checked before
the first stage trains, so a typo in stage 2 does not wait for stage 1 to end. With `resume=...`
a stage before the last whose output_dir already holds its finished run (final/ and eval.json) is
not run again; the last stage (or a single config) resumes as `mmtune train` always does.
"""

import json
import logging
import re
from pathlib import Path

from mmtune.config import Config, ConfigError, load_config
from mmtune.train.loop import train
from mmtune.train.report import EVAL_FILE
from mmtune.train.rundir import FINAL_DIR

log = logging.getLogger("mmtune")

_STAGE_PREFIX = re.compile(r"^(\d+):(.*)$")  # "2:train.lr=1e-4" -> stage 2, "train.lr=1e-4"


def stage_overrides(overrides: list[str], stages: int) -> list[list[str]]:
    """Overrides for each of `stages` stages: plain ones for all, `N:key=value` for stage N only."""
    per_stage: list[list[str]] = [[] for _ in range(stages)]
    for item in overrides:
        match = _STAGE_PREFIX.match(item)
        if match is None:
            for own in per_stage:
                own.append(item)
            continue
        number = int(match.group(1))
        if not 1 <= number <= stages:
            raise ConfigError(f"override {item!r}: there is no stage {number} (stages 1-{stages}, one per config)")
        per_stage[number - 1].append(match.group(2))
    return per_stage


def load_stages(paths: list[str], overrides: list[str]) -> list[Config]:
    """Each stage's config, checked; stage k > 1 starts from stage k-1's final/."""
    configs: list[Config] = []
    for path, own in zip(paths, stage_overrides(overrides, len(paths))):
        if configs:  # the previous stage writes it; the model build checks it once it is there
            own = own + [f"model.init_from={Path(configs[-1].train.output_dir).resolve() / FINAL_DIR}"]
        configs.append(load_config(path, own))
    outs = [Path(c.train.output_dir).resolve() for c in configs]
    for i, out in enumerate(outs):
        if out in outs[:i]:
            first = outs.index(out) + 1
            raise ConfigError(f"stages {first} and {i + 1} ({paths[first - 1]}, {paths[i]}) both write "
                              f"train.output_dir {out}: give each stage its own, e.g. {i + 1}:train.output_dir=DIR")
    return configs


def train_stages(paths: list[str], overrides: list[str]) -> dict:
    """Run the configs in order as stages (see the module doc); returns the last stage's eval metrics."""
    configs = load_stages(paths, overrides)
    metrics: dict = {}
    for number, (path, cfg) in enumerate(zip(paths, configs), start=1):
        out = Path(cfg.train.output_dir)
        if len(configs) > 1:
            log.info("stage %d of %d: %s -> %s", number, len(configs), path, out)
        finished = (out / FINAL_DIR).is_dir() and (out / EVAL_FILE).is_file()
        if number < len(configs) and cfg.train.resume is not None and finished:
            log.info("stage %d finished earlier (%s holds final/ and %s): not run again", number, out, EVAL_FILE)
            metrics = json.loads((out / EVAL_FILE).read_text(encoding="utf-8"))
            continue
        metrics = train(cfg)
    return metrics
