# Config loading, sweep cells, paths, input functions, wildcard constraints and job resources.
#
# Which spec runs (diffuser.config.load_workflow_spec):
#   snakemake ...                                  config/config.yaml
#   snakemake ... --config spec=path/to/spec.yaml  that spec (the seed's meta_data/constants/variables)
#   snakemake ... --configfile path/to/spec.yaml   the same (it replaces config/config.yaml, not merged)
# Overrides, more --config entries:
#   seed=7 n_train_steps=500                       set constants; a swept key given here is pinned
#   exp_name=quick num_workers=2                   set meta_data keys
#   'variables={seed: [1, 2, 3]}'                  sweep a key over these values
#   'constants={hidden_dim: 64, batch_size: 128}'  several constants at once
# Every key is checked before any job starts (diffuser/schemas/*.schema.yaml).
import hashlib
import json
import os
import re
import shlex
import sys
from pathlib import Path

from snakemake.exceptions import WorkflowError

from diffuser.config import ConfigError, load_workflow_spec, needs_vae_pretraining, vae_config, vae_key
from diffuser.datasets.prepare import dataset_key_of, processed_path, resolve_source
from diffuser.errors import WorkflowLocked
from diffuser.runtime.gpu_pool import pool_ids, unmet_gpu_resources_note
from diffuser.runtime.workflow_lock import clear_stale_locks

DEFAULT_SPEC = "config/config.yaml"
DATA_DIR = "data"
# the interpreter running Snakemake also runs the jobs, so an unactivated venv works
PYTHON = shlex.quote(sys.executable)

try:
    SPEC = load_workflow_spec(DEFAULT_SPEC, workflow.config_settings.config, workflow.config_settings.configfiles)
except ConfigError as err:
    raise WorkflowError(f"The experiment spec is not valid. {err}") from None

EXP = SPEC.exp_name
RESULTS = f"results/{EXP}"
LOGS = f"logs/{EXP}"

# A run killed with SIGKILL (OOM killer, lost node, kill -9) leaves Snakemake's lock behind; the
# same command removes it when no live Snakemake works here (diffuser/runtime/workflow_lock.py).
# Only the main process: jobs that parse the Snakefile again run under the main one's lock.
if workflow.is_main_process:
    try:
        if note := clear_stale_locks(os.getcwd(), (f"{RESULTS}/", f"{LOGS}/")):
            print(note, file=sys.stderr)
    except WorkflowLocked as err:
        raise WorkflowError(str(err)) from None

# a job's `gpu` resource: meta_data.gpus_per_job where the pool has GPUs, 0 on a CPU-only machine
# (the SLURM profile sets its own from DIFFUSER_SLURM_GPUS)
GPUS_PER_JOB = SPEC.meta_data["gpus_per_job"] if pool_ids() else 0
if workflow.is_main_process and (note := unmet_gpu_resources_note(workflow.global_resources.get("gpu"))):
    print(note, file=sys.stderr)
THREADS_PER_JOB = SPEC.meta_data["threads_per_job"]
# the GPU pool's slots per GPU (diffuser/runtime/gpu_pool.py), given to the train and evaluate jobs
JOBS_PER_GPU = SPEC.meta_data["jobs_per_gpu"]

CELLS = {cell.name: cell.config for cell in SPEC.cells()}
VAES = {vae_key(config): vae_config(config) for config in CELLS.values() if needs_vae_pretraining(config)}
# dataset key (its directory under data/processed/, naming a generated one's settings) -> a cell config using it
DATASETS = {dataset_key_of(config): config for config in CELLS.values()}


def alternatives(names):
    """A regex matching exactly these names (a never-matching one for none)."""
    return "|".join(re.escape(name) for name in sorted(names)) or "(?!)"


wildcard_constraints:
    cell=alternatives(CELLS),
    vae=alternatives(VAES),
    dataset=alternatives(DATASETS),


# ------------------------------------------------------------------------------------- paths


def dataset_path(name, dataset="{dataset}"):
    """A file of data/processed/<dataset key>/."""
    return f"{processed_path(dataset, DATA_DIR)}/{name}"


