"""Run every cell of an experiment spec, as the seed's `python run_experiment.py -e SPEC -g GPU` did.

The sweep runs through the project's Snakemake workflow (the same jobs as `snakemake --config
spec=SPEC`): finished cells are not redone, an interrupted one resumes from its checkpoint, and
at most `meta_data.num_workers` jobs run at once. Interrupted or killed, the same command continues.

  python run_experiment.py -e exp_specs/vae_diffusion_rl_example.yaml -g 0   # GPU 0
  python run_experiment.py -e config/config.yaml -g 0,1                      # GPUs 0 and 1, one per job
  python run_experiment.py -e config/config.yaml -g -1                       # CPU only
  python run_experiment.py -e config/config.yaml -n                          # show the jobs, run nothing
  python run_experiment.py -e SPEC -- --config n_train_steps=3000            # override spec keys
  python run_experiment.py -e SPEC -g 0 -- --forceall                        # more snakemake options
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent
sys.path.insert(0, str(ROOT))

from diffuser.launch import parse_key_values, run_snakemake, snakemake_command, split_config_overrides  # noqa: E402


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

    from diffuser.config import ConfigError, load_spec
    from diffuser.errors import GpuRequestError
    from diffuser.runtime.gpu_pool import check_gpu_request

    config_items, extra = split_config_overrides(extra)
    spec_path = Path(args.experiment).resolve()
    try:
        spec = load_spec(spec_path, parse_key_values(config_items))
        gpus = gpu_ids(args.gpu)
        check_gpu_request(gpus or [])
    except (ConfigError, GpuRequestError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    # the `gpu` resource counts job slots: jobs_per_gpu of them per GPU
    slots = len(gpus or []) * spec.meta_data["jobs_per_gpu"]
    command = snakemake_command(cores=args.cores, jobs=spec.meta_data["num_workers"], gpus=slots,
                                spec=spec_path, config=config_items, dry_run=args.dry_run, extra=extra)
    device = "CPU" if gpus == [] else f"GPU {','.join(gpus)}" if gpus else "every GPU found (else CPU)"
    print(f"experiment {spec.exp_name}: {len(spec.cells())} cells on {device}, "
          f"{spec.meta_data['num_workers']} job(s) at a time", flush=True)
    code = run_snakemake(command, cwd=ROOT, env=job_environment(gpus))
    results = ROOT / "results" / spec.exp_name
    print(f"results: {results}/ (cells/<cell>/: config.yaml, metrics.csv, eval.json, checkpoints/; "
          f"summary.csv, figures/); logs: {ROOT / 'logs' / spec.exp_name}/")
    return code


if __name__ == "__main__":
    sys.exit(main())
