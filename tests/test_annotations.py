"""Tests for mml.data.annotations: real-format snippets, round trips, errors with file and line."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest

from mml.data.annotations import (
    AnnotationError,
    Annotations,
    VideoRecord,
    label_counts,
    read_charades,
    read_csv,
    read_ssv2,
    write_charades,
    write_csv,
    write_ssv2,
)

# ---------------------------------------------------------------- Something-Something-v2

SSV2_LABELS = """{
 "Approaching something with your camera": "0",
 "Holding something next to something": "2",
 "Moving something from left to right": "1"
}
"""

# Entries as in the real train.json; the second one starts at line 7.
SSV2_TRAIN = """[
 {"id": "78687",
  "label": "holding potato next to vicks vaporub bottle",
  "template": "Holding [something] next to [something]",
  "placeholders": ["potato", "vicks vaporub bottle"]
 },
 {"id": "42326",
  "label": "moving pen from left to right",
  "template": "Moving [something] from left to right",
  "placeholders": ["pen"]
 },
 {"id": "100904", "label": "approaching mug with your camera",
  "template": "Approaching [something] with your camera", "placeholders": ["mug"]}
]
"""


def _write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


@pytest.fixture
def ssv2_labels(tmp_path: Path) -> Path:
    return _write(tmp_path / "labels.json", SSV2_LABELS)


def test_read_ssv2_real_format(tmp_path: Path, ssv2_labels: Path) -> None:
    split = _write(tmp_path / "train.json", SSV2_TRAIN)
    ann = read_ssv2(ssv2_labels, split, tmp_path / "videos")
    assert ann.classes == (
        "Approaching something with your camera",
        "Moving something from left to right",
        "Holding something next to something",
    )
    assert ann.multilabel is False
    assert ann.records == (
        VideoRecord("78687", tmp_path / "videos" / "78687.webm", (2,)),
        VideoRecord("42326", tmp_path / "videos" / "42326.webm", (1,)),
        VideoRecord("100904", tmp_path / "videos" / "100904.webm", (0,)),
    )


def test_read_ssv2_test_split_has_no_labels(tmp_path: Path, ssv2_labels: Path) -> None:
    split = _write(tmp_path / "test.json", '[{"id": "1420"},\n {"id": "7"}]\n')
    ann = read_ssv2(ssv2_labels, split, tmp_path, ext=".mp4")
    assert [(r.id, r.path.name, r.labels) for r in ann.records] == [
        ("1420", "1420.mp4", ()),
        ("7", "7.mp4", ()),
    ]


def test_ssv2_round_trip(tmp_path: Path) -> None:
    classes = ["Pushing something so it spins", "Putting something onto something"]
    entries = [
        {"id": str(i), "label": "x", "template": t, "placeholders": ["x"]}
        for i, t in enumerate(
            ["Putting [something] onto [something]", "Pushing [something] so it spins"]
        )
    ]
    labels_json, split_json = tmp_path / "a" / "labels.json", tmp_path / "a" / "train.json"
    write_ssv2(classes, entries, labels_json, split_json)
    ann = read_ssv2(labels_json, split_json, tmp_path)
    assert ann.classes == tuple(classes)
    assert [r.labels for r in ann.records] == [(1,), (0,)]
    assert sorted(p.name for p in labels_json.parent.iterdir()) == ["labels.json", "train.json"]


def test_write_ssv2_rejects_unknown_template(tmp_path: Path) -> None:
    entries = [{"id": "1", "template": "Dropping [something]"}]
    with pytest.raises(ValueError, match="template"):
        write_ssv2(["Holding something"], entries, tmp_path / "l.json", tmp_path / "t.json")


@pytest.mark.parametrize(
    ("old", "new", "line", "match"),
    [
        ('  "template": "Moving [something] from left to right",\n', "", 7, "template"),
        ('"id": "42326"', '"id": 42326', 7, "id"),
        ('"id": "42326"', '"id": "78687"', 7, "repeated"),
        ("Moving [something] from left to right", "Moving [something] up", 7, "not a known class"),
        ('"id": "100904"', '"idx": "100904"', 12, "id"),
    ],
)
def test_ssv2_bad_entry_names_its_line(
    tmp_path: Path, ssv2_labels: Path, old: str, new: str, line: int, match: str
) -> None:
    assert old in SSV2_TRAIN
    split = _write(tmp_path / "train.json", SSV2_TRAIN.replace(old, new, 1))
    with pytest.raises(AnnotationError, match=match) as info:
        read_ssv2(ssv2_labels, split, tmp_path)
    assert (info.value.file, info.value.line) == (split, line)
    assert str(info.value).startswith(f"{split}:{line}: ")


def test_ssv2_entry_not_an_object(tmp_path: Path, ssv2_labels: Path) -> None:
    split = _write(tmp_path / "test.json", '[\n {"id": "1"},\n\n "2"\n]')
    with pytest.raises(AnnotationError, match="not an object") as info:
        read_ssv2(ssv2_labels, split, tmp_path)
    assert info.value.line == 4


def test_ssv2_mixed_labelled_and_unlabelled(tmp_path: Path, ssv2_labels: Path) -> None:
    text = '[{"id": "1"},\n{"id": "2", "template": "Holding [something] next to [something]"}]'
    split = _write(tmp_path / "test.json", text)
    with pytest.raises(AnnotationError, match="unexpected") as info:
        read_ssv2(ssv2_labels, split, tmp_path)
    assert info.value.line == 2


def test_ssv2_invalid_json_reports_decoder_line(tmp_path: Path, ssv2_labels: Path) -> None:
    split = _write(tmp_path / "train.json", SSV2_TRAIN.replace('"pen"]', '"pen"'))
    with pytest.raises(AnnotationError, match="invalid JSON") as info:
        read_ssv2(ssv2_labels, split, tmp_path)
    assert (info.value.file, info.value.line) == (split, 11)


def test_ssv2_split_must_be_a_list(tmp_path: Path, ssv2_labels: Path) -> None:
    split = _write(tmp_path / "train.json", '{"id": "1"}')
    with pytest.raises(AnnotationError, match="array") as info:
        read_ssv2(ssv2_labels, split, tmp_path)
    assert info.value.line == 1


@pytest.mark.parametrize(
    ("old", "new", "line", "match"),
    [
        ('camera": "0"', 'camera": "zero"', 2, "bad class id"),
        ('right": "1"', 'right": "2"', 4, "repeated or out of range"),
        ('right": "1"', 'right": "3"', 4, "repeated or out of range"),
        (
            '"Holding something next to something"',
            '"Moving something from left to right"',
            4,
            "twice",
        ),
    ],
)
def test_ssv2_bad_labels_json_names_its_line(
    tmp_path: Path, old: str, new: str, line: int, match: str
) -> None:
    assert old in SSV2_LABELS
    labels = _write(tmp_path / "labels.json", SSV2_LABELS.replace(old, new, 1))
    split = _write(tmp_path / "train.json", SSV2_TRAIN)
    with pytest.raises(AnnotationError, match=match) as info:
        read_ssv2(labels, split, tmp_path)
    assert (info.value.file, info.value.line) == (labels, line)


def test_json_with_bom_and_crlf(tmp_path: Path, ssv2_labels: Path) -> None:
    text = "\ufeff" + SSV2_TRAIN.replace('"id": "42326"', '"id": 5').replace("\n", "\r\n")
    split = tmp_path / "train.json"
    split.write_bytes(text.encode("utf-8"))
    with pytest.raises(AnnotationError) as info:
        read_ssv2(ssv2_labels, split, tmp_path)
    assert info.value.line == 7


# ---------------------------------------------------------------- Charades

CHARADES_CLASSES = """c000 Holding some clothes
c001 Putting clothes somewhere
c002 Taking some clothes from somewhere
"""

CHARADES_HEADER = (
    "id,subject,scene,quality,relevance,verified,script,objects,descriptions,actions,length\n"
)
# The second row's description holds a quoted comma and a quoted newline: it spans lines 3-4.
CHARADES_TRAIN = (
    CHARADES_HEADER
    + '46GP8,HR43,Kitchen,6,7,Yes,"A person cooks, then leaves.",food;stove,x,'
    + '"c002 11.90 21.20;c000 0.00 12.60;c002 1.0 2.0",24.83\n'
    + 'N11GT,0KZ7,Stairs,6,7,Yes,"Walks down, then up",stairs,"one,\ntwo",,17.67\n'
    + "KRF68,4U94,Bathroom,5,7,Yes,Sneezes,towel,x,c001 0.50 3.10,30.00\n"
)


@pytest.fixture
def charades_classes(tmp_path: Path) -> Path:
    return _write(tmp_path / "Charades_v1_classes.txt", CHARADES_CLASSES)


def test_read_charades_real_format(tmp_path: Path, charades_classes: Path) -> None:
    split = _write(tmp_path / "Charades_v1_train.csv", CHARADES_TRAIN)
    ann = read_charades(split, charades_classes, tmp_path / "v")
    assert ann.multilabel is True
    assert ann.classes == (
        "Holding some clothes",
        "Putting clothes somewhere",
        "Taking some clothes from somewhere",
    )
    assert ann.records == (
        VideoRecord("46GP8", tmp_path / "v" / "46GP8.mp4", (0, 2)),  # sorted, unique
        VideoRecord("N11GT", tmp_path / "v" / "N11GT.mp4", ()),  # empty actions
        VideoRecord("KRF68", tmp_path / "v" / "KRF68.mp4", (1,)),
    )
    np.testing.assert_array_equal(label_counts(ann), [1, 1, 1])


def test_charades_round_trip(tmp_path: Path) -> None:
    classes = ["Holding a book", "Closing a door, slowly", "Lying on the floor"]
    rows = [
        {"id": "AB12C", "actions": [(2, 3.0, 7.25), (0, 0.0, 1.5)], "length": 12.0},
        {"id": "ZZ9", "actions": [], "length": 3.3, "scene": "Hallway, upstairs"},
    ]
    split, txt = tmp_path / "out" / "train.csv", tmp_path / "out" / "classes.txt"
    write_charades(classes, rows, split, txt)
    ann = read_charades(split, txt, tmp_path, ext=".webm")
    assert ann.classes == tuple(classes)
    assert [(r.id, r.path.name, r.labels) for r in ann.records] == [
        ("AB12C", "AB12C.webm", (0, 2)),
        ("ZZ9", "ZZ9.webm", ()),
    ]
    assert "c002 3.00 7.25;c000 0.00 1.50" in split.read_text()


@pytest.mark.parametrize(
    ("actions", "match"),
    [
        ("c001 0.50", "bad action"),
        ("x001 0.50 3.10", "bad action"),
        ("c003 0.50 3.10", "unknown class"),
        ("c001 0.5O 3.10", "bad time"),
        ("c001 nan 3.10", "bad time"),
        ("c001 4.00 3.10", "ends before it starts"),
    ],
)
def test_charades_bad_action_names_its_line(
    tmp_path: Path, charades_classes: Path, actions: str, match: str
) -> None:
    # Line 5, after a row spanning two physical lines: csv rows != file lines.
    split = _write(tmp_path / "train.csv", CHARADES_TRAIN.replace("c001 0.50 3.10", actions))
    with pytest.raises(AnnotationError, match=match) as info:
        read_charades(split, charades_classes, tmp_path)
    assert (info.value.file, info.value.line) == (split, 5)


def test_charades_row_field_count(tmp_path: Path, charades_classes: Path) -> None:
    split = _write(tmp_path / "train.csv", CHARADES_TRAIN.replace("Sneezes,", "Sneezes, a lot,"))
    with pytest.raises(AnnotationError, match="12 fields") as info:
        read_charades(split, charades_classes, tmp_path)
    assert info.value.line == 5


def test_charades_header_and_classes_errors(tmp_path: Path, charades_classes: Path) -> None:
    split = _write(tmp_path / "train.csv", CHARADES_TRAIN.replace("actions", "acts", 1))
    with pytest.raises(AnnotationError, match="header") as info:
        read_charades(split, charades_classes, tmp_path)
    assert info.value.line == 1
    bad = _write(tmp_path / "classes.txt", CHARADES_CLASSES.replace("c002", "c005"))
    with pytest.raises(AnnotationError, match="c002") as info:
        read_charades(split, bad, tmp_path)
    assert (info.value.file, info.value.line) == (bad, 3)


# ---------------------------------------------------------------- generic CSV


def test_csv_round_trip_unicode_and_commas(tmp_path: Path) -> None:
    entries = [
        ("a/vidéo 1.mp4", "Öffnen, dann schließen"),
        ("b.mp4", "跳舞"),
        ("c.mp4", 'say "hi", wave'),
        ("d.mp4", "跳舞"),
    ]
    csv_path = tmp_path / "labels.csv"
    write_csv(entries, csv_path)
    ann = read_csv(csv_path, tmp_path / "videos")
    assert ann.classes == ('say "hi", wave', "Öffnen, dann schließen", "跳舞")  # code point order
    assert ann.multilabel is False
    assert [(r.id, r.path, r.labels) for r in ann.records] == [
        ("a/vidéo 1.mp4", tmp_path / "videos" / "a" / "vidéo 1.mp4", (1,)),
        ("b.mp4", tmp_path / "videos" / "b.mp4", (2,)),
        ("c.mp4", tmp_path / "videos" / "c.mp4", (0,)),
        ("d.mp4", tmp_path / "videos" / "d.mp4", (2,)),
    ]
    np.testing.assert_array_equal(label_counts(ann), [1, 1, 2])


def test_csv_given_classes_fix_the_order(tmp_path: Path) -> None:
    csv_path = _write(tmp_path / "l.csv", "path,label\nx.mp4,b\ny.mp4,a\n")
    ann = read_csv(csv_path, tmp_path, classes=["b", "c", "a"])
    assert ann.classes == ("b", "c", "a")
    assert [r.labels for r in ann.records] == [(0,), (2,)]
    with pytest.raises(AnnotationError, match="unknown class 'a'") as info:
        read_csv(csv_path, tmp_path, classes=["b"])
    assert (info.value.file, info.value.line) == (csv_path, 3)


@pytest.mark.parametrize("path", ["/etc/passwd", "../x.mp4", "a/../../x.mp4", ""])
def test_csv_rejects_paths_escaping_video_dir(tmp_path: Path, path: str) -> None:
    csv_path = _write(tmp_path / "l.csv", f'path,label\nok.mp4,a\n"{path}",a\n')
    with pytest.raises(AnnotationError, match="escapes") as info:
        read_csv(csv_path, tmp_path)
    assert (info.value.file, info.value.line) == (csv_path, 3)


@pytest.mark.parametrize(
    ("text", "line", "match"),
    [
        ("file,class\nx.mp4,a\n", 1, "header"),
        ("path,label\nx.mp4,a,b\n", 2, "expected path,label"),
        ('path,label\n"x\ny.mp4",a\n\nx.mp4,a\nz.mp4\n', 6, "expected path,label"),
        ("path,label\nx.mp4,a\n./x.mp4,b\n", 3, "repeated"),
    ],
)
def test_csv_malformed_rows(tmp_path: Path, text: str, line: int, match: str) -> None:
    csv_path = _write(tmp_path / "l.csv", text)
    with pytest.raises(AnnotationError, match=match) as info:
        read_csv(csv_path, tmp_path)
    assert (info.value.file, info.value.line) == (csv_path, line)


# ---------------------------------------------------------------- shared behaviour


def test_annotation_error_format_and_pickle(tmp_path: Path) -> None:
    error = AnnotationError(tmp_path / "a.json", 7, "missing template (add one)")
    assert str(error) == f"{tmp_path / 'a.json'}:7: missing template (add one)"
    assert isinstance(error, ValueError)
    copy = pickle.loads(pickle.dumps(error))
    assert (copy.file, copy.line, str(copy)) == (error.file, 7, str(error))
    assert str(AnnotationError(Path("x.csv"), None, "empty")) == "x.csv: empty"


def test_writes_replace_existing_files_without_leftovers(tmp_path: Path) -> None:
    csv_path = _write(tmp_path / "l.csv", "old content")
    write_csv([("x.mp4", "a")], csv_path)
    assert csv_path.read_text() == "path,label\nx.mp4,a\n"
    assert [p.name for p in tmp_path.iterdir()] == ["l.csv"]


def test_label_counts_empty() -> None:
    ann = Annotations(classes=("a", "b"), records=(), multilabel=True)
    counts = label_counts(ann)
    assert counts.dtype == np.int64
    np.testing.assert_array_equal(counts, [0, 0])
