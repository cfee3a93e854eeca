import json
import os
import re

import pytest

from vmae.shards.plan import make_key, make_plan, read_class_file
from vmae.shards.sources import InputTable, SourceError, list_inputs
from vmae.shards.walk import FILE, FRAMES, VideoIndex


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
    ("list.txt", "a\n", "UCF-101 split line"),
    ("list.xml", "a\n", ".csv or .jsonl"),
    ("labels.json", '{"id": 1}', "JSON array"),
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
    a, b = make_plan(items, seed=1), make_plan(items[::-1], seed=1)
    assert [i.key for i in a.items] == [i.key for i in b.items]
    assert a.inputs_digest == b.inputs_digest
    assert [i.key for i in make_plan(items, seed=2).items] != [i.key for i in a.items]
    assert [i.source for i in a.items] != sorted(i.source for i in a.items)  # shuffled across shards
    assert a.classes == ["c0", "c1", "c2"]


def test_class_file_with_duplicates_is_refused(tmp_path):
    (tmp_path / "c.txt").write_text("a\nb\na\n")
    with pytest.raises(ValueError, match="twice: a"):
        read_class_file(tmp_path / "c.txt")


def test_something_something_v2_labels_json_classes_are_templates(tmp_path):
    touch(tmp_path / "20bn-something-something-v2" / "78687.webm")
    touch(tmp_path / "20bn-something-something-v2" / "42326.webm")
    rows = [{"id": "78687", "label": "holding potato next to vicks vaporub bottle",
             "template": "Holding [something] next to [something]", "placeholders": ["potato", "bottle"]},
            {"id": "42326", "label": "spinning cube that quickly stops spinning",
             "template": "Spinning [something] that quickly stops spinning", "placeholders": ["cube"]},
            {"id": "100", "label": "x", "template": "Pushing [something] from left to right", "placeholders": []}]
    (tmp_path / "something-something-v2-train.json").write_text(json.dumps(rows))
    items = list_inputs(tmp_path / "something-something-v2-train.json")
    assert [(i.label_name, i.path is not None, i.split) for i in items] == [
        ("Holding something next to something", True, "train"),
        ("Spinning something that quickly stops spinning", True, "train"),
        ("Pushing something from left to right", False, "train")]
    assert items[0].source == "20bn-something-something-v2/78687.webm"
    (tmp_path / "something-something-v2-test.json").write_text(json.dumps([{"id": "78687"}]))
    assert list_inputs(tmp_path / "something-something-v2-test.json")[0].label_name is None


def test_ucf101_split_lists_take_the_class_from_the_folder(tmp_path):
    touch(tmp_path / "UCF-101" / "ApplyEyeMakeup" / "v_ApplyEyeMakeup_g08_c01.avi")
    touch(tmp_path / "UCF-101" / "YoYo" / "v_YoYo_g01_c01.avi")
    lists = tmp_path / "ucfTrainTestlist"
    lists.mkdir()
    (lists / "trainlist01.txt").write_text("ApplyEyeMakeup/v_ApplyEyeMakeup_g08_c01.avi 1\n")
    (lists / "testlist01.txt").write_text("YoYo/v_YoYo_g01_c01.avi\nYoYo/v_YoYo_g02_c01.avi\n")
    train = list_inputs(lists / "trainlist01.txt", root=tmp_path / "UCF-101")
    assert [(i.label_name, i.split, i.path is not None) for i in train] == [("ApplyEyeMakeup", "trainlist01", True)]
    test = list_inputs(lists / "testlist01.txt", root=tmp_path / "UCF-101")
    assert [(i.label_name, i.path is not None) for i in test] == [("YoYo", True), ("YoYo", False)]


