import json
import os
import re

import pytest

from vmae.shards.plan import make_key, make_plan, read_class_file
from vmae.shards.sources import InputTable, SourceError, list_inputs
from vmae.shards.stats import iter_sample_meta
from vmae.tools.cli import main

from conftest import make_video
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
    ("trainlist01.txt", "a\n", "UCF-101 split line"),
    ("list.txt", "a\n", r"list.txt:1: 1 field\(s\); expected mmaction2's video list: PATH LABEL"),
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


def run_main(capsys, *args) -> tuple[int, str]:
    """A `vmae` command as a user runs it: its exit code and what it printed on stderr."""
    code = main([str(a) for a in args])
    return code, capsys.readouterr().err


def test_mmaction2_video_lists_label_by_class_index_not_by_folder(tmp_path):
    touch(tmp_path / "videos" / "a.mp4")
    touch(tmp_path / "videos" / "b.mp4")
    (tmp_path / "kinetics400_train_list_videos.txt").write_text("videos/a.mp4 3\nvideos/b.mp4 0\n")
    table = list_inputs(tmp_path / "kinetics400_train_list_videos.txt")
    assert [(i.source, i.label_name) for i in table] == [("videos/a.mp4", "3"), ("videos/b.mp4", "0")]
    assert table.kind == "mmaction2-videos"
    plan = make_plan(table, seed=0)  # the class list runs 0..3: a sample's label is the list's index
    assert plan.classes == ["0", "1", "2", "3"]
    assert sorted((i.source, i.label) for i in plan.items) == [("videos/a.mp4", 3), ("videos/b.mp4", 0)]
    named = list_inputs(tmp_path / "kinetics400_train_list_videos.txt", classes=["abseiling", "b", "c", "zumba"])
    assert [i.label_name for i in named] == ["zumba", "abseiling"]
    with pytest.raises(SourceError, match=r"videos.txt:1: class index 3, but the --classes file names 2 classes"):
        list_inputs(tmp_path / "kinetics400_train_list_videos.txt", classes=["a", "b"])


def test_mmaction2_rawframe_lists_name_frame_folders(tmp_path):
    touch(tmp_path / "rawframes" / "archery" / "v_1" / "img_00001.jpg")
    (tmp_path / "ucf101_train_split_1_rawframes.txt").write_text("archery/v_1 1 5\n")
    [item] = list_inputs(tmp_path / "ucf101_train_split_1_rawframes.txt", root=tmp_path / "rawframes")
    assert item.path == tmp_path / "rawframes" / "archery" / "v_1" and item.label_name == "5"


def test_pyslowfast_csv_is_path_space_label(tmp_path):
    video = touch(tmp_path / "k400" / "abseiling" / "a.mp4")
    (tmp_path / "train.csv").write_text(f"{video} 7\n{tmp_path}/k400/gone.mp4 1\n")
    table = list_inputs(tmp_path / "train.csv")
    assert [(i.label_name, i.path is not None) for i in table] == [("7", True), ("1", False)]
    assert table.kind == "pyslowfast" and make_plan(table, seed=0).classes == [str(i) for i in range(8)]


@pytest.mark.parametrize("name, text, match", [
    ("train_list.txt", "videos/a.mp4 run\n", r"train_list.txt:1: label 'run' is not a class index"),
    ("l.txt", "a.mp4 1\n\nb.mp4 2 3\n", r"l.txt:3: 3 field\(s\) where line 1 has 2"),
    ("l.txt", "a.mp4 1 2\n", r"l.txt:1: a.mp4 with two numbers after it: a multi-label video list"),
    ("l.txt", "a 1 2 3\n", r"l.txt:1: 4 field\(s\)"),
    ("l.txt", "frames/a x 2\n", r"l.txt:1: TOTAL_FRAMES 'x' is not a whole number"),
    ("l.txt", "videos/a.mp4 -1\n", r"l.txt:1: label '-1' is not a class index"),
    ("trainlist01.txt", "videos/a.mp4 3\n", r"trainlist01.txt:1: a UCF-101 split line .* other than trainlistNN"),
    ("testlist02.txt", "YoYo/v_Fencing_g01_c01.avi\n", r"testlist02.txt:1: a UCF-101 split line"),
    ("train.csv", "/d/a.mp4 run\n", r"train.csv:1: label 'run' is not a class index; the list is PySlowFast"),
    ("train.csv", "/d/a.mp4 1\n/d/b.mp4\n", r"train.csv:2: 1 field\(s\); a CSV without a header is PySlowFast"),
])
def test_ambiguous_or_malformed_list_lines_are_refused_naming_the_line_and_format(tmp_path, capsys, name, text,
                                                                                  match):
    (tmp_path / name).write_text(text)
    code, err = run_main(capsys, "shards", "build", tmp_path / name, tmp_path / "out")
    assert code == 1 and re.search(match, err) and "Traceback" not in err, err
    assert len(err.strip().splitlines()) == 1 and not (tmp_path / "out").exists()