def cell_path(name, cell="{cell}"):
    return f"{RESULTS}/cells/{cell}/{name}"


def vae_path(name, vae="{vae}"):
    return f"{RESULTS}/vae/{vae}/{name}"


def log_path(rule, wildcard):
    return f"{LOGS}/{rule}/{{{wildcard}}}.log"


def benchmark_path(rule, wildcard):
    return f"{LOGS}/benchmarks/{rule}/{{{wildcard}}}.tsv"


def dataset_files(dataset):
    return [dataset_path("episodes.npz", dataset), dataset_path("metadata.json", dataset)]


# A settings marker is an empty file named by a digest of some settings (a cell's config, the whole
# spec). Snakemake notices changed params only through its records in .snakemake/, which a fresh
# clone (after `dvc pull`) does not have; a changed setting also changes the marker's name, so the
# file that depends on it is rewritten in any checkout.
def digest(settings):
    return hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:8]


def settings_marker_path(cell):
    return f"{RESULTS}/cells/{cell}/.settings-{digest(CELLS[cell])}"


def cell_settings_marker(wildcards):
    return settings_marker_path(wildcards.cell)


SPEC_MARKER = f"{RESULTS}/cells/.spec-{digest(SPEC.as_dict())}"


def as_json(settings):
    return json.dumps(settings, sort_keys=True)


def stale_markers(wildcards, output):
    """The other markers beside `output` (older settings), deleted when it is written."""
    marker = Path(output[0])
    prefix = marker.name.rsplit("-", 1)[0]
    return f"{shlex.quote(str(marker.parent))}/{prefix}-*"


# --------------------------------------------------------------------------- input functions


def dataset_source(wildcards):
    """A D4RL dataset's raw HDF5 file; generated and Minari datasets have no file to wait for."""
    config = DATASETS[wildcards.dataset]
    source = resolve_source(
        config["dataset"], DATA_DIR, config["dataset_steps"], config["dataset_action_noise"], config["dataset_seed"]
    )
    return [str(source.path)] if source.kind == "d4rl" else []


def generation(key):
    return lambda wildcards: DATASETS[wildcards.dataset][key]


def vae_inputs(wildcards):
    return {"config": vae_path("config.yaml", wildcards.vae), "dataset": dataset_files(dataset_key_of(VAES[wildcards.vae]))}


def train_inputs(wildcards):
    config = CELLS[wildcards.cell]
    inputs = {"config": cell_path("config.yaml", wildcards.cell), "dataset": dataset_files(dataset_key_of(config))}
    if needs_vae_pretraining(config):
        inputs["vae"] = vae_path("vae.pt", vae_key(config))
    return inputs


def vae_argument(wildcards, input):
    return f"--vae {shlex.quote(input.vae)}" if "vae" in input.keys() else ""


def data_dir_of(output_name):
    """The data directory, from an output of data/processed/<dataset key>/ (so the lint sees it derived);
    a Minari key (minari:<namespace>/<name>) holds slashes, so count its parts."""
    return lambda wildcards, output: str(Path(output[output_name]).parents[len(Path(wildcards.dataset).parts) + 1])


def run_dir(wildcards):
    return f"{RESULTS}/cells/{wildcards.cell}"


def cell_threads(wildcards):
    return CELLS[wildcards.cell]["num_threads"] or THREADS_PER_JOB


# ---------------------------------------------------------------------------- targets


def all_dataset_files():
    return [path for dataset in DATASETS for path in dataset_files(dataset)]


def all_cell_files():
    # the markers are targets too: Snakemake only builds a missing input of a job it already runs
    files = [cell_path(name, cell) for cell in CELLS for name in ("config.yaml", "final.pt", "eval.json")]
    return files + [settings_marker_path(cell) for cell in CELLS] + [SPEC_MARKER]


def report_files():
    return [f"{RESULTS}/spec.yaml", f"{RESULTS}/summary.csv", f"{RESULTS}/summary.json", f"{RESULTS}/figures"]


def all_outputs():
    return all_dataset_files() + all_cell_files() + report_files()
