"""Read and write video annotations: Something-Something-v2 JSON, Charades CSV, generic CSV.

Every reader returns an `Annotations` (class names + one `VideoRecord` per video). Malformed input
raises `AnnotationError` naming the file and the line where the bad entry starts, so a person can
open the file at that line. Each format is read and written here and nowhere else.
"""

from __future__ import annotations

import csv
import io
import json
import math
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from mml.errors import UserError
from mml.fsio import atomic_write_text

# Columns of Charades_v1_train.csv / Charades_v1_test.csv, in order.
CHARADES_HEADER = ("id", "subject", "scene", "quality", "relevance", "verified", "script")
CHARADES_HEADER += ("objects", "descriptions", "actions", "length")
_WHITESPACE = re.compile(r"[ \t\n\r]*")
_CHARADES_CODE = re.compile(r"c(\d+)")


class AnnotationError(UserError, ValueError):
    """A malformed annotation file; str() is "<file>:<line>: <what is wrong> (<what to do>)"."""

    def __init__(self, file: Path, line: int | None, message: str):
        self.file = Path(file)
        self.line = line
        self.message = message
        where = f"{self.file}:{line}" if line is not None else str(self.file)
        super().__init__(f"{where}: {message}")

    def __reduce__(self) -> tuple[Any, ...]:  # picklable across DataLoader workers
        return (type(self), (self.file, self.line, self.message))


@dataclass(frozen=True)
class VideoRecord:
    """One video: its id, its file, and its class indices (empty when unlabelled)."""

    id: str
    path: Path
    labels: tuple[int, ...]


@dataclass(frozen=True)
class Annotations:
    """Class names (index = class id) and the videos of one split."""

    classes: tuple[str, ...]
    records: tuple[VideoRecord, ...]
    multilabel: bool


def label_counts(ann: Annotations) -> np.ndarray:
    """Number of videos carrying each class, shape (num_classes,), int64."""
    labels = [label for record in ann.records for label in record.labels]
    return np.bincount(np.asarray(labels, dtype=np.int64), minlength=len(ann.classes))


# ---------------------------------------------------------------- text, ids
_NOT_UTF8 = "not UTF-8 text (save the file as UTF-8)"


def _read_text(path: Path) -> str:
    try:
        return Path(path).read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as e:
        line = Path(path).read_bytes()[: e.start].count(b"\n") + 1
        raise AnnotationError(path, line, _NOT_UTF8) from e


def _check_id(video_id: str, file: Path, line: int) -> None:
    """A video id names files (<id><ext>, cache <id>.npy): one plain path component only."""
    if video_id in (".", "..") or any(c in video_id for c in "/\\\0"):
        fix = "ids are file names: no '/', '\\', NUL, '.' or '..'"
        raise AnnotationError(file, line, f"video id {video_id!r} escapes the data root ({fix})")


# ---------------------------------------------------------------- JSON with line numbers


def _load_json(path: Path, expected: type) -> str:
    """Return the text of a JSON file whose top level is `expected` (list or dict)."""
    text = _read_text(path)
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        raise AnnotationError(path, e.lineno, f"invalid JSON: {e.msg} (fix the syntax)") from e
    if not isinstance(data, expected):
        kind = "an array" if expected is list else "an object"
        raise AnnotationError(path, 1, f"top level must be {kind} (check the file's format)")
    return text


def _json_items(text: str) -> Iterator[tuple[int, str | None, Any]]:
    """Yield (line, key, value) for each member of the top-level array (key None) or object.

    The stdlib gives no positions for parsed values, so walk the top level with raw_decode,
    which returns where each member ends, and count newlines up to where the next one starts.
    `text` must already be valid JSON (see `_load_json`).
    """
    decoder = json.JSONDecoder()
    pos = _WHITESPACE.match(text).end()
    closer = "]" if text[pos] == "[" else "}"
    pos = _WHITESPACE.match(text, pos + 1).end()
    line, counted = 1, 0
    while text[pos] != closer:
        line += text.count("\n", counted, pos)
        counted = pos
        key = None
        if closer == "}":
            key, pos = decoder.raw_decode(text, pos)
            pos = _WHITESPACE.match(text, pos).end() + 1  # skip ":"
            pos = _WHITESPACE.match(text, pos).end()
        value, pos = decoder.raw_decode(text, pos)
        yield line, key, value
        pos = _WHITESPACE.match(text, pos).end()
        if text[pos] == ",":
            pos = _WHITESPACE.match(text, pos + 1).end()


