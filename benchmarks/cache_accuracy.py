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

Prints two paired differences, jpeg - npy, with 95% bootstrap intervals:
- trained on jpeg and tested on jpeg against trained and tested on npy (over seeds and videos);
- the workspace's npy-trained model tested on the jpeg cache against on npy (reading only).
"""

from __future__ import annotations

import argparse
import copy
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import yaml
from mml_diagnosis import PATHS, mml, paired

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
    link = OUT / name / "checkpoints" / PRETRAIN
    if pretrained.is_dir() and not link.exists():  # the stage's init, `pretrain.0`
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(pretrained.resolve(), target_is_directory=True)
    path = OUT / name / "params.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(own, sort_keys=False))
    return path


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
    if not (workspace / "predictions" / STAGE / "0.npz").is_file():
        raise SystemExit(f"predictions/{STAGE}/0.npz is missing: run the pipeline first")
    start = time.time()
    jpeg_params = write_params(params, "build", own_seed, "jpeg")
    mml("data", "flow", "-p", str(jpeg_params), "-q")
    runs: dict[str, list[Path]] = {"npy": [], "jpeg": []}
    todo = []
    for seed in seeds:
        for fmt in ("npy", "jpeg"):
            if fmt == "npy" and seed == own_seed:
                runs[fmt].append(workspace)
                continue
            name = f"seed-{seed}-{fmt}"
            todo.append((name, write_params(params, name, seed, fmt)))
            runs[fmt].append(OUT / name)

    def train_and_evaluate(job: tuple[str, Path]) -> None:
        name, path = job
        mml("train", STAGE, "-p", str(path), "-q", "--restart-if-changed")
        mml("evaluate", STAGE, "-p", str(path), "-q")
        print(f"{name} done, {time.time() - start:.0f} s", flush=True)

    with ThreadPoolExecutor(max(1, args.jobs)) as pool:
        list(pool.map(train_and_evaluate, todo))  # re-raises the first failure
    # the npy-trained model of the workspace, read from the jpeg cache
    read = write_params(params, "read-jpeg", own_seed, "jpeg")
    link = OUT / "read-jpeg" / "checkpoints" / STAGE
    if not link.exists():
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to((workspace / "checkpoints" / STAGE).resolve(), target_is_directory=True)
    mml("evaluate", STAGE, "-p", str(read), "-q")

    rng = np.random.default_rng(args.seed)
    rows = [
        ("trained and tested on jpeg vs on npy", runs["jpeg"], runs["npy"]),
        ("npy-trained model, tested on jpeg vs on npy", [OUT / "read-jpeg"], [workspace]),
    ]
    table = [
        f"{STAGE}, training seeds {' '.join(map(str, seeds))}; flow top-1 mean over seeds",
        "",
        "| comparison | jpeg | npy | jpeg - npy [95% CI] | verdict |",
        "|---|---|---|---|---|",
    ]
    for label, a_dirs, b_dirs in rows:
        runs = [(a_dir, STAGE, b_dir, STAGE) for a_dir, b_dir in zip(a_dirs, b_dirs, strict=True)]
        a, b, ci = paired(runs, rng)
        table.append(
            f"| {label} | {100 * a.mean():.1f} | {100 * b.mean():.1f} | "
            f"{ci.diff:+.1f} [{ci.low:+.1f}, {ci.high:+.1f}] | {verdict(ci)} |"
        )
    (OUT / "table.md").write_text("\n".join(table) + "\n")
    print("\n".join(table))
    print(f"wall time {time.time() - start:.0f} s")


if __name__ == "__main__":
    main()
