import json
import re

import pytest

from shards.plan import make_key, make_plan, read_class_file
from shards.sources import SourceError, list_inputs


def touch(path, data=b"x"):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def test_folder_labels_are_subfolders_and_other_files_are_ignored(tmp_path):
    touch(tmp_path / "abseiling" / "a.mp4")
    touch(tmp_path / "abseiling" / "notes.txt")
    touch(tmp_path / "zumba" / "deep" / "b.webm")
    touch(tmp_path / ".hidden" / "c.mp4")
    touch(tmp_path / "loose.mkv")
    items = {i.source: i.label_name for i in list_inputs(tmp_path)}
    assert items == {"abseiling/a.mp4": "abseiling", "zumba/deep/b.webm": "zumba", "loose.mkv": None}


def test_csv_with_path_and_label(tmp_path):
    touch(tmp_path / "v" / "a.mp4")
    (tmp_path / "list.csv").write_text("path,label\nv/a.mp4,run\nv/missing.mp4,walk\n")
    items = list_inputs(tmp_path / "list.csv")
    assert [(i.source, i.label_name, i.path is not None) for i in items] == [
        ("v/a.mp4", "run", True), ("v/missing.mp4", "walk", False)]


def test_kinetics_csv_finds_downloaded_clips(tmp_path):
    touch(tmp_path / "train" / "abseiling" / "0347ZoDXyP0_000095_000105.mp4")
    (tmp_path / "train.csv").write_text(
        "label,youtube_id,time_start,time_end,split\n"
        "abseiling,0347ZoDXyP0,95,105,train\n"
        "air drumming,--nQbRBEz2s,104,114,train\n")
    items = list_inputs(tmp_path / "train.csv")
    assert items[0].source == "train/abseiling/0347ZoDXyP0_000095_000105.mp4" and items[0].label_name == "abseiling"
    assert items[1].path is None and items[1].label_name == "air drumming"


def test_jsonl_and_root(tmp_path):
    touch(tmp_path / "media" / "x.mp4")
    lst = tmp_path / "lists" / "l.jsonl"
    lst.parent.mkdir()
    lst.write_text(json.dumps({"path": "x.mp4", "label": 3}) + "\n\n" + json.dumps({"path": "x.mp4"}) + "\n")
    items = list_inputs(lst, root=tmp_path / "media")
    assert [(i.label_name, i.path is not None) for i in items] == [("3", True), (None, True)]


@pytest.mark.parametrize("name, text, match", [
    ("bad.csv", "file,klass\na,b\n", "path"),
    ("bad.jsonl", '{"path": "a"}\nnot json\n', r"bad.jsonl:2"),
    ("bad.jsonl", '["a"]\n', "'path' key"),
    ("list.txt", "a\n", ".csv or a .jsonl"),
])
def test_unreadable_lists_say_which_line(tmp_path, name, text, match):
    (tmp_path / name).write_text(text)
    with pytest.raises(SourceError, match=match):
        list_inputs(tmp_path / name)


def test_missing_input_folder(tmp_path):
    with pytest.raises(SourceError, match="no such folder"):
        list_inputs(tmp_path / "nope")


@pytest.mark.parametrize("source", ["a b/my clip.v2.final.mp4", "über/naïve café.mp4", "x/.../y.mp4", "日本語.mp4",
                                    "a.b.c", "-lead/-x.mp4"])
def test_keys_are_dot_free_ascii(source):
    key = make_key(source)
    assert re.fullmatch(r"[A-Za-z0-9_-]+", key) and len(key) <= 73


def test_keys_are_unique_where_slugs_collide():
    assert make_key("a b.mp4") != make_key("a_b.mp4") != make_key("a.b.mp4")


def test_plan_rejects_missing_unknown_label_and_duplicates(tmp_path):
    good = touch(tmp_path / "v" / "a.mp4")
    (tmp_path / "v" / "link.mp4").symlink_to(good)
    (tmp_path / "list.csv").write_text("path,label\nv/a.mp4,run\nv/gone.mp4,run\nv/a.mp4,run\nv/link.mp4,run\n"
                                       f"{good},run\nv/a.mp4,swim\n")
    (tmp_path / "classes.txt").write_text("run\nwalk\n")
    plan = make_plan(list_inputs(tmp_path / "list.csv"), seed=0, classes=read_class_file(tmp_path / "classes.txt"))
    assert [i.source for i in plan.items] == [str(good)]  # sorted first; the later listings are the duplicates
    reasons = sorted(r.reason for r in plan.rejects)
    assert reasons == ["duplicate", "duplicate", "duplicate", "missing_file", "unknown_label"]
    assert plan.classes == ["run", "walk"] and plan.items[0].label == 0


def test_plan_is_a_pure_function_of_inputs_and_seed(tmp_path):
    for n in range(40):
        touch(tmp_path / f"c{n % 3}" / f"v{n:02d}.mp4")
    items = list_inputs(tmp_path)
    a, b = make_plan(items, seed=1), make_plan(list(reversed(items)), seed=1)
    assert [i.key for i in a.items] == [i.key for i in b.items]
    assert a.inputs_digest == b.inputs_digest
    assert [i.key for i in make_plan(items, seed=2).items] != [i.key for i in a.items]
    assert [i.source for i in a.items] != sorted(i.source for i in a.items)  # shuffled across shards
    assert a.classes == ["c0", "c1", "c2"]


def test_class_file_with_duplicates_is_refused(tmp_path):
    (tmp_path / "c.txt").write_text("a\nb\na\n")
    with pytest.raises(ValueError, match="twice: a"):
        read_class_file(tmp_path / "c.txt")