def test_hmdb51_split_files_are_read_together_and_a_subset_must_be_chosen(tmp_path):
    for name in ("brush_hair/a_brush_hair_0.avi", "brush_hair/b_brush_hair_1.avi", "cartwheel/c_cartwheel_0.avi",
                 "cartwheel/d_cartwheel_1.avi"):
        touch(tmp_path / "hmdb51_org" / name)
    splits = tmp_path / "testTrainMulti_7030_splits"
    splits.mkdir()
    (splits / "brush_hair_test_split1.txt").write_text("a_brush_hair_0.avi 1 \nb_brush_hair_1.avi 2 \n")
    (splits / "cartwheel_test_split1.txt").write_text("c_cartwheel_0.avi 1 \nd_cartwheel_1.avi 0 \n")
    (splits / "cartwheel_test_split2.txt").write_text("c_cartwheel_0.avi 2 \nd_cartwheel_1.avi 1 \n")
    with pytest.raises(SourceError, match="--split train or --split test"):
        list_inputs(splits / "brush_hair_test_split1.txt", root=tmp_path / "hmdb51_org")
    train = list_inputs(splits / "brush_hair_test_split1.txt", root=tmp_path / "hmdb51_org", split="train")
    assert sorted((i.label_name, i.source) for i in train) == [
        ("brush_hair", "brush_hair/a_brush_hair_0.avi"), ("cartwheel", "cartwheel/c_cartwheel_0.avi")]
    test = list_inputs(splits / "cartwheel_test_split2.txt", root=tmp_path / "hmdb51_org", split="test")
    assert [i.source for i in test] == ["cartwheel/c_cartwheel_0.avi"]  # split 2 names cartwheel only here
    with pytest.raises(SourceError, match="its splits are test, train, unused"):
        list_inputs(splits / "brush_hair_test_split1.txt", root=tmp_path / "hmdb51_org", split="val")


def test_kinetics_split_column_selects_a_split(tmp_path):
    (tmp_path / "k.csv").write_text("label,youtube_id,time_start,time_end,split\n"
                                    "abseiling,a,1,11,train\nabseiling,b,1,11,val\nzumba,c,1,11,val\n")
    assert [i.split for i in list_inputs(tmp_path / "k.csv")] == ["train", "val", "val"]
    assert len(list_inputs(tmp_path / "k.csv", split="val")) == 2


def test_folders_of_extracted_frames_are_videos(tmp_path):
    videos = tmp_path / "rawframes"
    for n in (1, 2):  # mmaction's rawframes: RGB frames with optical flow beside them
        touch(videos / "archery" / "v_archery_g01" / f"img_{n:05d}.jpg")
        touch(videos / "archery" / "v_archery_g01" / f"flow_x_{n:05d}.jpg")
    touch(videos / "bowling" / "clip.mp4")
    touch(videos / "bowling" / "poster.jpg")  # beside videos: the class folder is not a frame folder
    touch(videos / "loose" / "00001.png")
    touch(videos / ".cache" / "x" / "00001.jpg")
    touch(videos / "cover.jpg")
    items = {i.source: (i.label_name, i.path.is_dir()) for i in list_inputs(videos)}
    assert items == {"archery/v_archery_g01": ("archery", True), "bowling/clip.mp4": ("bowling", False),
                     "loose": (None, True)}


def test_split_files_and_lists_find_frame_folders_in_place_of_videos(tmp_path):
    frames = tmp_path / "rawframes"
    touch(frames / "YoYo" / "v_YoYo_g01_c01" / "img_00001.jpg")  # UCF-101's list names v_YoYo_g01_c01.avi
    touch(frames / "12345" / "000001.jpg")  # Something-Something V2 frames: a folder per video id
    (tmp_path / "testlist01.txt").write_text("YoYo/v_YoYo_g01_c01.avi\n")
    [ucf] = list_inputs(tmp_path / "testlist01.txt", root=frames)
    assert ucf.path == frames / "YoYo" / "v_YoYo_g01_c01" and ucf.label_name == "YoYo"
    (tmp_path / "something-something-v2-validation.json").write_text(json.dumps(
        [{"id": "12345", "template": "Pushing [something] left"}]))
    [ssv2] = list_inputs(tmp_path / "something-something-v2-validation.json", root=frames)
    assert ssv2.path == frames / "12345" and ssv2.source == "12345"
    (tmp_path / "list.csv").write_text(f"path,label\n{frames / '12345'},push\n")
    assert list_inputs(tmp_path / "list.csv")[0].path == frames / "12345"


