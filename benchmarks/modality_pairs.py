"""Do the modalities make different errors? Each pairwise ensemble against its members (issue 13).

Run after the default pipeline (`make run`), and after the seed study for several runs, from the
repository root:

    .venv/bin/python benchmarks/modality_pairs.py [--exp seed-1 --exp seed-2 ...]

Takes the single-modality CE models from the base init (`rgb_ce.0`, `flow_ce_scratch.0`,
`diff_ce_scratch.0`: RGB, Flow and Diff alone) of the workspace and of each named DVC
experiment, averages the probabilities of each pair (as `mml ensemble` does), and prints the
pair's top-1 against each member as a paired difference over runs and videos with the report's
95% bootstrap interval and verdict (`mml.stats`).
"""

from __future__ import annotations

import argparse

import numpy as np

from mml import seeds
from mml.config import load_params
from mml.runs import collect_runs
from mml.stats import paired_bootstrap, verdict

MODELS = {"RGB": "rgb_ce.0", "Flow": "flow_ce_scratch.0", "Diff": "diff_ce_scratch.0"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--exp", action="append", default=[], help="a DVC experiment (repeat)")
    parser.add_argument("--params", default="params.yaml")
    args = parser.parse_args()
    runs = collect_runs(load_params(args.params), exps=args.exp)
    probs: dict[str, list[np.ndarray]] = {name: [] for name in MODELS}
    targets = []
    for run in runs:
        members = {name: run.member(ref) for name, ref in MODELS.items()}
        missing = [MODELS[n] for n, m in members.items() if m is None]
        if missing:
            raise SystemExit(f"run {run.name}: no predictions of {', '.join(missing)}")
        targets.append(members["RGB"].targets)
        for name, m in members.items():
            probs[name].append(m.scores)  # probabilities, as `mml ensemble` averages them
    rng = np.random.default_rng(seeds.BOOTSTRAP)
    names = list(MODELS)
    print(f"{len(runs)} run(s): {', '.join(run.name for run in runs)}")
    for i, a in enumerate(names):
        for b in names[i + 1 :]:
            pair = [
                (pa + pb).argmax(1) == t
                for pa, pb, t in zip(probs[a], probs[b], targets, strict=True)
            ]
            line = [f"{a}+{b}: {100 * np.mean(pair):.1f}"]
            for member in (a, b):
                alone = [p.argmax(1) == t for p, t in zip(probs[member], targets, strict=True)]
                ci = paired_bootstrap(np.stack(pair) * 1.0, np.stack(alone) * 1.0, rng=rng)
                line.append(
                    f"over {member} ({100 * np.mean(alone):.1f}): {ci.diff:+.1f} "
                    f"[{ci.low:+.1f}, {ci.high:+.1f}] {verdict(ci)}"
                )
            print(" | ".join(line))


if __name__ == "__main__":
    main()
