"""The pipelines' dvc.yaml files against the code: what training reads is declared once
(`stage_files.TRAINING_PARAMS`), and every stage lists exactly the mml modules it runs.

A module "runs" in a stage when the stage's entry module imports it, directly or through other
mml modules, at the top or inside a function (read from the source, not from an import, so a
lazy import counts too).
"""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from imports import imported

from mml.stage_files import TRAINING_PARAMS

REPO = Path(__file__).resolve().parents[1]
PIPELINES = [REPO / "dvc.yaml", *sorted((REPO / "pipelines").glob("*/dvc.yaml"))]
# each stage's entry modules (what its `mml` command imports); promote also ships serving.py
# to MLflow as the model's code ("models from code", read as a file, not imported)
ENTRY = {
    "pretrain": ("mml.pretrain",),
    "train": ("mml.train", "mml.evaluate"),  # `mml train --evaluate`
    "tune": ("mml.tune",),
    "ensemble": ("mml.ensemble",),
    "promote": ("mml.registry",),
    "report": ("mml.report",),
}
SHIPPED = {"promote": {"mml/serving.py"}}


def module_file(name: str) -> Path | None:
    path = REPO.joinpath(*name.split("."))
    for candidate in (path / "__init__.py", path.with_suffix(".py")):
        if candidate.exists():
            return candidate
    return None


def runs(entry: str) -> set[str]:
    """Repository paths of every mml module `entry` imports, transitively."""
    seen: set[Path] = set()
    todo = [entry]
    while todo:
        name = todo.pop()
        path = module_file(name)
        if path is None or path in seen:
            continue
        seen.add(path)
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        todo += [module for module, _ in imported(path, package)]
    return {p.relative_to(REPO).as_posix() for p in seen if p.is_relative_to(REPO / "mml")}


def stage_body(dvc: dict, name: str) -> dict:
    stage = dvc["stages"][name]
    return stage.get("do", stage)


def code_deps(body: dict) -> set[str]:
    deps = [d if isinstance(d, str) else next(iter(d)) for d in body["deps"]]
    return {d.removeprefix("../../") for d in deps if d.removeprefix("../../").startswith("mml")}


@pytest.mark.parametrize("path", PIPELINES, ids=lambda p: str(p.relative_to(REPO)))
def test_each_stage_lists_the_params_and_modules_it_runs(path):
    dvc = yaml.safe_load(path.read_text())
    params = yaml.safe_load((path.parent / "params.yaml").read_text())
    for key in TRAINING_PARAMS:  # dvc reads these from the pipeline's params.yaml
        value = params
        for part in key.split("."):
            assert part in value, f"{path.parent / 'params.yaml'} has no {key}"
            value = value[part]
    train = stage_body(dvc, "train")
    # every pipeline's training stage also tests its models (`mml train --evaluate`): the
    # `evaluate:` section is the only param beyond what training reads, and the test's code
    # and outputs are the stage's
    assert "--evaluate" in train["cmd"] and "evaluate" not in dvc["stages"]
    assert train["params"] == [*TRAINING_PARAMS, "evaluate", "stages.${key}"]
    outs = [next(iter(o)) if isinstance(o, dict) else o for o in train["outs"]]
    assert outs == ["checkpoints/${key}", "predictions/${key}"]
    assert [next(iter(m)) for m in train["metrics"]] == ["metrics/${key}.json"]
    if "tune" in dvc["stages"]:
        assert set(TRAINING_PARAMS) <= set(stage_body(dvc, "tune")["params"])
    for stage, entries in ENTRY.items():
        if stage in dvc["stages"]:
            wanted = set().union(*map(runs, entries)) | SHIPPED.get(stage, set())
            assert code_deps(stage_body(dvc, stage)) == wanted, f"{path}: {stage}"


def test_the_module_walk_sees_lazy_imports():
    # cli.py imports the commands' modules inside the commands (start-up time); the walk must
    # see those, and it must not wander outside the package
    found = runs("mml.cli")
    assert {"mml/cli.py", "mml/train.py", "mml/evaluate.py", "mml/data/video.py"} <= found
    assert all(p.startswith("mml/") for p in found)
    assert "mml/cli.py" not in runs("mml.train")


def entry_sources(params: dict, name: str) -> tuple[set[str], str]:
    """The stages whose checkpoints stage `name` reads (inits, teacher) and the data it reads:
    the raw videos alone, one cache, or the whole cache directory."""
    stages = params["stages"]
    cfg = stages[name]
    refs = [m["init"] for m in cfg["models"] if "." in m["init"]]
    modalities = {m["modality"] for m in cfg["models"]}
    if cfg.get("teacher"):
        refs.append(cfg["teacher"])
        teacher_stage, k = cfg["teacher"].rsplit(".", 1)
        modalities.add(stages[teacher_stage]["models"][int(k)]["modality"])
    cached = sorted(modalities - {"rgb"})
    data = (
        "${raw_dir}"
        if not cached
        else "${cache_dir}" + (f"/{cached[0]}" if len(cached) == 1 else "")
    )
    return {f"checkpoints/{ref.rsplit('.', 1)[0]}" for ref in refs}, data


@pytest.mark.parametrize("path", PIPELINES, ids=lambda p: str(p.relative_to(REPO)))
def test_each_training_entry_reads_the_checkpoints_and_data_its_params_name(path):
    # DVC's foreach cannot give each entry a list of deps of its own length, so `from` has a
    # fixed length (padded by repeating an entry, or with the raw videos when there is none):
    # it must hold exactly the stages that params.yaml's inits and teacher name
    dvc = yaml.safe_load(path.read_text())
    params = yaml.safe_load((path.parent / "params.yaml").read_text())
    entries = dvc["stages"]["train"]["foreach"]
    assert set(entries) == set(params["stages"]), f"{path}: trained stages != params stages"
    slots = [d for d in stage_body(dvc, "train")["deps"] if "item.from[" in d]
    for name, entry in entries.items():
        sources, data = entry_sources(params, name)
        assert len(entry["from"]) == len(slots), f"{path}: {name}"
        assert set(entry["from"]) == (sources or {"${raw_dir}"}), f"{path}: {name}"
        assert entry["data"] == data, f"{path}: {name}"
