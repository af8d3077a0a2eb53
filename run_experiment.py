"""Run every cell of an experiment spec, as the seed's `python run_experiment.py -e SPEC -g GPU` did.

The sweep runs through the project's Snakemake workflow (the same jobs as `snakemake --config
spec=SPEC`): finished cells are not redone, an interrupted one resumes from its checkpoint, and
at most `meta_data.num_workers` jobs run at once.

  python run_experiment.py -e config/vae_diffusion_rl_example.yaml -g 0      # GPU 0
  python run_experiment.py -e config/config.yaml -g 0,1                      # GPUs 0 and 1, one per job
  python run_experiment.py -e config/config.yaml -g -1                       # CPU only
  python run_experiment.py -e config/config.yaml -n                          # show the jobs, run nothing
  python run_experiment.py -e SPEC -g 0 -- --forceall                        # more snakemake options
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent
PROFILE = "workflow/profiles/default"


def gpu_ids(gpu: str | None) -> list[str] | None:
    """`-g` as a list of GPU ids: [] for -1 (CPU), None when not given (every GPU of the machine)."""
    if gpu is None:
        return None
    ids = [part.strip() for part in gpu.split(",") if part.strip()]
    if ids == ["-1"]:
        return []
    if not ids or not all(part.isdigit() for part in ids):
        raise SystemExit(f"error: -g {gpu!r}: give a GPU number (0), a list (0,1) or -1 for the CPU.")
    return ids


def snakemake_command(spec_path: Path, num_workers: int, gpus: list[str] | None, cores: int,
                      dry_run: bool, extra: list[str]) -> list[str]:
    command = [
        sys.executable, "-m", "snakemake",
        "--snakefile", str(ROOT / "Snakefile"),
        "--directory", str(ROOT),
        "--workflow-profile", str(ROOT / PROFILE),
        "--cores", str(cores),
        "--jobs", str(num_workers),
        "--rerun-incomplete",
        "--config", f"spec={spec_path}",
    ]
    if gpus:
        command += ["--resources", f"gpu={len(gpus)}"]
    if dry_run:
        command.append("--dry-run")
    return command + extra


def job_environment(gpus: list[str] | None) -> dict:
    env = dict(os.environ)
    if gpus is not None:
        env["DIFFUSER_GPUS"] = ",".join(gpus) if gpus else "none"
    # the jobs import this checkout's package whether or not it is pip-installed
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    return env


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    extra = argv[argv.index("--") + 1:] if "--" in argv else []
    argv = argv[: argv.index("--")] if "--" in argv else argv
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-e", "--experiment", required=True, help="experiment spec YAML (meta_data/constants/variables)")
    parser.add_argument("-g", "--gpu", default=None, help="GPU id, comma-separated ids, or -1 for CPU (default: every GPU)")
    parser.add_argument("-c", "--cores", type=int, default=os.cpu_count() or 1, help="CPU cores for all jobs together")
    parser.add_argument("-n", "--dry-run", action="store_true", help="list the jobs that would run, run nothing")
    args = parser.parse_args(argv)

    sys.path.insert(0, str(ROOT))
    from diffuser.config import ConfigError, load_spec

    spec_path = Path(args.experiment).resolve()
    moved = ROOT / "config" / spec_path.name
    if not spec_path.exists() and moved.exists():
        # the seed kept its specs in exp_specs/; this project keeps them in config/
        print(f"error: {args.experiment}: no such file; this project keeps its specs in config/: "
              f"run with -e {moved.relative_to(ROOT)}", file=sys.stderr)
        return 2
    try:
        spec = load_spec(spec_path)
    except ConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    gpus = gpu_ids(args.gpu)
    command = snakemake_command(spec_path, spec.meta_data["num_workers"], gpus, args.cores, args.dry_run, extra)
    device = "CPU" if gpus == [] else f"GPU {','.join(gpus)}" if gpus else "every GPU found (else CPU)"
    print(f"experiment {spec.exp_name}: {len(spec.cells())} cells on {device}, "
          f"{spec.meta_data['num_workers']} job(s) at a time", flush=True)
    print("running:", " ".join(command), flush=True)
    code = subprocess.run(command, cwd=ROOT, env=job_environment(gpus)).returncode
    results = ROOT / "results" / spec.exp_name
    print(f"results: {results}/ (cells/<cell>/: config.yaml, metrics.csv, eval.json, checkpoints/; "
          f"summary.csv, figures/); logs: {ROOT / 'logs' / spec.exp_name}/")
    return code


if __name__ == "__main__":
    sys.exit(main())
