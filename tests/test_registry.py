"""`mml promote`, `mml predict` and `mlflow models serve` on a tiny trained project.

One module-scoped project trains an RGB and a Flow model, evaluates them, ranks the
ensemble and promotes both winners into a real MLflow registry (sqlite); the tests then
predict from the registered models like a user would.
"""

from __future__ import annotations

import base64
import dataclasses
import json
import os
import subprocess
import sys
import tempfile
import urllib.request
from pathlib import Path

import av
import mlflow
import numpy as np
import pandas as pd
import pytest
import yaml
from conftest import free_port, tiny_params, wait_for_http
from mlflow.tracking import MlflowClient
from test_pipeline import mml, runner

from mml.artifacts import read_stage_metrics, write_stage_metrics
from mml.cli import app
from mml.config import load_params
from mml.data.dataset import VideoClips, load_split, stage_caches
from mml.data.live import view_inputs
from mml.data.sampling import ViewPlan
from mml.data.video import read_frames, write_video

pytestmark = pytest.mark.slow  # trains, promotes, serves

STAGES = {
    "rgb_ce": {"method": "ce", "models": [{"modality": "rgb", "init": "scratch"}]},
    "flow_ce": {"method": "ce", "models": [{"modality": "flow", "init": "scratch"}]},
    "rgb_b": {
        "method": "ce",
        "models": [{"modality": "rgb", "init": "scratch"}],
        "overrides": {"seed": 7},
    },
}


@pytest.fixture(scope="module")
def promoted(tiny_dataset, tmp_path_factory):
    root = tmp_path_factory.mktemp("registry")
    params = tiny_params(tiny_dataset, promote={"timing_videos": 2})
    params["stages"] = STAGES
    (root / "params.yaml").write_text(yaml.safe_dump(params))
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(root)
        mp.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{root / 'mlruns' / 'mlflow.db'}")
        mml("data", "flow")
        for stage in ("rgb_ce", "flow_ce"):
            mml("train", stage)
            mml("evaluate", stage)
        mml("ensemble")
        out = mml("promote")
        assert out.count("moved champion to version 1") == 2, out
        yield root


def champion(kind: str):
    return MlflowClient().get_model_version_by_alias(f"mml-tiny-{kind}", "champion")


def test_promote_registers_both_champions_with_their_provenance(promoted):
    rgb, ensemble = champion("rgb"), champion("ensemble")
    assert rgb.tags["source_models"] == "rgb_ce.0" and rgb.tags["source_stage"] == "rgb_ce"
    assert ensemble.tags["source_models"] == "flow_ce.0,rgb_ce.0"
    metrics = read_stage_metrics(promoted / "metrics/rgb_ce.json").models[0].scores
    assert float(rgb.tags["val.top1"]) == pytest.approx(metrics["top1"], abs=1e-3)
    meta_run = MlflowClient().search_runs(
        [MlflowClient().get_experiment_by_name("mml-tiny").experiment_id],
        "tags.stage = 'rgb_ce' and tags.`mml.role` = 'model'",
    )[0]
    assert rgb.tags["source_run"] == meta_run.info.run_id
    assert rgb.tags["params_hash"] == meta_run.data.tags["params_hash"]
    for version in (rgb, ensemble):
        assert float(version.tags["cpu_ms_per_video"]) > 0
        assert len(version.tags["data_hash"]) == 16 and version.tags["git_commit"]
    # flow is computed per video at prediction time: the ensemble costs more
    assert float(ensemble.tags["cpu_ms_per_video"]) > float(rgb.tags["cpu_ms_per_video"])
    summary = json.loads((promoted / "registry/promoted.json").read_text())
    assert summary["rgb"]["version"] == "1" and summary["ensemble"]["champion_after"] == "1"


def test_registered_models_reproduce_the_evaluation(promoted, monkeypatch):
    """models:/...@champion gives the probabilities `mml evaluate` saved (same views)."""
    saved = np.load(promoted / "predictions/rgb_ce/0.npz")
    videos = load_split(load_params("params.yaml").dataset, "val").records[:3]
    monkeypatch.setenv("MML_SERVE_ROOTS", str(videos[0].path.parent))  # read at load
    model = mlflow.pyfunc.load_model("models:/mml-tiny-rgb@champion")
    out = model.predict(pd.DataFrame({"video": [str(r.path) for r in videos]}), params={"top_k": 4})
    for record, row in zip(videos, out.to_dict(orient="records"), strict=True):
        expected = saved["scores"][list(saved["ids"]).index(record.id)]
        got = dict(zip(row["top_labels"], row["top_scores"], strict=True))
        assert [got[c] for c in saved["classes"]] == pytest.approx(expected, abs=1e-5)


