"""The sweep on a real SLURM: a one-node test cluster on this machine, the slurm workflow profile,
snakemake-executor-plugin-slurm.

Needs root (the cluster's daemons), the Debian packages slurm-wlm and munge (installed by
scripts/slurm_test_cluster.py where apt-get exists) and the plugin, importable either in this
interpreter (`pip install -e '.[slurm]'`) or in the venv named by $DIFFUSER_SLURM_VENV.

A sweep is a workflow directory (a `Sweep`); `tiny_sweep` is a two-cell stand-in that needs nothing
from the package, `project_sweep` is the project's own Snakefile. Both go through the same checks.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
CLUSTER_SCRIPT = ROOT / "scripts" / "slurm_test_cluster.py"
SLURM_PROFILE = ROOT / "workflow" / "profiles" / "slurm"
DAEMONS = ("munged", "slurmctld", "slurmd")
# the environment variables the profile reads; cleared so the caller's shell cannot change a run
PROFILE_VARIABLES = ("SLURM_PARTITION", "SLURM_ACCOUNT", "DIFFUSER_SLURM_GPUS", "DIFFUSER_SLURM_GPU_MODEL")
SUBMITTED = re.compile(r"Job (\d+) has been submitted with SLURM jobid (\d+) \(log: (.+?)\)")
FINISHED = re.compile(r"Finished jobid: (\d+) \(Rule: (\w+)\)")
LOCAL_RULE = re.compile(r"^localrule (\w+):", re.MULTILINE)
RULE_START = re.compile(r"^rule (\w+):", re.MULTILINE)
LOCAL_DIRECTIVE = re.compile(r"^\s+localrule:\s*True\b", re.MULTILINE)
ACTION_DIRECTIVE = re.compile(r"^\s+(shell|run|script|notebook|wrapper|cwl):", re.MULTILINE)
# a submission rejected by sbatch must end the run this fast, not after status polling
FAIL_FAST_SECONDS = 30

pytestmark = pytest.mark.slurm


@dataclass
class Sweep:
    """A workflow directory to run twice (locally, then on SLURM) and the results to compare."""

    directory: Path
    results: Callable[[Path], dict]  # directory -> {relative path: comparable content}
    timeout: float  # seconds for one snakemake run
    env: dict = field(default_factory=dict)
    local_rules: set[str] | None = None  # the rules meant to run on the submitting host; None: as declared
    args: tuple[str, ...] = ()  # more snakemake arguments, for both runs


# ---------------------------------------------------------------- interpreter with the plugin


def has_slurm_plugin(python: str) -> bool:
    probe = [python, "-c", "import snakemake, snakemake_executor_plugin_slurm"]
    return subprocess.run(probe, capture_output=True).returncode == 0


@pytest.fixture(scope="module")
def snakemake_python() -> str:
    """A Python whose `-m snakemake` has the slurm executor plugin."""
    if has_slurm_plugin(sys.executable):
        return sys.executable
    venv = os.environ.get("DIFFUSER_SLURM_VENV")
    if venv and has_slurm_plugin(str(Path(venv) / "bin" / "python")):
        return str(Path(venv) / "bin" / "python")
    pytest.skip(
        "snakemake-executor-plugin-slurm is not importable here: `pip install -e '.[slurm]'`, or set "
        "DIFFUSER_SLURM_VENV to a venv that has snakemake and the plugin"
    )


# ---------------------------------------------------------------- the test cluster


def cluster_command(command: str, state_dir: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(CLUSTER_SCRIPT), command, "--state-dir", str(state_dir)],
        capture_output=True,
        text=True,
        timeout=300,  # start may install packages
    )


def daemon_pids(state_dir: Path) -> dict[str, int]:
    files = {"munged": state_dir / "munge" / "munged.pid"}
    files.update({name: state_dir / f"{name}.pid" for name in ("slurmctld", "slurmd")})
    return {name: int(path.read_text()) for name, path in files.items() if path.exists()}


def runs_as(pid: int, daemon: str) -> bool:
    """True while `pid` is a live (not zombie) process of `daemon`."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        command = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[0].decode()
    except (FileNotFoundError, ProcessLookupError):
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z" and Path(command).name == daemon