def test_ucf101_folder_case_may_differ_from_the_file_name(tmp_path):
    touch(tmp_path / "HandstandPushups" / "v_HandStandPushups_g01_c01.avi")
    (tmp_path / "testlist01.txt").write_text("HandstandPushups/v_HandStandPushups_g01_c01.avi\n")
    assert [i.label_name for i in list_inputs(tmp_path / "testlist01.txt")] == ["HandstandPushups"]


def test_a_listed_folder_that_is_no_video_is_rejected_as_such(tmp_path, capsys):
    touch(tmp_path / "clips" / "notes.txt")
    make_video(tmp_path / "v" / "a.mp4", 1.0, "160x120", 15)
    (tmp_path / "list.csv").write_text("path,label\nclips,run\ngone.mp4,run\nv/a.mp4,run\n")
    code, err = run_main(capsys, "shards", "build", tmp_path / "list.csv", tmp_path / "out", "--short-side", "64",
                         "shards.min_frames=8")
    assert code == 0, err
    rejects = {r["source"]: r for r in map(json.loads, (tmp_path / "out" / "rejects.jsonl").read_text().splitlines())}
    assert rejects["clips"]["reason"] == "not_a_video"
    assert "clips is a folder that is neither a video file nor a folder of extracted frames" in \
        rejects["clips"]["detail"]
    assert rejects["gone.mp4"]["reason"] == "missing_file"


@pytest.mark.parametrize("make, says", [
    (lambda p: p.mkdir(), "is a folder: give a text file with one class name per line"),
    (lambda p: None, "no such file; give a text file"),
    (lambda p: p.write_text("\n"), "names no class"),
    (lambda p: p.write_bytes(b"\xff\xfe\x00"), "is not UTF-8 text"),
])
def test_a_class_file_that_is_no_class_list_is_refused(tmp_path, capsys, make, says):
    touch(tmp_path / "in" / "run" / "a.mp4")
    make(tmp_path / "classes")
    code, err = run_main(capsys, "shards", "build", tmp_path / "in", tmp_path / "out", "--classes",
                         tmp_path / "classes")
    assert code == 1 and f"--classes {tmp_path / 'classes'}" in err and says in err and "Traceback" not in err
    assert not (tmp_path / "out").exists()


def test_an_mmaction2_list_builds_shards_whose_labels_are_its_indices(tmp_path, capsys):
    for name in ("a", "b"):
        make_video(tmp_path / "videos" / f"{name}.mp4", 1.0, "160x120", 15)
    (tmp_path / "train_list_videos.txt").write_text("videos/a.mp4 2\nvideos/b.mp4 0\n")
    (tmp_path / "classes.txt").write_text("archery\nbowling\ncurling\n")
    code, err = run_main(capsys, "shards", "build", tmp_path / "train_list_videos.txt", tmp_path / "out",
                         "--classes", tmp_path / "classes.txt", "--short-side", "64", "shards.min_frames=8")
    assert code == 0, err
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert manifest["classes"] == ["archery", "bowling", "curling"]
    assert manifest["class_counts"] == {"archery": 1, "bowling": 0, "curling": 1}
    labels = {meta["source"]: (meta["label"], meta["label_name"]) for _, meta in iter_sample_meta(
        tmp_path / "out", manifest)}
    assert labels == {"videos/a.mp4": (2, "curling"), "videos/b.mp4": (0, "archery")}
    assert manifest["card"]["input_kind"] == "mmaction2-videos"