def test_promote_again_changes_nothing(promoted):
    versions = len(MlflowClient().search_model_versions("name = 'mml-tiny-rgb'"))
    out = mml("promote", "--dry-run")
    assert out.count("exists") == 2 and "would" not in out
    out = mml("promote")
    assert out.count("already the champion") == 2
    assert len(MlflowClient().search_model_versions("name = 'mml-tiny-rgb'")) == versions


def test_a_worse_model_takes_the_alias_only_when_forced(promoted):
    mml("train", "rgb_b")
    mml("evaluate", "rgb_b")
    metrics_file = promoted / "metrics/rgb_b.json"
    report = read_stage_metrics(metrics_file)
    worse = {**report.models[0].scores, "top1": -1.0}  # certainly worse than the champion
    models = {0: dataclasses.replace(report.models[0], scores=worse)}
    write_stage_metrics(metrics_file, dataclasses.replace(report, models=models))
    only_b = ["-S", "promote.rgb_candidates=[rgb_b.0]"]
    out = mml("promote", "--dry-run", *only_b)
    assert "would register a new version" in out and "does not beat" in out
    assert len(MlflowClient().search_model_versions("name = 'mml-tiny-rgb'")) == 1
    out = mml("promote", *only_b)
    assert "registered version 2" in out and "does not beat" in out
    assert str(champion("rgb").version) == "1"
    out = mml("promote", "--force", *only_b)
    assert "version 2 exists" in out and "moved champion to version 2" in out
    assert str(champion("rgb").version) == "2"
    mml("promote", "--force", "-S", "promote.rgb_candidates=[rgb_ce.0]")  # put it back
    assert str(champion("rgb").version) == "1"
    assert len(MlflowClient().search_model_versions("name = 'mml-tiny-rgb'")) == 2


def _write(path: Path, frames: np.ndarray, codec: str, pix_fmt: str) -> Path:
    with av.open(str(path), "w") as container:
        stream = container.add_stream(codec, rate=12)
        stream.height, stream.width = frames.shape[1:3]
        stream.pix_fmt = pix_fmt
        for frame in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