def test_a_list_read_in_many_chunks_gives_the_same_inputs_and_plan(tmp_path, monkeypatch):
    """Rows become arrays a chunk at a time (paths of different lengths in each): nothing is lost or cut."""
    rows = []
    for n in range(23):
        name = f"c{n % 4}/{'long_' * (n % 5)}v{n}.mp4"
        touch(tmp_path / name)
        rows.append(f"{name},c{n % 4}")
    (tmp_path / "list.csv").write_text("path,label\n" + "\n".join(rows) + "\nc0/missing.mp4,c0\n")
    whole = list_inputs(tmp_path / "list.csv")
    monkeypatch.setattr(InputTable, "CHUNK", 4)
    chunked = list_inputs(tmp_path / "list.csv")
    assert list(chunked) == list(whole) and len(whole) == 24
    assert [i.source for i in whole][:23] == [r.split(",")[0] for r in rows]
    a, b = make_plan(whole, seed=3), make_plan(chunked, seed=3)
    assert list(a.items) == list(b.items) and a.inputs_digest == b.inputs_digest
    assert [r.reason for r in a.rejects] == ["missing_file"]


def test_a_folder_walk_lists_in_pathlibs_order_with_each_files_identity(tmp_path):
    """The walk reads directory entries, not a Path and a stat per video, yet gives what sorting Paths gave: part
    by part ("a/b" before "a-b"), symlinked videos with their target's identity, dead links and linked folders
    left out, frame folders and their own identity."""
    names = ["a/b.mp4", "a-b/c.mp4", "a.mp4", "ab/0.mp4", "a/b/z.mp4", "frames/v1/img_00001.jpg", "Z.mkv"]
    for name in names:
        touch(tmp_path / name)
    (tmp_path / "a" / "link.mp4").symlink_to(tmp_path / "Z.mkv")
    (tmp_path / "a" / "dead.mp4").symlink_to(tmp_path / "nowhere.mp4")
    (tmp_path / "linked").symlink_to(tmp_path / "ab", target_is_directory=True)
    table = list_inputs(tmp_path)
    sources = [item.source for item in table]
    assert sources == ["Z.mkv", "a/b/z.mp4", "a/b.mp4", "a/link.mp4", "a-b/c.mp4", "a.mp4", "ab/0.mp4",
                       "frames/v1"]
    assert sources == [p.relative_to(tmp_path).as_posix() for p in sorted(
        [tmp_path / s for s in sources])]
    columns = table.columns
    for row, source in enumerate(sources):
        info = os.stat(tmp_path / source)
        assert (int(columns["dev"][row]), int(columns["inode"][row])) == (info.st_dev, info.st_ino), source
    assert columns["where"][sources.index("frames/v1")] == FRAMES and columns["where"][0] == FILE
    index = VideoIndex(tmp_path)
    assert index.find("z").source == "a/b/z.mp4" and index.find("v1").source == "frames/v1"
    assert index.find("b").source == "a/b.mp4" and index.find("nope") is None
    touch(tmp_path / "zz" / "z.webm")  # a second "z", later in path order: the first one still answers
    assert VideoIndex(tmp_path).find("z").source == "a/b/z.mp4"


def test_a_folder_that_cannot_be_listed_is_left_out_and_named(tmp_path, monkeypatch, caplog):
    touch(tmp_path / "open" / "a.mp4")
    touch(tmp_path / "locked" / "b.mp4")
    real_scandir = os.scandir

    def scandir(path):
        if str(path).endswith("locked"):
            raise PermissionError(13, "Permission denied")
        return real_scandir(path)

    monkeypatch.setattr(os, "scandir", scandir)
    assert [item.source for item in list_inputs(tmp_path)] == ["open/a.mp4"]
    assert "locked: cannot be listed (Permission denied)" in caplog.text
