"""Training-loader throughput: mml's loader (sampled frames only) vs a naive baseline.

The baseline decodes the whole video with PyAV and then indexes the sampled frames, as many
simple loaders do. Both go through the same DataLoader (workers, batch size) and transforms.
A third row gives the same naive loader with PyAV's RGB conversion on one thread (PyAV >= 17
starts a thread pool for every frame it converts unless told otherwise): the part of mml's
lead that is that one argument, not reading fewer frames.

    python benchmarks/loader.py [--params params.yaml] [--batches 30] [-S key=value ...]
    python benchmarks/loader.py --ssv2 [--videos 8]

Needs the dataset (`mml data synth` for the default). Prints a markdown table.

`--ssv2`: Something-Something v2's size instead, on its own synthetic videos (426 x 240, 45
frames, textured; written to a temp directory with DIS flow and difference caches): clips/s of
one loader worker (the dataset read in this process, no DataLoader) for T = 8 RGB clips
(uniform and dense sampling) and for flow and diff clips read from the caches (`.npy`, the
`jpeg` format, and differences computed from the video, `cache.diff_from_video`); and the workers
one GPU would need to feed TSM-R50 at 100 clips/s, an assumed training rate, not a measurement.
"""

from __future__ import annotations

import argparse
import time

import av  # noqa: F401  (before decord: see mml/data/video.py)
import numpy as np

from mml.config import load_params
from mml.data import dataset as dataset_module
from mml.data.dataset import KEEP_DECODED_BYTES, VideoClips, load_split, make_loader


def naive_read_frames(path, indices) -> np.ndarray:
    """Decode every frame with PyAV, then index."""
    with av.open(str(path)) as container:
        frames = [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]
    return np.stack(frames)[np.asarray(indices)]


def naive_one_thread_read_frames(path, indices) -> np.ndarray:
    """The same, converting each frame to RGB on one thread."""
    with av.open(str(path)) as container:
        frames = [f.to_ndarray(format="rgb24", threads=1) for f in container.decode(video=0)]
    return np.stack(frames)[np.asarray(indices)]


def naive_num_frames(path) -> int:
    with av.open(str(path)) as container:
        return sum(1 for _ in container.decode(video=0))


def measure(params, batches: int, keep: bool = False) -> float:
    """Clips/s of the training loader; `keep`: with the videos kept decoded in memory, as
    `make_loader` does when they fit (`KEEP_DECODED_BYTES`); else decoded on every read."""
    ann = load_split(params.dataset, "train")
    clips = VideoClips(ann, params.clip, train=True, seed=params.seed)
    clips.keep_decoded(KEEP_DECODED_BYTES if keep else 0)  # decided here, before make_loader
    loader = make_loader(clips, params.loader, shuffle=True, seed=params.seed)
    iterator = iter(loader)
    next(iterator)  # start-up (worker fork) is not throughput
    count, start = 0, time.perf_counter()
    for _ in range(batches):
        try:
            batch = next(iterator)
        except StopIteration:
            iterator = iter(make_loader(clips, params.loader, shuffle=True, seed=1))
            batch = next(iterator)
        count += len(batch.ids)
    return count / (time.perf_counter() - start)


def ssv2(videos: int, repeats: int) -> None:
    import tempfile
    from pathlib import Path

    import ssv2_like

    from mml.config import ClipConfig, DatasetConfig
    from mml.data.cache import build_cache

    with tempfile.TemporaryDirectory(prefix="mml-ssv2-loader-") as tmp:
        root = Path(tmp)
        ssv2_like.render(root / "data", videos)
        cfg = DatasetConfig(root=root / "data")
        ann = load_split(cfg, "train")
        builds = {  # (kind, cache format): its directory
            ("flow", "npy"): root / "cache" / "flow",
            ("diff", "npy"): root / "cache" / "diff",
            ("flow", "jpeg"): root / "jpeg" / "flow",
            ("diff", "jpeg"): root / "jpeg" / "diff",
            ("diff", "video"): root / "video" / "diff",
        }
        for (kind, fmt), out in builds.items():
            build_cache(
                ann.records, out, kind, algorithm="dis", fmt=fmt, workers=1, show_progress=False
            )
        print(
            f"\n{len(ann.records)} videos, 426x240, 45 frames; T = 8; crop 224 of short side 256\n"
        )
        print("| clips | clips/s per worker | workers for 100 clips/s |\n|---|---|---|")
        for name, modality, sampling, fmt in (
            ("RGB, uniform", "rgb", "uniform", None),
            ("RGB, dense", "rgb", "dense", None),
            ("flow (npy cache), uniform", "flow", "uniform", "npy"),
            ("flow (jpeg cache), uniform", "flow", "uniform", "jpeg"),
            ("diff (npy cache), uniform", "diff", "uniform", "npy"),
            ("diff (jpeg cache), uniform", "diff", "uniform", "jpeg"),
            ("diff (from the video), uniform", "diff", "uniform", "video"),
        ):
            clip = ClipConfig(segments=8, sampling=sampling, scale_size=256, crop_size=224)
            caches = {modality: builds[modality, fmt]} if fmt else {}
            clips = VideoClips(ann, clip, train=True, modalities=[modality], caches=caches)
            clips.probe_videos()
            clips[0]  # warm-up
            start, n = time.perf_counter(), 0
            for _ in range(repeats):
                for i in range(len(clips)):
                    clips[i]
                    n += 1
            rate = n / (time.perf_counter() - start)
            print(f"| {name} | {rate:.1f} | {-(-100 // rate):.0f} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--batches", type=int, default=30)
    parser.add_argument("-S", dest="overrides", action="append", default=[])
    parser.add_argument("--ssv2", action="store_true", help="426x240, 45 frames, T = 8")
    parser.add_argument("--videos", type=int, default=8, help="--ssv2: videos to read")
    args = parser.parse_args()
    if args.ssv2:
        ssv2(args.videos, repeats=2)
        return
    params = load_params(args.params, args.overrides)
    rows = [("mml (sampled frames: PyAV or decord)", measure(params, args.batches))]
    kept = measure(params, args.batches, keep=True)  # before the naive reader is patched in
    dataset_module.read_frames, dataset_module.num_frames = naive_read_frames, naive_num_frames
    rows.append(("naive (PyAV, decode all, index)", measure(params, args.batches)))
    dataset_module.read_frames = naive_one_thread_read_frames
    rows.append(("naive, RGB conversion on one thread", measure(params, args.batches)))
    c, lo = params.clip, params.loader
    print(
        f"\nT={c.segments}, crop {c.crop_size}, batch {lo.batch_size}, workers {lo.workers}, "
        f"{args.batches} batches, dataset {params.dataset.root}\n"
    )
    print("| loader | clips/s |\n|---|---|")
    for name, rate in rows:
        print(f"| {name} | {rate:.1f} |")
    print(f"\nmml / naive: {rows[0][1] / rows[1][1]:.1f}x (both decoding every clip)")
    print(f"mml / naive with one conversion thread: {rows[0][1] / rows[2][1]:.1f}x")
    print(
        f"mml with the videos kept decoded in memory (what the training loader does when they "
        f"fit in {KEEP_DECODED_BYTES >> 20} MiB; not a decoding speed): {kept:.1f} clips/s"
    )


if __name__ == "__main__":
    main()
