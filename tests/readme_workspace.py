"""The README's command lines, and the folders they run in: a copy of the repository root where `make demo` has
run (its runs/demo is what later lines read) and an empty temporary folder, with small copies, in their real
formats, of the datasets the lines name. Shared by tests/test_readme_commands.py (every line) and the sanity-check
tests of tests/test_pretrain.py (the demo data and the documented `--overfit` run)."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

from vmae.shards.config import SynthConfig
from vmae.shards.encode import ffmpeg_exe
from vmae.shards.synth import make_synthetic_videos

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
STANDINS = Path(__file__).resolve().parent / "cluster"
BIN = ROOT / ".venv" / "bin"
DRY_RUN_SENTENCE = "`--dry-run` added to any"


@dataclass
class Block:
    heading: str  # the section (### or ##) the block is in
    lines: list[str]  # command lines, continuations joined, comments kept
    dry_run: bool  # the README says these lines take --dry-run (GPU and cluster launches)

    @property
    def id(self) -> str:
        return self.heading + (" (GPUs)" if self.dry_run else "")


def readme_blocks() -> list[Block]:
    blocks, heading = [], ""
    text = README.read_text()
    for match in re.finditer(r"^(#{2,3}) ([^\n]+)$|^```bash\n(.*?)^```", text, flags=re.M | re.S):
        if match.group(2):
            heading = match.group(2)
            continue
        before = text[:match.start()].rsplit("\n\n", 2)[-2]  # the paragraph above the block
        lines = [line for line in match.group(3).replace("\\\n", " ").splitlines() if line.strip()]
        blocks.append(Block(heading, lines, DRY_RUN_SENTENCE in before))
    return blocks


def command(line: str) -> str:
    """A line without its trailing comment (a `#` after two spaces: none of the commands has one)."""
    return re.split(r"\s{2,}#\s", line)[0].strip()


# ---------------------------------------------------------------------------------------------- the folders

@dataclass
class Workspace:
    root: Path  # a copy of the repository root
    elsewhere: Path  # an empty temporary folder (but for the stand-in datasets and links to runs/demo, data)
    env: dict
    demo: Ran | None = None  # `make demo`, run from the root
    runs: dict[str, Ran] = field(default_factory=dict)  # lines already run (and checked by whoever asks), by line

    def run_once(self, line: str, folder: Path) -> Ran:
        """``line`` from ``folder``, run the first time it is asked for (a sanity check run twice into the same
        --out finds nothing left to do)."""
        key = f"{folder}: {line}"
        if key not in self.runs:
            [self.runs[key]] = run_block([line], folder, self.env)
        return self.runs[key]


def readme_line(heading: str, starts: str) -> str:
    """The README line under ``heading`` that starts with ``starts``."""
    return next(line for block in readme_blocks() if block.heading == heading for line in block.lines
                if command(line).startswith(starts))


def make_workspace(tmp_path_factory) -> Workspace:
    """Both folders, the datasets the README names, and `make demo` run from the root as the README says."""
    root = copy_of_the_repository(tmp_path_factory.mktemp("root") / "vmae")
    elsewhere = tmp_path_factory.mktemp("elsewhere")
    lay_out_named_datasets(elsewhere, tmp_path_factory.mktemp("sources"))
    for name in ("runs", "data"):
        (root / name).mkdir()
    (elsewhere / "runs").mkdir()
    (elsewhere / "runs" / "demo").symlink_to(root / "runs" / "demo", target_is_directory=True)
    for name in ("data", "kinetics400", "k400"):  # the GPU and SLURM lines, run from the root, read these
        (root / name).rmdir() if (root / name).is_dir() else None
        (root / name).symlink_to(elsewhere / name, target_is_directory=True)
    (elsewhere / "data").mkdir(exist_ok=True)
    env = {**os.environ, "PATH": f"{STANDINS}:{BIN}:{os.environ['PATH']}", "COLUMNS": "120",
           "STANDIN_STATE": str(tmp_path_factory.mktemp("jobs"))}
    env.pop("PYTHONPATH", None)
    workspace = Workspace(root, elsewhere, env)
    [workspace.demo] = run_block([readme_line("Quick start", "make demo")], root, env)
    return workspace


def copy_of_the_repository(copy: Path) -> Path:
    """The tracked files with their times (so make finds .venv up to date), and the same .venv."""
    files = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True).stdout
    for name in filter(None, files.decode().split("\0")):
        target = copy / name
        target.parent.mkdir(parents=True, exist_ok=True)
        if (ROOT / name).is_file():
            shutil.copy2(ROOT / name, target)
    (copy / ".venv").symlink_to(ROOT / ".venv", target_is_directory=True)
    stamp = ROOT / ".venv" / ".installed"
    assert stamp.is_file(), "run `make setup` first: the README's commands run in its .venv"
    os.utime(stamp)  # newer than the copies: make must find the set-up done
    return copy


KINETICS = {"abseiling": 2, "air drumming": 2, "zumba": 2}  # class → clips
SSV2 = {"Putting [something] into [something]": 2, "Pushing [something] from left to right": 2}
HMDB = {"brush_hair": (2, 1), "cartwheel": (2, 1)}  # class → (train, test) videos
UCF = ("ApplyEyeMakeup", "Archery")  # 2 frame folders each in trainlist01


def lay_out_named_datasets(folder: Path, scratch: Path) -> None:
    """The inputs the README's build lines name, in their real formats: a few 3-second videos each."""
    make_synthetic_videos(scratch, SynthConfig(classes=4, videos_per_class=6, seconds=3.0, width=160, height=120,
                                               workers=2))
    sources = iter(sorted(scratch.rglob("*.mp4")))

    rows, listed = ["label,youtube_id,time_start,time_end,split"], []
    for c, (label, clips) in enumerate(KINETICS.items()):
        for i in range(clips):
            name = f"yt{c}{i}abcdefg"
            stem = f"{name}_{10 * i:06d}_{10 * i + 10:06d}"
            copy(next(sources), folder / "k400" / "train" / f"{stem}.mp4")
            rows.append(f"{label},{name},{10 * i},{10 * i + 10},train")
            listed.append(f"{stem}.mp4 {c}")
    write(folder / "kinetics400" / "train.csv", rows)
    write(folder / "kinetics400_train_list_videos.txt", listed)
    write(folder / "label_map_k400.txt", list(KINETICS))

    entries, n = [], 100
    for template, clips in SSV2.items():
        for _ in range(clips):
            n += 1
            encode(next(sources), folder / "ssv2" / "20bn-something-something-v2" / f"{n}.webm",
                   "-c:v", "libvpx-vp9", "-deadline", "realtime", "-cpu-used", "8")
            entries.append({"id": str(n), "label": template.replace("[something]", "a cup"), "template": template,
                            "placeholders": ["a cup"]})
    write(folder / "ssv2" / "something-something-v2-train.json", [json.dumps(entries)])

    for label, (train, test) in HMDB.items():
        lines = []
        for i in range(train + test):
            name = f"{label}_clip_{i}.avi"
            encode(next(sources), folder / "hmdb51" / "videos" / label / name, "-c:v", "mpeg4", "-q:v", "4")
            lines.append(f"{name} {1 if i < train else 2}")
        write(folder / "hmdb51" / "splits" / f"{label}_test_split1.txt", lines)

    lines = []
    for label in UCF:
        for g in (1, 2):
            video = f"{label}/v_{label}_g{g:02d}_c01"
            frames = folder / "ucf101" / "rawframes" / video
            frames.mkdir(parents=True)
            subprocess.run([ffmpeg_exe(), "-v", "error", "-i", str(next(sources)), "-r", "25", "-q:v", "3",
                            str(frames / "img_%05d.jpg")], check=True)
            lines.append(f"{video}.avi {UCF.index(label) + 1}")
    write(folder / "ucfTrainTestlist" / "trainlist01.txt", lines)


def copy(source: Path, target: Path) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(source, target)


def encode(source: Path, target: Path, *codec: str) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    subprocess.run([ffmpeg_exe(), "-v", "error", "-i", str(source), *codec, str(target)], check=True)


def write(path: Path, lines: list[str]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n")


# ------------------------------------------------------------------------------------------ running a block

@dataclass
class Ran:
    line: str
    code: int
    output: str


def run_block(lines: list[str], folder: Path, env: dict, extra: str = "") -> list[Ran]:
    """The lines in one bash from ``folder``, each line's exit status and output kept apart; ``extra`` is added
    to every line (``--dry-run``)."""
    script = []
    for i, line in enumerate(lines):
        script += [f"echo '@@@ start {i}'", f"{command(line)}{extra} 2>&1", f"echo \"@@@ end {i} $?\""]
    proc = subprocess.run(["bash", "-c", "\n".join(script)], cwd=folder, env=env, stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True, check=False)
    found = re.findall(r"@@@ start (\d+)\n(.*?)@@@ end \1 (\d+)\n", proc.stdout, flags=re.S)
    assert len(found) == len(lines), proc.stdout[-3000:]
    return [Ran(lines[int(i)], int(code), output) for i, output, code in found]