@pytest.fixture(scope="module")
def odd_videos(promoted, tmp_path_factory):
    """Videos unlike the training set: other containers/codecs, sizes, lengths; two broken."""
    out = tmp_path_factory.mktemp("videos")
    source = load_split(load_params(promoted / "params.yaml").dataset, "val").records[0].path
    frames = read_frames(source, np.arange(10))
    big = np.repeat(np.repeat(frames, 2, axis=1), 2, axis=2)  # 64x64
    videos = {
        "upscaled": _write(out / "up.mkv", big, "ffv1", "bgr0"),
        "odd": _write(out / "odd.avi", big[:, :33, :47], "mjpeg", "yuvj444p"),
        "portrait": out / "portrait.mp4",
        "single": out / "single.mp4",
        "long": out / "long.mp4",
    }
    write_video(videos["portrait"], big[:, :, :32], fps=12, codec="h264")  # 64 high, 32 wide
    write_video(videos["single"], frames[:1], fps=12, codec="h264")
    write_video(videos["long"], np.tile(frames, (60, 1, 1, 1)), fps=12, codec="h264")
    truncated = out / "truncated.webm"
    truncated.write_bytes(source.read_bytes()[: source.stat().st_size // 3])
    text = out / "notes.mp4"
    text.write_text("not a video")
    return source, videos, [truncated, text]


def test_predict_handles_any_video_and_reports_broken_ones(promoted, odd_videos):
    source, videos, broken = odd_videos
    paths = [str(p) for p in [source, *videos.values(), *broken]]
    result = runner.invoke(app, ["predict", *paths, "--json", "--top", "4"])
    assert result.exit_code == 1, result.output
    lines = result.output.strip().splitlines()
    errors = [line for line in lines if line.startswith("error:")]
    assert len(errors) == 2 and all(str(b) in "".join(errors) for b in broken)
    rows = {row["video"]: row for row in map(json.loads, set(lines) - set(errors))}
    assert set(rows) == set(paths[:-2])  # every good video, each once
    for row in rows.values():
        probabilities = [c["probability"] for c in row["top"]]
        assert len(probabilities) == 4 and sum(probabilities) == pytest.approx(1, abs=1e-3)
    original = {c["label"]: c["probability"] for c in rows[str(source)]["top"]}
    upscaled = {c["label"]: c["probability"] for c in rows[str(videos["upscaled"])]["top"]}
    assert max(abs(original[c] - upscaled[c]) for c in original) < 0.1  # resized back to 32 px


def test_predict_with_the_ensemble_computes_flow_itself(promoted, odd_videos):
    _, videos, _ = odd_videos
    result = runner.invoke(
        app,
        [
            "predict",
            str(videos["single"]),
            str(videos["portrait"]),
            "--model",
            "models:/mml-tiny-ensemble@champion",
        ],
    )
    assert result.exit_code == 0, result.output
    assert result.output.count("probability") == 2  # one table per video


def test_predict_outside_the_project_uses_only_the_model_package(
    promoted, odd_videos, tmp_path, monkeypatch
):
    """No params.yaml: the package's settings (views, size, flow) predict, as in the project."""
    model = "models:/mml-tiny-ensemble@champion"
    args = ["predict", str(odd_videos[0]), "--json", "--model", model]
    inside = runner.invoke(app, args)
    monkeypatch.chdir(tmp_path)
    outside = runner.invoke(app, args)
    assert inside.exit_code == 0 and outside.exit_code == 0, outside.output
    assert json.loads(outside.output) == json.loads(inside.output)
    assert list(tmp_path.iterdir()) == []  # no store, no experiment made here


def test_predict_without_a_registered_model_is_a_clear_error(promoted):
    result = runner.invoke(app, ["predict", "x.mp4", "--model", "models:/nope@champion"])
    assert result.exit_code == 2 and "mml promote" in result.output


def test_live_inputs_are_the_evaluation_inputs(promoted):
    """Prediction computes rgb/diff exactly as the dataset reads them, and flow as cached."""
    params = load_params("params.yaml")
    ann = load_split(params.dataset, "val")
    plan = ViewPlan(1, 2)
    for modality in ("rgb", "flow"):
        clips = VideoClips(
            ann,
            params.clip,
            train=False,
            views=plan,
            modalities=[modality],
            caches=stage_caches(params, [modality]),
        )
        for index in range(2):
            expected = clips[index][modality]
            got = view_inputs(
                ann.records[index].path,
                modality,
                params.clip,
                plan,
                short_side=None,
                flow_algorithm=params.cache.flow_algorithm,
                flow_bound=params.cache.flow_bound,
            )
            assert got.shape == expected.shape
            if modality == "rgb":
                assert np.array_equal(got.numpy(), expected.numpy())
            else:  # TV-L1 in another process/thread count: equal to a quantisation step or two
                assert (got - expected).abs().max().item() < 2.5 * (1 / 255) / 0.226


def b64(path: Path) -> str:
    return base64.b64encode(Path(path).read_bytes()).decode()


def test_served_model_takes_video_bytes_and_gives_each_bad_row_its_error(
    promoted, odd_videos, monkeypatch, tmp_path
):
    """`video_b64` rows give the probabilities of the same file read by path; a broken,
    malformed, oversized, ambiguous or empty row gets its own error; nothing is written."""
    source, videos, broken = odd_videos
    limit = source.stat().st_size * 4
    assert videos["long"].stat().st_size > limit
    monkeypatch.setenv("MML_SERVE_ROOTS", str(source.parent))
    monkeypatch.setenv("MML_SERVE_MAX_BYTES", str(limit))
    model = mlflow.pyfunc.load_model("models:/mml-tiny-rgb@champion")
    rows = [
        {"video": str(source)},
        {"video_b64": b64(source)},
        {"video_b64": b64(videos["portrait"])},
        {"video_b64": b64(broken[0])},  # truncated
        {"video_b64": "%%% not base64"},
        {"video_b64": b64(videos["long"])},
        {"video": str(source), "video_b64": b64(source)},
        {},
    ]
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    monkeypatch.setenv("TMPDIR", str(scratch))
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))
    out = model.predict(pd.DataFrame.from_records(rows), params={"top_k": 6})
    assert list(scratch.iterdir()) == []  # the bytes were decoded in memory
    by_path, by_bytes, portrait, *bad = out.to_dict(orient="records")
    assert by_path["error"] == by_bytes["error"] == portrait["error"] == ""
    assert by_bytes["video"] == "" and by_path["video"] == str(source)
    assert dict(zip(by_bytes["top_labels"], by_bytes["top_scores"], strict=True)) == pytest.approx(
        dict(zip(by_path["top_labels"], by_path["top_scores"], strict=True)), abs=1e-6
    )
    errors = [row["error"] for row in bad]
    assert errors[0].startswith("cannot decode video <video_b64 of row 3>")
    assert "not valid base64" in errors[1]
    assert (
        errors[2]
        == f"video_b64 is {videos['long'].stat().st_size} bytes, over the limit of {limit}"
    )
    assert "not both" in errors[3] and errors[4].startswith("no video")
    assert all(row["label"] == "" and row["score"] == 0 for row in bad)