# ---------------------------------------------------------------- Something-Something-v2


def _ssv2_class_name(template: str) -> str:
    """SSv2 quirk: splits carry "Holding [something]"; labels.json has "Holding something"."""
    return template.replace("[", "").replace("]", "")


def _read_ssv2_classes(labels_json: Path) -> tuple[str, ...]:
    """Class names ordered by id from labels.json ({"name": "id", ...}, ids 0..N-1)."""
    items = list(_json_items(_load_json(labels_json, dict)))
    by_id: dict[int, str] = {}
    seen: set[str] = set()
    for line, name, value in items:
        if name in seen:
            raise AnnotationError(labels_json, line, f"class {name!r} listed twice (keep one)")
        seen.add(name)
        if isinstance(value, int) and not isinstance(value, bool):
            value = str(value)
        if not isinstance(value, str) or not value.isdigit():
            fix = 'class ids are digit strings such as "0"'
            raise AnnotationError(labels_json, line, f"bad class id {value!r} for {name!r} ({fix})")
        class_id = int(value)
        if class_id >= len(items) or class_id in by_id:
            fix = f"ids must be 0..{len(items) - 1}, each used once"
            raise AnnotationError(
                labels_json, line, f"class id {class_id} repeated or out of range ({fix})"
            )
        by_id[class_id] = name
    return tuple(by_id[i] for i in range(len(items)))


def read_ssv2(
    labels_json: Path, split_json: Path, video_dir: Path, *, ext: str = ".webm"
) -> Annotations:
    """Read a Something-Something-v2 split (train.json, validation.json or test.json).

    A split is labelled when its first entry has a "template" or "label"; then every entry needs
    a "template", and its class is the template without brackets, looked up in labels.json.
    The test split (entries {"id": ...} only) gives records with labels=().
    """
    classes = _read_ssv2_classes(labels_json)
    class_ids = {name: i for i, name in enumerate(classes)}
    records: list[VideoRecord] = []
    seen: set[str] = set()
    labelled: bool | None = None
    for line, _, entry in _json_items(_load_json(split_json, list)):
        if not isinstance(entry, dict):
            raise AnnotationError(split_json, line, 'entry is not an object (expected {"id": ...})')
        video_id = entry.get("id")
        if not isinstance(video_id, str) or not video_id:
            fix = 'give each entry an "id" string such as "78687"'
            raise AnnotationError(split_json, line, f"bad or missing id {video_id!r} ({fix})")
        _check_id(video_id, split_json, line)
        if video_id in seen:
            raise AnnotationError(split_json, line, f"video id {video_id!r} repeated (keep one)")
        seen.add(video_id)
        has_label = "template" in entry or "label" in entry
        if labelled is None:
            labelled = has_label
        labels: tuple[int, ...] = ()
        if labelled:
            labels = (_ssv2_label(entry, class_ids, split_json, line),)
        elif has_label:
            fix = "in a test split no entry has one; the first entry here has none"
            raise AnnotationError(split_json, line, f"unexpected label/template ({fix})")
        records.append(VideoRecord(video_id, Path(video_dir) / f"{video_id}{ext}", labels))
    return Annotations(classes, tuple(records), multilabel=False)


def _ssv2_label(entry: dict, class_ids: dict[str, int], file: Path, line: int) -> int:
    """Class id of a labelled SSv2 entry, from its template."""
    template = entry.get("template")
    if not isinstance(template, str):
        fix = 'every entry of a labelled split needs a "template" string'
        raise AnnotationError(file, line, f"bad or missing template {template!r} ({fix})")
    name = _ssv2_class_name(template)
    if name not in class_ids:
        fix = "add the class to labels.json or fix the template"
        raise AnnotationError(file, line, f"template {template!r} is not a known class ({fix})")
    return class_ids[name]