def require_slurm_machine() -> None:
    if not sys.platform.startswith("linux") or os.geteuid() != 0:
        pytest.skip("the SLURM test cluster needs Linux and root (its daemons run as root and munge)")
    installed = all(shutil.which(name, path="/usr/sbin:/usr/bin") for name in DAEMONS)
    if not installed and shutil.which("apt-get") is None:
        pytest.skip("slurmctld, slurmd or munged is missing and apt-get is not available to install them")


def largest_request(profile: dict, resource: str) -> int:
    values = [profile["default-resources"][resource]]
    values += [rule[resource] for rule in profile["set-resources"].values() if resource in rule]
    return max(values)


@pytest.fixture(scope="module")
def slurm_cluster() -> dict:
    """A running one-node cluster: the environment that reaches it, and the daemons' pids."""
    require_slurm_machine()
    # not under pytest's tmp_path: its parents are private to root, and munged runs as munge
    parent = Path(tempfile.mkdtemp(prefix="diffuser-slurm-test-"))
    parent.chmod(0o755)
    state_dir = parent / "state"
    started = cluster_command("start", state_dir)
    try:
        if started.returncode != 0:
            pytest.fail(f"the SLURM test cluster did not start: {started.stderr}")
        env = {key: value for key, value in os.environ.items() if key not in PROFILE_VARIABLES}
        env.update(SLURM_CONF=str(state_dir / "slurm.conf"), DIFFUSER_SLURM_GPUS="0")
        node = subprocess.run(
            ["scontrol", "show", "node", "localhost"], capture_output=True, text=True, env=env
        )
        cpus = int(re.search(r"CPUTot=(\d+)", node.stdout)[1])
        memory = int(re.search(r"RealMemory=(\d+)", node.stdout)[1])
        profile = yaml.safe_load((SLURM_PROFILE / "config.yaml").read_text())
        if cpus < largest_request(profile, "cpus_per_task") or memory < largest_request(profile, "mem_mb"):
            pytest.skip(f"this machine ({cpus} CPUs, {memory} MB) is smaller than a job of the slurm profile")
        yield {"state_dir": state_dir, "env": env, "pids": daemon_pids(state_dir)}
    finally:
        cluster_command("stop", state_dir)
        shutil.rmtree(parent)


# ---------------------------------------------------------------- sweeps

TINY_SNAKEFILE = r'''
import sys

PYTHON = sys.executable
CELLS = {"seed~1": 1, "seed~2": 2}


rule all:
    input:
        "results/summary.json",


rule train:
    output:
        result="results/cells/{cell}/result.json",
        slurm_job="results/cells/{cell}/slurm_job_id.txt",
    params:
        seed=lambda wildcards: CELLS[wildcards.cell],
    shell:
        """
        {PYTHON} -c 'import json, random, sys; random.seed(int(sys.argv[1])); json.dump({{"seed": int(sys.argv[1]), "score": sum(random.random() for _ in range(1000))}}, open(sys.argv[2], "w"))' {params.seed} {output.result}
        echo "${{SLURM_JOB_ID:-none}}" > {output.slurm_job}
        """


rule aggregate:
    input:
        expand("results/cells/{cell}/result.json", cell=CELLS),
    output:
        "results/summary.json",
    shell:
        """
        {PYTHON} -c 'import json, sys; json.dump([json.load(open(path)) for path in sys.argv[2:]], open(sys.argv[1], "w"))' {output} {input}
        """
'''


def json_results(directory: Path) -> dict:
    return {
        str(path.relative_to(directory)): json.loads(path.read_text())
        for path in directory.glob("results/**/*.json")
    }


@pytest.fixture
def tiny_sweep(tmp_path) -> Sweep:
    """Two cells that each write a seeded number, and an aggregate: rules named as in the project."""
    (tmp_path / "Snakefile").write_text(TINY_SNAKEFILE)
    shutil.copytree(SLURM_PROFILE, tmp_path / "workflow" / "profiles" / "slurm")
    return Sweep(directory=tmp_path, results=json_results, timeout=240, local_rules={"all"})


def project_cli_works(python: str) -> bool:
    help_call = subprocess.run(
        [python, "-m", "diffuser", "train", "--help"],
        capture_output=True,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        cwd=ROOT,
    )
    return help_call.returncode == 0 and (ROOT / "Snakefile").exists()


# evaluation fields that depend only on the trained policy (not on timing or paths)
EVAL_FIELDS = (
    "step",
    "num_episodes",
    "returns",
    "normalized_scores",
    "mean_normalized_score",
    "success_rate",
)