@pytest.mark.parametrize(
    "variable,value,error",
    [
        ("MML_SERVE_TIMEOUT", "1e-9", "time limit exceeded (1e-09 s per video)"),
        ("MML_SERVE_MAX_PIXELS", "1023", "frames of 32x32 are over the limit of 1023 pixels"),
    ],
)
def test_served_model_stops_a_video_at_its_limits(
    promoted, odd_videos, monkeypatch, variable, value, error
):
    source = odd_videos[0]
    monkeypatch.setenv(variable, value)
    model = mlflow.pyfunc.load_model("models:/mml-tiny-ensemble@champion")  # flow: the slow path
    out = model.predict(pd.DataFrame({"video_b64": [b64(source)]}))
    assert out["error"].tolist() == [error]


def test_mml_serve_answers_a_scoring_request_without_the_venv_on_path(promoted, odd_videos):
    """The README's command, `.venv/bin/mml serve`, with a PATH that does not hold the venv
    (as in a fresh shell): `mlflow models serve` would fail to find uvicorn there."""
    source, videos, broken = odd_videos
    port = free_port()
    bin_dir = Path(sys.executable).parent
    path = os.pathsep.join(p for p in os.environ["PATH"].split(os.pathsep) if Path(p) != bin_dir)
    # the videos' directories and /dev are allowed; paths elsewhere, and non-files, are not
    roots = os.pathsep.join([str(source.parent), str(broken[1].parent), "/dev"])
    long = videos["long"]
    limit = source.stat().st_size * 4
    env = {**os.environ, "PATH": path, "MML_SERVE_ROOTS": roots}
    fifo = broken[1].parent / "fifo.webm"
    if not fifo.exists():
        os.mkfifo(fifo)
    link = broken[1].parent / "passwd.webm"
    if not link.exists():
        link.symlink_to("/etc/passwd")
    refused = [
        "/etc/passwd",
        f"{source.parent}/../../../../../../etc/passwd",
        str(link),
        str(fifo),
        "/dev/zero",
        str(source.parent),
        "/no/such/dir/video.webm",
    ]
    server = subprocess.Popen(
        [str(bin_dir / "mml"), "serve", "--model", "models:/mml-tiny-rgb@champion"]
        + ["--port", str(port), "--max-bytes", str(limit)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        wait_for_http(f"http://127.0.0.1:{port}/ping", server)
        videos = [str(source), str(broken[1]), *refused]
        records = [{"video": v} for v in videos]
        records += [{"video_b64": b64(source)}, {"video_b64": b64(long)}, {"video_b64": "@@"}]
        body = {"dataframe_records": records, "params": {"top_k": 2}}
        request = urllib.request.Request(
            f"http://127.0.0.1:{port}/invocations",
            data=json.dumps(body).encode(),
            headers={"Content-Type": "application/json"},
        )
        with urllib.request.urlopen(request, timeout=60) as response:
            predictions = json.loads(response.read())["predictions"]
    finally:
        server.terminate()
        server.wait(timeout=30)
    good, bad, *rest, sent, too_big, malformed = predictions
    assert good["error"] == "" and len(good["top_labels"]) == 2 and good["score"] > 0
    assert good["label"] == good["top_labels"][0]
    assert bad["label"] == "" and "cannot decode" in bad["error"]
    assert [row["error"] for row in rest] == ["path not allowed"] * len(refused)
    assert sent["error"] == "" and sent["top_labels"] == good["top_labels"]
    assert sent["top_scores"] == pytest.approx(good["top_scores"], abs=1e-6)
    assert too_big["error"].endswith(f"over the limit of {limit}")
    assert "not valid base64" in malformed["error"]
