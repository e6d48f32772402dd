"""What the lossy `cache.format: jpeg` does to a flow model's accuracy on the default (issue 15).

Run after the default pipeline (`make run`), from the repository root:

    .venv/bin/python benchmarks/cache_accuracy.py [--train-seeds 0 1 2 3 4]

Builds the default's flow cache again in `cache.format: jpeg` (under `cachecheck/cache`, from
the same videos with the same TV-L1 settings), then for each training seed trains and evaluates
`flow_ce_scratch` (Flow, CE from scratch, 12 epochs) on it and on the exact npy cache, the same
seed, init and schedule; the workspace's own seed reuses its `flow_ce_scratch` for npy. Every
run starts from the workspace's pretraining checkpoint (`checkpoints/pretrain`, linked: no
training seed changes it). `--jobs 2` trains two runs at a time (one training process keeps
about 1.3 of this machine's 2 cores busy); each run's numbers do not depend on it.
Everything is written under `cachecheck/`; MLflow runs go to the workspace's store.

Prints two paired differences, jpeg - npy, with 95% bootstrap intervals over seeds and videos:
- trained and tested on jpeg against trained and tested on npy;
- each seed's npy-trained model tested on the jpeg cache against on npy (reading only).
A run whose predictions are newer than its unchanged params is not run again, so a longer
`--train-seeds` list adds only the new seeds.
"""

from __future__ import annotations

import argparse
import copy
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import yaml
from mml_diagnosis import PATHS, link_dir, mml, paired

from mml.artifacts import PRETRAIN
from mml.stats import verdict

STAGE = "flow_ce_scratch"
OUT = Path("cachecheck")


def write_params(params: dict, name: str, seed: int, fmt: str) -> Path:
    """cachecheck/<name>/params.yaml: the workspace's params with this seed, cache format and
    every output path under cachecheck/<name>."""
    own = copy.deepcopy(params)
    own["seed"] = seed
    if fmt == "jpeg":
        own["cache"] = {**own["cache"], "root": str(OUT / "cache"), "format": "jpeg"}
    own["paths"] = {key: str(OUT / name / key) for key in PATHS}
    pretrained = Path((params.get("paths") or {}).get("checkpoints", "checkpoints")) / PRETRAIN
    if pretrained.is_dir():  # the stage's init, `pretrain.0`
        link_dir(pretrained, OUT / name / "checkpoints" / PRETRAIN)
    path = OUT / name / "params.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    text = yaml.safe_dump(own, sort_keys=False)
    if not path.is_file() or path.read_text() != text:  # unchanged: its runs stay done
        path.write_text(text)
    return path


def predictions(out: Path) -> Path:
    return out / "predictions" / STAGE / "0.npz"


def done(path: Path, after: Path | None = None) -> bool:
    """Whether the run of params `path` has predictions newer than its params (and `after`)."""
    own = predictions(path.parent)
    since = max(path.stat().st_mtime, after.stat().st_mtime if after else 0.0)
    return own.is_file() and own.stat().st_mtime > since


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--train-seeds", type=int, nargs="+", default=None)
    parser.add_argument("--seed", type=int, default=0, help="bootstrap seed")
    parser.add_argument("--jobs", type=int, default=1, help="training runs at a time")
    args = parser.parse_args()
    params = yaml.safe_load(Path(args.params).read_text())
    own_seed = params["seed"]
    seeds = args.train_seeds or [own_seed]
    workspace = Path((params.get("paths") or {}).get("predictions", "predictions")).parent
    if not predictions(workspace).is_file():
        raise SystemExit(f"predictions/{STAGE}/0.npz is missing: run the pipeline first")
    start = time.time()
    jpeg_params = write_params(params, "build", own_seed, "jpeg")
    mml("data", "flow", "-p", str(jpeg_params), "-q")
    runs: dict[str, list[Path]] = {"npy": [], "jpeg": [], "read": []}
    train, read = [], []  # params of the runs to train and evaluate, and to evaluate only
    for seed in seeds:
        for fmt in ("npy", "jpeg"):
            if fmt == "npy" and seed == own_seed:
                runs[fmt].append(workspace)
                continue
            path = write_params(params, f"seed-{seed}-{fmt}", seed, fmt)
            runs[fmt].append(path.parent)
            if not done(path):
                train.append(path)
        # the seed's npy-trained model, tested on the jpeg cache
        path = write_params(params, f"read-{seed}", seed, "jpeg")
        link_dir(runs["npy"][-1] / "checkpoints" / STAGE, path.parent / "checkpoints" / STAGE)
        runs["read"].append(path.parent)
        read.append((path, predictions(runs["npy"][-1])))

    def train_and_evaluate(path: Path) -> None:
        mml("train", STAGE, "-p", str(path), "-q", "--restart-if-changed")
        mml("evaluate", STAGE, "-p", str(path), "-q")
        print(f"{path.parent.name} done, {time.time() - start:.0f} s", flush=True)

    def evaluate(path: Path) -> None:
        mml("evaluate", STAGE, "-p", str(path), "-q")
        print(f"{path.parent.name} done, {time.time() - start:.0f} s", flush=True)

    with ThreadPoolExecutor(max(1, args.jobs)) as pool:
        list(pool.map(train_and_evaluate, train))  # re-raises the first failure
        # then the reads: each needs its npy model, and is stale if that model is newer
        list(pool.map(evaluate, [path for path, model in read if not done(path, model)]))

    rng = np.random.default_rng(args.seed)
    rows = [
        ("trained and tested on jpeg vs on npy", runs["jpeg"], runs["npy"]),
        ("npy-trained models, tested on jpeg vs on npy", runs["read"], runs["npy"]),
    ]
    table = [
        f"{STAGE}, training seeds {' '.join(map(str, seeds))}; flow top-1 mean over seeds",
        "",
        "| comparison | jpeg | npy | jpeg - npy [95% CI] | verdict |",
        "|---|---|---|---|---|",
    ]
    for label, a_dirs, b_dirs in rows:
        pairs = [(a_dir, STAGE, b_dir, STAGE) for a_dir, b_dir in zip(a_dirs, b_dirs, strict=True)]
        a, b, ci = paired(pairs, rng)
        table.append(
            f"| {label} | {100 * a.mean():.1f} | {100 * b.mean():.1f} | "
            f"{ci.diff:+.1f} [{ci.low:+.1f}, {ci.high:+.1f}] | {verdict(ci)} |"
        )
    (OUT / "table.md").write_text("\n".join(table) + "\n")
    print("\n".join(table))
    print(f"wall time {time.time() - start:.0f} s")


if __name__ == "__main__":
    main()