def write_ssv2(
    classes: Sequence[str], entries: Sequence[dict], labels_json: Path, split_json: Path
) -> None:
    """Write labels.json ({name: "id"}) and one split file (a list of entries), atomically.

    Entries are written as given: {"id", "label", "template", "placeholders"} for labelled
    splits, {"id"} for a test split. Templates must name a class (brackets ignored).
    """
    known = set(classes)
    if len(known) != len(classes):
        raise ValueError("class names must be unique")
    for entry in entries:
        if "template" in entry and _ssv2_class_name(entry["template"]) not in known:
            raise ValueError(f"entry {entry.get('id')!r}: template is not one of the classes")
    labels = {name: str(i) for i, name in enumerate(classes)}
    atomic_write_text(Path(labels_json), json.dumps(labels, indent=1, ensure_ascii=False) + "\n")
    atomic_write_text(
        Path(split_json), json.dumps(list(entries), indent=1, ensure_ascii=False) + "\n"
    )


# ---------------------------------------------------------------- CSV helpers


def _csv_rows(path: Path) -> Iterator[tuple[int, list[str]]]:
    """Yield (line where the row starts, fields) for each non-blank row, header included."""
    with open(path, encoding="utf-8-sig", newline="") as f:
        reader = csv.reader(f)
        start = 1
        try:
            for row in reader:
                if row:
                    yield start, row
                start = reader.line_num + 1  # rows may span lines (quoted newlines)
        except csv.Error as e:
            raise AnnotationError(path, reader.line_num, f"invalid CSV: {e} (fix quoting)") from e
        except UnicodeDecodeError as e:
            raise AnnotationError(path, reader.line_num + 1, _NOT_UTF8) from e


def _csv_text(rows: Sequence[Sequence[Any]]) -> str:
    buffer = io.StringIO()
    csv.writer(buffer, lineterminator="\n").writerows(rows)
    return buffer.getvalue()


# ---------------------------------------------------------------- Charades


def _read_charades_classes(classes_txt: Path) -> tuple[str, ...]:
    """Class names from lines "c000 Holding some clothes", codes in order c000, c001, ..."""
    names: list[str] = []
    lines = _read_text(classes_txt).splitlines()
    for line_no, text in enumerate(lines, start=1):
        if not text.strip():
            continue
        code, _, name = text.strip().partition(" ")
        match = _CHARADES_CODE.fullmatch(code)
        if match is None or int(match.group(1)) != len(names) or not name.strip():
            fix = f'expected "c{len(names):03d} <class name>"'
            raise AnnotationError(classes_txt, line_no, f"bad class line {text!r} ({fix})")
        names.append(name.strip())
    return tuple(names)


def _parse_actions(actions: str, classes: int, file: Path, line: int) -> tuple[int, ...]:
    """Sorted unique class indices of a Charades actions field "c092 11.90 21.20;c147 0 12.6"."""
    labels: set[int] = set()
    for token in filter(None, (t.strip() for t in actions.split(";"))):
        parts = token.split()
        match = _CHARADES_CODE.fullmatch(parts[0]) if len(parts) == 3 else None
        if match is None:
            fix = 'expected "cNNN <start> <end>" separated by ";"'
            raise AnnotationError(file, line, f"bad action {token!r} ({fix})")
        if int(match.group(1)) >= classes:
            fix = f"the classes file has c000..c{classes - 1:03d}"
            raise AnnotationError(file, line, f"unknown class {parts[0]!r} ({fix})")
        try:
            start, end = float(parts[1]), float(parts[2])
        except ValueError:
            start = end = math.nan
        if not (math.isfinite(start) and math.isfinite(end)):
            fix = "times are seconds such as 11.90"
            raise AnnotationError(file, line, f"bad time in action {token!r} ({fix})")
        if start > end:
            raise AnnotationError(file, line, f"action {token!r} ends before it starts (swap)")
        labels.add(int(match.group(1)))
    return tuple(sorted(labels))


