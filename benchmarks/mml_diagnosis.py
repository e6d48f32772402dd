"""Why an MML RGB model wins or loses against its CE control: one variable at a time (issue 13).

Run after the default pipeline (`make run`), from the repository root:

    .venv/bin/python benchmarks/mml_diagnosis.py [--variants kl0 kl1 warm ...] [--tune-trials 8]

Each variant is the `mml_rfd` stage (RGB + Flow + Diff, all from `rgb_ce.0`) with one thing
changed, trained and evaluated as a stage of its own (`diag_<variant>`); its RGB model is
compared, video by video, with a CE control of the same init, epochs and schedule, and, where
both are run, with the variant that differs from it in one thing (`BETWEEN`). Everything
it writes is under `diagnosis/seed-<N>/` (params, checkpoints, metrics, predictions, plots,
Optuna journal), so the pipeline's own outputs and `dvc status` are untouched; MLflow runs go to
the workspace's store as usual. The table gives each paired difference with its 95% bootstrap
interval: over validation videos for one training seed, over seeds and videos for several.

`--train-seeds 0 1 2 3 4`: each variant and control once per training seed (`seed`), on the
workspace's data. The inits of the workspace's own seed are its checkpoints (linked); for any
other seed they are trained first (`rgb_ce`, `flow_ce_rgb`, `diff_ce_rgb`: about 3 minutes), from
the workspace's pretraining checkpoint (`checkpoints/pretrain`, which no training seed changes).
`--tune-trials N` also runs `mml tune` over `stages.kl_weight` for the 6-epoch variant (first
seed only).
"""

from __future__ import annotations

import argparse
import copy
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import yaml

from mml.artifacts import PRETRAIN
from mml.stats import paired_bootstrap, verdict

BIN = Path(sys.executable).parent
MMLRFD = ("rgb", "flow", "diff")
PATHS = ("checkpoints", "metrics", "predictions", "plots", "tuned", "registry", "optuna")


def mml_stage(
    *, kl: float = 1.0, form: str = "pairwise", epochs: int = 6, warmup: int = 0, warm: bool = False
) -> dict:
    """mml_rfd with one thing changed; `warm`: Flow from flow_ce_rgb.0, Diff from diff_ce_rgb.0
    (trained peers, the paper's "Flow from Flow" of Tab. 3) instead of all from rgb_ce.0."""
    inits = {
        "rgb": "rgb_ce.0",
        "flow": "flow_ce_rgb.0" if warm else "rgb_ce.0",
        "diff": "diff_ce_rgb.0" if warm else "rgb_ce.0",
    }
    overrides = {"train.epochs": epochs, "train.warmup_epochs": warmup}
    return {
        "method": "mml",
        "kl_weight": kl,
        "kl_form": form,
        "overrides": overrides,
        "models": [{"modality": m, "init": inits[m]} for m in MMLRFD],
    }


def ce_control(*, epochs: int = 6, warmup: int = 0) -> dict:
    overrides = {"train.epochs": epochs, "train.warmup_epochs": warmup}
    return {
        "method": "ce",
        "models": [{"modality": "rgb", "init": "rgb_ce.0"}],
        "overrides": overrides,
    }


