"""Train one cell, as the seed's `python train.py` did: prepare its dataset, pre-train its VAE, train.

  python train.py -e results/<exp>/cells/<cell>/config.yaml -g 0
  python train.py -e my_cell.yaml -g -1 --run-dir results/single/my_cell

CELL.yaml is a flat mapping of cell keys (diffuser/schemas/cell.schema.yaml; missing keys take
their defaults), such as the config.yaml the workflow writes into each cell's directory. The run
directory defaults to that directory for a cell's config.yaml, else results/single/<file name>.
Training resumes from the run directory's checkpoints when `continue_training` is true. To run a
whole spec use run_experiment.py.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent
DATA_DIR = "data"


def default_run_dir(cell_yaml: Path) -> Path:
    if cell_yaml.name == "config.yaml":
        return cell_yaml.parent
    return Path("results") / "single" / cell_yaml.stem


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-e", "--experiment", required=True, help="one cell's config YAML (flat cell keys)")
    parser.add_argument("-g", "--gpu", default=None, help="GPU id, or -1 for CPU (default: a free GPU if any)")
    parser.add_argument("--run-dir", default=None, help="where checkpoints, metrics and final.pt go")
    parser.add_argument("--data-dir", default=DATA_DIR)
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (default: the config's num_threads)")
    args = parser.parse_args(argv)

    if args.gpu is not None:
        # read by diffuser.runtime.gpu_pool when the step claims its device
        os.environ["DIFFUSER_GPUS"] = "none" if args.gpu.strip() == "-1" else args.gpu.strip()
    sys.path.insert(0, str(ROOT))
    from diffuser.cli import main as cli
    from diffuser.config import ConfigError, load_cell_config, needs_vae_pretraining, save_yaml, vae_config

    cell_yaml = Path(args.experiment)
    try:
        config = load_cell_config(cell_yaml)
    except ConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    run_dir = Path(args.run_dir) if args.run_dir else default_run_dir(cell_yaml)
    resolved = run_dir / "config.yaml"
    if resolved.resolve() != cell_yaml.resolve():
        save_yaml(config, resolved)
    common = ["--data-dir", args.data_dir]
    threads = ["--threads", str(args.threads)] if args.threads else []

    code = cli(["prepare", "--dataset", config["dataset"], "--steps", str(config["dataset_steps"]),
                "--action-noise", str(config["dataset_action_noise"]), "--seed", str(config["dataset_seed"]), *common])
    vae = []
    if code == 0 and needs_vae_pretraining(config):
        # the workflow's VAE job config, so this cell gets the VAE a sweep would give it
        vae_yaml = save_yaml(vae_config(config), run_dir / "vae" / "config.yaml")
        vae_file = vae_yaml.with_name("vae.pt")
        if not vae_file.exists():
            code = cli(["pretrain", "--cell-config", str(vae_yaml), "--out", str(vae_file), *common, *threads])
        vae = ["--vae", str(vae_file)]
    if code == 0:
        code = cli(["train", "--cell-config", str(resolved), "--run-dir", str(run_dir), *vae, *common, *threads])
    if code == 0:
        print(f"results: {run_dir}/ (final.pt, metrics.csv, run.json, checkpoints/)")
    return code


if __name__ == "__main__":
    sys.exit(main())