def read_charades(
    split_csv: Path, classes_txt: Path, video_dir: Path, *, ext: str = ".mp4"
) -> Annotations:
    """Read a Charades split (Charades_v1_train.csv / _test.csv); multi-label.

    A video's labels are the sorted unique classes of its actions; empty actions give labels=().
    """
    classes = _read_charades_classes(classes_txt)
    rows = _csv_rows(split_csv)
    header_line, header = next(rows, (1, []))
    if "id" not in header or "actions" not in header:
        fix = f"expected the header {','.join(CHARADES_HEADER)}"
        raise AnnotationError(split_csv, header_line, f"header lacks 'id' or 'actions' ({fix})")
    id_col, actions_col = header.index("id"), header.index("actions")
    records: list[VideoRecord] = []
    seen: set[str] = set()
    for line, row in rows:
        if len(row) != len(header):
            fix = "quote fields that contain commas"
            raise AnnotationError(
                split_csv, line, f"{len(row)} fields, header has {len(header)} ({fix})"
            )
        video_id = row[id_col].strip()
        if not video_id or video_id in seen:
            raise AnnotationError(split_csv, line, f"empty or repeated id {video_id!r} (keep one)")
        _check_id(video_id, split_csv, line)
        seen.add(video_id)
        labels = _parse_actions(row[actions_col], len(classes), split_csv, line)
        records.append(VideoRecord(video_id, Path(video_dir) / f"{video_id}{ext}", labels))
    return Annotations(classes, tuple(records), multilabel=True)


def write_charades(
    classes: Sequence[str], rows: Sequence[dict], split_csv: Path, classes_txt: Path
) -> None:
    """Write Charades_v1_classes.txt and one split CSV, atomically; inverse of `read_charades`.

    Each row: {"id": str, "actions": [(class_index, start_s, end_s), ...], "length": seconds};
    other Charades columns (subject, scene, script, ...) are copied if present, else empty.
    """
    lines = [f"c{i:03d} {name}\n" for i, name in enumerate(classes)]
    table: list[Sequence[Any]] = [CHARADES_HEADER]
    for row in rows:
        actions = ";".join(f"c{c:03d} {s:.2f} {e:.2f}" for c, s, e in row.get("actions", ()))
        fields = {**row, "actions": actions, "length": f"{float(row.get('length', 0.0)):.2f}"}
        table.append([fields.get(column, "") for column in CHARADES_HEADER])
    atomic_write_text(Path(classes_txt), "".join(lines))
    atomic_write_text(Path(split_csv), _csv_text(table))


# ---------------------------------------------------------------- generic CSV (path,label)


def _video_path(raw: str, video_dir: Path, file: Path, line: int) -> Path:
    """`video_dir / raw`, refusing paths that could leave video_dir."""
    relative = Path(raw)
    if not raw or relative.is_absolute() or ".." in relative.parts:
        fix = "give a path relative to the video directory, without '..'"
        raise AnnotationError(file, line, f"path {raw!r} escapes the video directory ({fix})")
    return Path(video_dir) / relative


def read_csv(
    csv_path: Path, video_dir: Path, *, classes: Sequence[str] | None = None
) -> Annotations:
    """Read a `path,label` CSV (header row first); single-label.

    `path` is relative to video_dir and is also the video id; `label` is a class name. Classes
    are the sorted unique labels unless `classes` is given, in which case labels must be in it.
    """
    rows = _csv_rows(csv_path)
    header_line, header = next(rows, (1, []))
    if [h.strip() for h in header] != ["path", "label"]:
        raise AnnotationError(
            csv_path, header_line, f"header is {header!r} (expected 'path,label')"
        )
    entries: list[tuple[int, str, Path, str]] = []
    seen: set[str] = set()
    for line, row in rows:
        if len(row) != 2 or not row[1]:
            fix = "quote labels that contain commas"
            raise AnnotationError(csv_path, line, f"expected path,label, got {row!r} ({fix})")
        path = _video_path(row[0], video_dir, csv_path, line)
        video_id = Path(row[0]).as_posix()
        if video_id in seen:
            raise AnnotationError(csv_path, line, f"video {video_id!r} repeated (keep one)")
        seen.add(video_id)
        entries.append((line, video_id, path, row[1]))
    names = tuple(sorted({e[3] for e in entries})) if classes is None else tuple(classes)
    if len(set(names)) != len(names):
        raise ValueError("class names must be unique")
    class_ids = {name: i for i, name in enumerate(names)}
    records = []
    for line, video_id, path, label in entries:
        if label not in class_ids:
            raise AnnotationError(
                csv_path, line, f"unknown class {label!r} (use one of the classes)"
            )
        records.append(VideoRecord(video_id, path, (class_ids[label],)))
    return Annotations(names, tuple(records), multilabel=False)


def write_csv(entries: Sequence[tuple[str, str]], csv_path: Path) -> None:
    """Write (path, label) pairs as a `path,label` CSV, atomically; inverse of `read_csv`."""
    atomic_write_text(Path(csv_path), _csv_text([("path", "label"), *entries]))