# variant: (what it is, its stage, its CE control's stage name and definition)
VARIANTS = {
    "kl1": ("KL weight 1, cold peers (= mml_rfd)", mml_stage(), "ce6"),
    "kl0": ("KL weight 0 (same loader, no KL)", mml_stage(kl=0.0), "ce6"),
    "warm": ("KL 1, warm peers (Flow, Diff from their CE models)", mml_stage(warm=True), "ce6"),
    "mean_logits": (
        "KL 1, kl_form mean_logits (authors' code)",
        mml_stage(form="mean_logits"),
        "ce6",
    ),
    "e12": ("KL 1, 12 epochs", mml_stage(epochs=12), "ce12"),
    "e12w": ("KL 1, 12 epochs, 1 warm-up epoch", mml_stage(epochs=12, warmup=1), "ce12w"),
}
CONTROLS = {
    "ce6": ce_control(),
    "ce12": ce_control(epochs=12),
    "ce12w": ce_control(epochs=12, warmup=1),
}
# one variable between two stages that are both run: (A, B, what the row compares)
BETWEEN = (
    ("kl1", "kl0", "KL weight 1 against 0 (both MML, cold peers, 6 epochs)"),
    ("warm", "kl1", "warm peers against cold peers (both MML, 6 epochs)"),
    ("e12", "kl1", "12 epochs against 6 (both MML, cold peers)"),
    ("e12w", "e12", "1 warm-up epoch against none (both MML, 12 epochs)"),
    ("ce12", "ce6", "12 epochs against 6 (both CE)"),
)


def mml(*args: str, bin_dir: Path = BIN) -> None:
    env = {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}"}
    subprocess.run([str(bin_dir / "mml"), *args], check=True, env=env)  # exits on failure


INITS = ("rgb_ce", "flow_ce_rgb", "diff_ce_rgb")  # every init a variant uses, in training order


def correct(out: Path, stage: str) -> tuple[np.ndarray, np.ndarray]:
    """(ids, 0/1 top-1 correctness) of model 0 of `stage` under `out`, sorted by id."""
    with np.load(out / "predictions" / stage / "0.npz") as npz:
        order = np.argsort(npz["ids"])
        right = npz["scores"].argmax(1) == npz["targets"]
        return npz["ids"][order], right[order].astype(float)


def paired(runs: list[tuple[Path, str, Path, str]], rng: np.random.Generator):
    """(A, B, interval): model 0's 0/1 correctness of stage A and of its control B, one row per
    run (`(a_dir, a_stage, b_dir, b_stage)`), videos aligned, and the paired 95% interval."""
    rows_a, rows_b = [], []
    for a_dir, a_stage, b_dir, b_stage in runs:
        ids, a = correct(a_dir, a_stage)
        ids_b, b = correct(b_dir, b_stage)
        assert (ids == ids_b).all(), "models were evaluated on different videos"
        rows_a.append(a)
        rows_b.append(b)
    a, b = np.stack(rows_a), np.stack(rows_b)
    return a, b, paired_bootstrap(a, b, rng=rng)


def link_dir(target: Path, link: Path) -> None:
    """`link` -> `target` (a checkpoint directory shared, not copied), unless `link` exists."""
    if not link.exists():
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(target.resolve(), target_is_directory=True)


