"""Stand-ins for a cluster's launchers on one machine, so that the README's cluster lines run as written in a test.

Each parses its command line with the real launcher's parser where one can be imported (torchrun's, DeepSpeed's)
and starts what the launcher would start once, as rank 0 of the world the line describes, with the variables that
launcher sets. ``sbatch`` runs a job at once (array tasks one after another) and returns the job's exit status, so
a failed job fails the test; its output goes to stderr, stdout carrying only what ``--parsable`` prints.
``srun`` starts task 0 of the allocation; ``scontrol show hostnames`` expands a node list.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

# job ids handed out and their exit status, kept beside the jobs so that --dependency=afterok can be honoured
STATE = Path(os.environ.get("STANDIN_STATE", ".standin-jobs"))


def run(command: list[str], env: dict[str, str]) -> int:
    """Start ``command`` with ``env`` added, its output on stderr."""
    return subprocess.run(command, env={**os.environ, **env}, stdout=sys.stderr, check=False).returncode


def torchrun(argv: list[str]) -> int:
    from torch.distributed.run import get_args_parser

    args = get_args_parser().parse_args(argv)
    nodes, per_node = int(str(args.nnodes).split(":")[-1]), int(args.nproc_per_node)
    env = {"WORLD_SIZE": str(nodes * per_node), "RANK": str(args.node_rank * per_node), "LOCAL_RANK": "0",
           "LOCAL_WORLD_SIZE": str(per_node), "GROUP_RANK": str(args.node_rank), "MASTER_ADDR": args.master_addr,
           "MASTER_PORT": str(args.master_port or 29500), "TORCHELASTIC_RUN_ID": "stand-in"}
    target = ["-m", args.training_script] if args.module else [args.training_script]
    return run([sys.executable, *target, *args.training_script_args], env)


def deepspeed(argv: list[str]) -> int:
    os.environ.setdefault("DS_ACCELERATOR", "cpu")
    from deepspeed.launcher.runner import fetch_hostfile, parse_args

    args = parse_args(argv)
    hosts = fetch_hostfile(args.hostfile) or {"localhost": max(args.num_gpus, 1)}
    if args.num_nodes > 0:
        hosts = dict(list(hosts.items())[:args.num_nodes])
    env = {"WORLD_SIZE": str(sum(hosts.values())), "RANK": "0", "LOCAL_RANK": "0",
           "MASTER_ADDR": args.master_addr or next(iter(hosts)), "MASTER_PORT": str(args.master_port)}
    target = ["-m", args.user_script] if args.module else [args.user_script]
    return run([sys.executable, *target, *args.user_args], env)


def sbatch(argv: list[str]) -> int:
    options, rest = _sbatch_options(argv)
    script = Path(rest[0]) if rest else None
    if script is not None:
        options = {**_sbatch_options(_directives(script))[0], **options}  # the command line wins
    if "dependency" in options:
        _check_dependency(options["dependency"])
    job = _new_job_id()
    nodes, per_node = int(options.get("nodes", 1)), int(options.get("ntasks-per-node", 1))
    env = {"SLURM_JOB_ID": str(job), "SLURM_JOB_NODELIST": f"node[001-{nodes:03d}]", "SLURM_NNODES": str(nodes),
           "SLURM_NTASKS": str(nodes * per_node), "SLURM_CPUS_PER_TASK": options.get("cpus-per-task", "1"),
           "SLURM_PROCID": "0"}
    command = ["bash", "-c", options["wrap"]] if "wrap" in options else ["bash", str(script), *rest[1:]]
    tasks = _array(options["array"]) if "array" in options else [None]
    status = 0
    for task in tasks:
        extra = {} if task is None else {"SLURM_ARRAY_JOB_ID": str(job), "SLURM_ARRAY_TASK_ID": str(task),
                                         "SLURM_ARRAY_TASK_COUNT": str(len(tasks)),
                                         "SLURM_ARRAY_TASK_MIN": str(tasks[0]), "SLURM_ARRAY_TASK_MAX": str(tasks[-1])}
        status = status or run(command, {**env, **extra})
    _record(job, status)
    print(job if "parsable" in options else f"Submitted batch job {job}")
    return status


def srun(argv: list[str]) -> int:
    options = 0
    while options < len(argv) and argv[options].startswith("--"):  # srun's own options, --key=value here
        options += 1
    command = argv[options:]
    env = {"SLURM_PROCID": "0", "SLURM_LOCALID": "0", "SLURM_NTASKS": os.environ.get("SLURM_NTASKS", "1")}
    return run(command, env)


def scontrol(argv: list[str]) -> int:
    if argv[:2] != ["show", "hostnames"]:
        print(f"scontrol stand-in: only 'show hostnames' is known, got {argv}", file=sys.stderr)
        return 2
    match = re.fullmatch(r"(\w+)\[(\d+)-(\d+)\]", argv[2])
    if not match:
        print(argv[2])
        return 0
    prefix, first, last = match.group(1), match.group(2), int(match.group(3))
    for n in range(int(first), last + 1):
        print(f"{prefix}{n:0{len(first)}d}")
    return 0


def _sbatch_options(argv: list[str]) -> tuple[dict[str, str], list[str]]:
    """``--key=value``, ``--key value`` and ``--flag`` options up to the script; then the script and its args."""
    options: dict[str, str] = {}
    i = 0
    while i < len(argv) and argv[i].startswith("--"):
        key, _, value = argv[i][2:].partition("=")
        if not value and key not in ("parsable", "requeue") and i + 1 < len(argv):
            i, value = i + 1, argv[i + 1]
        options[key] = value
        i += 1
    return options, argv[i:]


def _directives(script: Path) -> list[str]:
    return [word for line in script.read_text().splitlines() if line.startswith("#SBATCH ")
            for word in shlex.split(line[len("#SBATCH "):])]


def _array(spec: str) -> list[int]:
    first, _, last = spec.split("%")[0].partition("-")
    return list(range(int(first), int(last or first) + 1))


def _new_job_id() -> int:
    STATE.mkdir(exist_ok=True)
    return 1000 + len(list(STATE.glob("*.status")))


def _record(job: int, status: int) -> None:
    (STATE / f"{job}.status").write_text(str(status))


def _check_dependency(spec: str) -> None:
    kind, _, jobs = spec.partition(":")
    if kind != "afterok":
        sys.exit(f"sbatch stand-in: only afterok dependencies are known, got {spec}")
    for job in jobs.split(":"):
        record = STATE / f"{job}.status"
        if not record.is_file() or record.read_text() != "0":
            sys.exit(f"sbatch stand-in: job {job} did not end well (dependency {spec} never satisfied)")
