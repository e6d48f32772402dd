"""params.yaml validation: errors name the file and the key; overrides; stage overrides."""

import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from pydantic import BaseModel, TypeAdapter
from typer.testing import CliRunner

from mml.cli import app
from mml.config import ClipConfig, ConfigError, Params, load_params

ROOT = Path(__file__).resolve().parents[1]


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "params.yaml"
    path.write_text(text)
    return path


@pytest.mark.parametrize(
    ("path", "stride"),
    [
        ("params.yaml", 8),  # 32 // T with T = 4
        ("pipelines/ssv2/params.yaml", 4),  # 32 // 8, the authors' dense stride
        ("pipelines/charades/params.yaml", 8),  # I3D 8x8
    ],
)
def test_repository_params_are_valid(path, stride):
    params = load_params(ROOT / path)
    assert params.stage("rgb_ce").method == "ce"
    assert params.clip.stride == stride
    for name in params.stages:  # every stage's overrides apply and validate
        params.for_stage(name)


def test_unknown_key_is_named_with_a_suggestion(tmp_path):
    path = write(tmp_path, "train:\n  epoch: 3\n")
    with pytest.raises(ConfigError) as err:
        load_params(path)
    assert str(path) in str(err.value)
    assert "train.epoch: unknown key (did you mean 'epochs'?)" in str(err.value)


def test_bad_value_names_the_key(tmp_path):
    path = write(tmp_path, "clip:\n  segments: many\n")
    with pytest.raises(ConfigError, match=r"clip\.segments: .*integer"):
        load_params(path)
    with pytest.raises(ConfigError, match=r"stages\.a\.models\.0\.init"):
        load_params(write(tmp_path, "stages:\n  a:\n    models: [{init: 'x y'}]\n"))


def test_overrides_are_parsed_as_yaml_and_validated(tmp_path):
    path = write(tmp_path, "train:\n  epochs: 3\n")
    params = load_params(
        path, ["train.epochs=5", "clip.scales=[1.0, 0.5]", "model.arch=tsm_resnet50"]
    )
    assert params.train.epochs == 5 and params.clip.scales == (1.0, 0.5)
    with pytest.raises(ConfigError, match="KEY.PATH=VALUE"):
        load_params(path, ["train.epochs"])
    with pytest.raises(ConfigError, match=r"override 'train.epochs.x=1'.*not a section"):
        load_params(path, ["train.epochs.x=1"])
    with pytest.raises(ConfigError, match=r"train\.lr"):
        load_params(path, ["train.lr=-1"])


def test_stage_overrides_apply_and_are_validated(tmp_path):
    path = write(
        tmp_path,
        "stages:\n  s:\n    overrides: {clip.segments: 1}\n"
        "  bad:\n    overrides: {clip.segmnts: 1}\n",
    )
    params = load_params(path)
    assert params.for_stage("s").clip.segments == 1
    assert params.clip.segments == ClipConfig().segments  # the stage's own copy changed
    with pytest.raises(ConfigError, match=r"(?s)stages.bad.overrides.*clip.segmnts: unknown key"):
        params.for_stage("bad")
    with pytest.raises(ConfigError, match="no stage 'nope'.*known: bad, s"):
        params.stage("nope")


def test_missing_and_malformed_files(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_params(tmp_path / "absent.yaml")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_params(write(tmp_path, "train: [unclosed\n"))


def test_cli_reports_bad_params_without_traceback(tmp_path):
    path = write(tmp_path, "train:\n  epoch: 3\nstages:\n  s: {}\n")
    proc = subprocess.run(
        [sys.executable, "-m", "mml", "train", "s", "--params", str(path)],
        capture_output=True,
        text=True,
        cwd=tmp_path,
    )
    assert proc.returncode == 2
    assert "train.epoch: unknown key" in proc.stderr and str(path) in proc.stderr
    assert "Traceback" not in proc.stderr + proc.stdout


def test_help_is_fast_and_imports_no_torch():
    code = "import sys, mml.cli; print('torch' in sys.modules, 'mlflow' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", "False"]
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "mml", "--help"], capture_output=True, text=True)
    assert proc.returncode == 0 and "train" in proc.stdout and "evaluate" in proc.stdout
    assert time.perf_counter() - start < 3.0  # generous for a loaded CI box; ~0.2 s here


# Keys whose params.yaml value is this repository's own choice, not a default for any project.
NOT_DEFAULTS = {
    "ensemble.candidates": "names this repository's stages; the default () means every model",
    "stages": "this repository's training stages; a project without stages has none",
}


def _defaults_vs_file(model: type[BaseModel], raw: dict, prefix: str = "") -> list[str]:
    """'key: default X, file Y' for every leaf with a default that differs from the file."""
    wrong = []
    for name, field in model.model_fields.items():
        key = f"{prefix}{name}"
        if field.exclude or key in NOT_DEFAULTS or name not in raw:
            continue
        if isinstance(field.annotation, type) and issubclass(field.annotation, BaseModel):
            wrong += _defaults_vs_file(field.annotation, raw[name], f"{key}.")
            continue
        if field.is_required():
            continue
        adapter = TypeAdapter(field.annotation)
        default = adapter.dump_python(field.get_default(call_default_factory=True), mode="json")
        in_file = adapter.dump_python(adapter.validate_python(raw[name]), mode="json")
        if default != in_file:
            wrong.append(f"{key}: default {default!r}, params.yaml {in_file!r}")
    return wrong


def test_pydantic_defaults_equal_the_repository_params_yaml():
    raw = yaml.safe_load((ROOT / "params.yaml").read_text(encoding="utf-8"))
    assert _defaults_vs_file(Params, raw) == []
    for key in NOT_DEFAULTS:  # the exceptions are real keys of the file
        section, _, leaf = key.rpartition(".")
        assert leaf in (raw[section] if section else raw)


def test_the_defaults_check_sees_a_disagreement():
    raw = yaml.safe_load((ROOT / "params.yaml").read_text(encoding="utf-8"))
    raw["tune"]["pruner"]["warmup_epochs"] += 1
    raw["synth"]["frames"] = [2, 3]
    assert _defaults_vs_file(Params, raw) == [
        "synth.frames: default [20, 32], params.yaml [2, 3]",
        "tune.pruner.warmup_epochs: default 2, params.yaml 3",
    ]


def test_predict_outside_a_project_needs_a_model_uri(tmp_path, monkeypatch):
    """Without params.yaml, no params defaults pick the model (or the store): --model is asked."""
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(app, ["predict", "video.mp4"])
    assert result.exit_code == 2 and "no params.yaml here" in result.output
    assert list(tmp_path.iterdir()) == []