def seed_params(params: dict, seed: int, stages: dict, out: Path) -> Path:
    """diagnosis/seed-<seed>/params.yaml: the workspace's params with this training seed, the
    variants' stages, and every path under `out`; the inits linked or left to train."""
    own = copy.deepcopy(params)
    checkpoints = Path((own.get("paths") or {}).get("checkpoints", "checkpoints"))
    own["seed"] = seed
    own["stages"] = {**own["stages"], **copy.deepcopy(stages)}
    own["paths"] = {key: str(out / key) for key in PATHS}
    # the pretraining does not depend on the training seed (`mml pretrain`: its own seed), so
    # every seed starts from the workspace's; the workspace's own models are its seed's inits
    inits = {m.get("init", "") for st in own["stages"].values() for m in st.get("models", [])}
    pretrained = (PRETRAIN,) if any(i.startswith(f"{PRETRAIN}.") for i in inits) else ()
    linked = (*pretrained, *INITS) if seed == params["seed"] else pretrained
    for init in linked:
        link = out / "checkpoints" / init
        if not (checkpoints / init).is_dir():
            sys.exit(f"{checkpoints / init} is missing: run the pipeline first (`make run`)")
        link_dir(checkpoints / init, link)
    out.mkdir(parents=True, exist_ok=True)
    path = out / "params.yaml"
    path.write_text(yaml.safe_dump(own, sort_keys=False))
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument(
        "--train-seeds",
        type=int,
        nargs="+",
        default=None,
        help="training seeds (default: the params' own seed)",
    )
    parser.add_argument("--tune-trials", type=int, default=0)
    parser.add_argument("--seed", type=int, default=0, help="bootstrap seed")
    parser.add_argument(
        "--bin",
        type=Path,
        default=BIN,
        help="the bin directory whose `mml` trains and evaluates (default: this venv's); "
        "another checkout's venv measures that version of mml",
    )
    args = parser.parse_args()
    params = yaml.safe_load(Path(args.params).read_text())
    train_seeds = args.train_seeds or [params["seed"]]
    stages = {f"diag_{v}": copy.deepcopy(VARIANTS[v][1]) for v in args.variants}
    controls = {VARIANTS[v][2] for v in args.variants}
    stages |= {f"diag_{c}": CONTROLS[c] for c in sorted(controls)}
    tuned = {"diag_kl1": copy.deepcopy(VARIANTS["kl1"][1])} if args.tune_trials else {}
    start = time.time()
    outs = [Path("diagnosis") / f"seed-{seed}" for seed in train_seeds]
    for seed, out in zip(train_seeds, outs, strict=True):
        diag = seed_params(params, seed, {**tuned, **stages}, out)  # the sweep tunes diag_kl1
        todo = [] if seed == params["seed"] else list(INITS)
        for stage in todo:
            mml("train", stage, "-p", str(diag), "-q", "--restart-if-changed", bin_dir=args.bin)
        for stage in stages:
            mml("train", stage, "-p", str(diag), "-q", "--restart-if-changed", bin_dir=args.bin)
            mml("evaluate", stage, "-p", str(diag), "-q", bin_dir=args.bin)
        print(f"seed {seed} done, {time.time() - start:.0f} s", flush=True)
    rng = np.random.default_rng(args.seed)
    table = [
        f"training seeds {' '.join(map(str, train_seeds))}; RGB top-1 mean over seeds",
        "",
        "| variant | RGB top-1 | control | control top-1 | paired diff [95% CI] | verdict |",
        "|---|---|---|---|---|---|",
    ]
    rows = [(VARIANTS[v][0], f"diag_{v}", f"diag_{VARIANTS[v][2]}") for v in args.variants]
    rows += [(what, f"diag_{a}", f"diag_{b}") for a, b, what in BETWEEN]
    per_seed = []
    for what, stage, control in rows:
        if stage not in stages or control not in stages:
            continue
        a, b, ci = paired([(out, stage, out, control) for out in outs], rng)
        table.append(
            f"| {what} | {100 * a.mean():.1f} | `{control}` | {100 * b.mean():.1f} | "
            f"{ci.diff:+.1f} [{ci.low:+.1f}, {ci.high:+.1f}] | {verdict(ci)} |"
        )
        pairs = zip(a.mean(1), b.mean(1), strict=True)
        seeds = ", ".join(f"{100 * x:.1f}/{100 * y:.1f}" for x, y in pairs)
        per_seed.append(f"- {what}: {seeds}")
    table += ["", "per training seed (A / B):", *per_seed]
    Path("diagnosis/table.md").write_text("\n".join(table) + "\n")
    print("\n".join(table))
    if args.tune_trials:
        space = "{stage.kl_weight: {low: 0.05, high: 4.0, log: true}}"
        mml(
            "tune",
            "diag_kl1",
            "-p",
            str(outs[0] / "params.yaml"),
            "-q",
            "--trials",
            str(args.tune_trials),
            "-S",
            f"tune.space={space}",
            "-S",
            "tune.epochs=6",
            bin_dir=args.bin,
        )
        print((outs[0] / "tuned" / "diag_kl1.yaml").read_text())
    print(f"wall time {time.time() - start:.0f} s")


if __name__ == "__main__":
    main()