def evaluation_results(directory: Path) -> dict:
    results = {}
    for path in directory.glob("results/**/eval.json"):
        evaluation = json.loads(path.read_text())
        results[str(path.relative_to(directory))] = {key: evaluation.get(key) for key in EVAL_FIELDS}
    return results


# what a fresh checkout does not have: environments, caches, outputs of earlier runs
CHECKOUT_LEFT_OUT = (
    ".git",
    ".venv",
    ".snakemake",
    "results",
    "data",
    "__pycache__",
    "*.egg-info",
    ".*_cache",
)


# The default spec's 4 cells (offline and online, 2 seeds), shrunk so each job takes seconds.
PROJECT_TINY_CONFIG = (
    "--config", "dataset_steps=3000", "vae_pretrain_steps=20", "n_train_steps=60", "hidden_dim=32",
    "vae_latent_dim=4", "trajectory_latent_dim=16", "batch_size=16", "n_diffusion_steps=10", "n_sampling_steps=3",
    "n_action_samples=2", "log_freq=10", "save_freq=30", "eval_freq=1000", "num_eval=2", "rl_warmup_steps=20",
    "rl_collect_freq=20", "rl_collect_steps=10", "rl_update_freq=10",
)


@pytest.fixture
def project_sweep(tmp_path, snakemake_python) -> Sweep:
    """The project's Snakefile, rules and default config, run in a copy of the checkout."""
    if not project_cli_works(snakemake_python):
        pytest.skip(
            f"the project's workflow is not ready: no Snakefile, or `{snakemake_python} -m diffuser train "
            "--help` fails (the interpreter with the slurm plugin must also have the project's dependencies)"
        )
    checkout = tmp_path / "checkout"
    shutil.copytree(ROOT, checkout, ignore=shutil.ignore_patterns(*CHECKOUT_LEFT_OUT))
    # one thread everywhere, so a cell trains the same whether SLURM or the local scheduler runs it
    env = {"PYTHONPATH": str(checkout), "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    return Sweep(directory=checkout, results=evaluation_results, timeout=600, env=env, args=PROJECT_TINY_CONFIG)


@pytest.fixture(params=["tiny", pytest.param("project", marks=pytest.mark.slow)])
def sweep(request) -> Sweep:
    return request.getfixturevalue(f"{request.param}_sweep")


# ---------------------------------------------------------------- running snakemake


def run_snakemake(python: str, sweep: Sweep, env: dict, *args: str) -> subprocess.CompletedProcess:
    path = f"{Path(python).parent}{os.pathsep}{env.get('PATH', '')}"
    return subprocess.run(
        [python, "-m", "snakemake", "--nocolor", *args, *sweep.args],
        cwd=sweep.directory,
        env={**env, **sweep.env, "PATH": path},
        capture_output=True,
        text=True,
        timeout=sweep.timeout,
    )


def run_on_slurm(python: str, sweep: Sweep, env: dict) -> subprocess.CompletedProcess:
    """The command docs/slurm.md gives users, with the first status check after 1 s instead of 10."""
    return run_snakemake(
        python,
        sweep,
        env,
        "--executor",
        "slurm",
        "--workflow-profile",
        "workflow/profiles/slurm",
        "--jobs",
        "2",
        "--slurm-init-seconds-before-status-checks",
        "1",
    )


def run_locally(python: str, sweep: Sweep, env: dict) -> subprocess.CompletedProcess:
    return run_snakemake(python, sweep, env, "--cores", "2")


def declared_local_rules(directory: Path) -> set[str]:
    """The rules that run on the submitting host, never through sbatch: those marked `localrule: True`
    and those with nothing to run (target rules such as `all`, which Snakemake never submits)."""
    local = set()
    for path in [directory / "Snakefile", *directory.glob("workflow/rules/*.smk")]:
        if not path.is_file():
            continue
        text = path.read_text()
        starts = list(RULE_START.finditer(text))
        for start, following in zip(starts, [*starts[1:], None][: len(starts)], strict=True):
            block = text[start.end() : following.start() if following else len(text)]
            if LOCAL_DIRECTIVE.search(block) or not ACTION_DIRECTIVE.search(block):
                local.add(start[1])
    return local


def clear_outputs(directory: Path) -> None:
    for name in ("results", "data", ".snakemake"):
        shutil.rmtree(directory / name, ignore_errors=True)


def output_of(run: subprocess.CompletedProcess) -> str:
    return run.stdout + run.stderr


# ---------------------------------------------------------------- tests


def test_sweep_on_slurm_runs_every_job_as_a_slurm_job_with_local_results(
    sweep, slurm_cluster, snakemake_python
):
    env = slurm_cluster["env"]
    local = run_locally(snakemake_python, sweep, env)
    assert local.returncode == 0, output_of(local)
    local_results = sweep.results(sweep.directory)
    assert local_results, "the local run wrote no results to compare"
    clear_outputs(sweep.directory)

    on_slurm = run_on_slurm(snakemake_python, sweep, env)
    log = output_of(on_slurm)
    assert on_slurm.returncode == 0, log

    submitted = {int(job): int(slurm_job) for job, slurm_job, _ in SUBMITTED.findall(log)}
    finished = {int(job): rule for job, rule in FINISHED.findall(log)}
    # a job with a `message:` is logged by its message, not as "localrule NAME:"
    local_rules = set(LOCAL_RULE.findall(log)) | declared_local_rules(sweep.directory)
    if sweep.local_rules is not None:
        assert local_rules == sweep.local_rules
    remote_jobs = {job for job, rule in finished.items() if rule not in local_rules}
    assert remote_jobs, log
    assert remote_jobs <= set(submitted), (
        f"jobs that did not go through sbatch: {remote_jobs - set(submitted)}"
    )
    local_jobs = {job for job, rule in finished.items() if rule in local_rules}
    assert not local_jobs & set(submitted), f"local jobs that went through sbatch: {local_jobs & set(submitted)}"
    assert len(set(submitted.values())) == len(submitted), "two jobs share a SLURM job id"
    for slurm_log in (match[2] for match in SUBMITTED.findall(log)):
        assert Path(slurm_log).is_file() and "Finished jobid" in Path(slurm_log).read_text()
    slurm_job_ids = {str(slurm_job) for slurm_job in submitted.values()}
    for marker in sweep.directory.glob("results/cells/*/slurm_job_id.txt"):
        assert marker.read_text().strip() in slurm_job_ids, f"{marker} was not written inside a SLURM job"

    assert sweep.results(sweep.directory) == local_results


@pytest.mark.parametrize(
    ("profile_env", "expected_output"),
    [
        ({"SLURM_PARTITION": "no_such_partition"}, ["invalid partition specified: no_such_partition"]),
        # the profile's default of one GPU per training job, with a model, on a node without GPUs
        (
            {"DIFFUSER_SLURM_GPUS": None, "DIFFUSER_SLURM_GPU_MODEL": "a100"},
            ["--gpus=a100:1", "Invalid generic resource"],
        ),
    ],
    ids=["unknown-partition", "gpu-on-gpu-less-node"],
)
def test_request_the_scheduler_refuses_fails_fast_with_its_message(
    tiny_sweep, slurm_cluster, snakemake_python, profile_env, expected_output
):
    env = {**slurm_cluster["env"], **profile_env}
    env = {key: value for key, value in env.items() if value is not None}
    started = time.monotonic()
    run = run_on_slurm(snakemake_python, tiny_sweep, env)
    seconds = time.monotonic() - started
    assert run.returncode != 0
    for text in expected_output:
        assert text in output_of(run), output_of(run)
    assert seconds < FAIL_FAST_SECONDS


def test_cluster_start_and_stop_are_idempotent_and_leave_no_daemon(slurm_cluster):
    state_dir, pids = slurm_cluster["state_dir"], slurm_cluster["pids"]
    assert sorted(pids) == sorted(DAEMONS)
    assert all(runs_as(pid, name) for name, pid in pids.items())

    again = cluster_command("start", state_dir)
    assert again.returncode == 0 and "already running" in again.stderr
    assert daemon_pids(state_dir) == pids

    assert cluster_command("stop", state_dir).returncode == 0
    left = {name: pid for name, pid in pids.items() if runs_as(pid, name)}
    assert not left, f"daemons still running after stop: {left}"
    assert not state_dir.exists()
    assert cluster_command("stop", state_dir).returncode == 0
    assert cluster_command("status", state_dir).returncode == 1
