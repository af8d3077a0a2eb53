"""The pipeline's steps as plain functions: what the CLI commands and the Snakemake rules run."""

from __future__ import annotations

import contextlib
import json
import os
import platform
import signal
import time
from pathlib import Path

import torch
import yaml

from diffuser.config import saved_cell_config
from diffuser.errors import ConfigError
from diffuser.runtime.seeding import seed_global
from diffuser.training.checkpoints import load_checkpoint


def processed_dir(config: dict, data_dir: str | os.PathLike = "data") -> Path:
    from diffuser.datasets.prepare import dataset_key_of, processed_path

    return processed_path(dataset_key_of(config), data_dir)


def prepare(config: dict, data_dir: str | os.PathLike = "data") -> Path:
    from diffuser.datasets.prepare import prepare_dataset

    return prepare_dataset(
        config["dataset"],
        data_dir,
        steps=config["dataset_steps"],
        action_noise=config["dataset_action_noise"],
        seed=config["dataset_seed"],
    )


def load_dataset(config: dict, data_dir: str | os.PathLike = "data", device="cpu"):
    from diffuser.datasets.sequence import sequence_settings
    from diffuser.registry import resolve

    loader = resolve(config["loader"])
    return loader(processed_dir(config, data_dir), **sequence_settings(config), device=device)


def build_model(config: dict, obs_dim: int, action_dim: int) -> torch.nn.Module:
    from diffuser.registry import resolve

    return resolve(config["diffusion"])(obs_dim, action_dim, config)


def set_threads(config: dict) -> None:
    torch.set_num_threads(config["num_threads"] or os.cpu_count() or 1)


def _claim_device(config: dict):
    from diffuser.runtime.gpu_pool import claim_device

    return claim_device(config["device"])


def pretrain_vae(config: dict, out: str | os.PathLike, data_dir: str | os.PathLike = "data") -> Path:
    """Train the model's ActionVAE alone on (state, action-chunk) pairs; writes `out`, and metrics.csv and
    checkpoints/ beside it (diffuser.training.pretrain)."""
    from diffuser.registry import MODELS_WITH_VAE, resolve
    from diffuser.training.pretrain import VAEPretrainer

    if config["diffusion"] not in MODELS_WITH_VAE:
        raise ConfigError(
            f"{config['diffusion']} has no action VAE to pre-train; only {', '.join(sorted(MODELS_WITH_VAE))} have one."
        )
    set_threads(config)
    claim = _claim_device(config)
    device = torch.device(claim.device)
    seed_global(config["seed"])
    dataset = load_dataset(config, data_dir, device=device)
    vae = resolve(config["diffusion"]).build_vae(dataset.obs_dim, dataset.action_dim, config)
    return VAEPretrainer(config, dataset, vae, out, device=device).train()


def train(
    config: dict,
    run_dir: str | os.PathLike,
    data_dir: str | os.PathLike = "data",
    vae_path: str | os.PathLike | None = None,
) -> Path:
    """Train one cell into `run_dir`; resumes from its newest checkpoint when `continue_training`."""
    from diffuser.registry import resolve, trainer_for

    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    # separates the attempts in the cell's train.log, which keeps every one of them
    print(f"==== attempt started {time.strftime('%Y-%m-%d %H:%M:%S')} on {platform.node()} (pid {os.getpid()}) ====",
          flush=True)
    set_threads(config)
    claim = _claim_device(config)
    device = torch.device(claim.device)
    seed_global(config["seed"])
    dataset = load_dataset(config, data_dir, device=device)
    model = build_model(config, dataset.obs_dim, dataset.action_dim)
    if vae_path is not None and hasattr(model, "vae"):
        model.vae.load_state_dict(load_checkpoint(vae_path)["vae"])
    trainer_cls = trainer_for(config)
    evaluator = None
    if config["eval_freq"] <= config["n_train_steps"] or config["online_training"]:
        evaluator = resolve(config["evaluator"])(dataset.metadata, config["num_eval"], seed=config["seed"])
    trainer = trainer_cls(config, dataset, model, run_dir, evaluator=evaluator, device=device,
                          read_saved_config=saved_cell_config)
    previous = run_status(run_dir)
    if previous["status"] in ("killed", "interrupted", "failed"):
        print(f"the previous attempt of this run ended {previous['status']} ({previous.get('detail', 'no detail')})")
    started = time.time()
    _write_run_info(run_dir, config, claim, status="running", started=started)
    try:
        with _signals_interrupt():
            final = trainer.train()
    except KeyboardInterrupt as interrupt:
        detail = f"{interrupt.args[0] if interrupt.args else 'SIGINT'} at step {trainer.step}"
        _write_run_info(run_dir, config, claim, status="interrupted", started=started, step=trainer.step, detail=detail)
        raise
    except BaseException as error:
        detail = f"{type(error).__name__} at step {trainer.step}: {error}"
        _write_run_info(run_dir, config, claim, status="failed", started=started, step=trainer.step, detail=detail)
        raise
    _write_run_info(run_dir, config, claim, status="finished", started=started, steps=trainer.step,
                    step=trainer.step, resumed_from=trainer.resumed_from)
    return final


@contextlib.contextmanager
def _signals_interrupt():
    """SIGTERM and SIGHUP (a scheduler's stop, a closed terminal) end training like Ctrl-C does, so
    run.json says `interrupted` and the last checkpoint stays the newest file."""

    def interrupt(signum, frame):
        raise KeyboardInterrupt(signal.Signals(signum).name)

    previous = {signum: signal.signal(signum, interrupt) for signum in (signal.SIGTERM, signal.SIGHUP)}
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


def run_status(run_dir: str | os.PathLike) -> dict:
    """run.json of a run, with a "running" status whose process is gone on this host told as "killed".

    ("none" when the run never started.) A run killed outright (SIGKILL, OOM killer) cannot write
    its own end; its pid and host tell whether it still runs.
    """
    path = Path(run_dir) / "run.json"
    if not path.is_file():
        return {"status": "none"}
    info = json.loads(path.read_text())
    if info.get("status") == "running" and info.get("host") == platform.node() and not _alive(info.get("pid")):
        info = {**info, "status": "killed", "detail": f"process {info.get('pid')} ended without writing its end"}
    return info


def _alive(pid) -> bool:
    if not isinstance(pid, int):
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _write_run_info(run_dir: Path, config: dict, claim, **fields) -> None:
    info = {
        "device": claim.as_dict(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "host": platform.node(),
        "pid": os.getpid(),
        "dataset": config["dataset"],
        "seed": config["seed"],
        **fields,
        "updated": time.time(),
    }
    tmp = run_dir / "run.json.tmp"
    tmp.write_text(json.dumps(info, indent=2))
    tmp.replace(run_dir / "run.json")


def policy_from_state(state: dict, device="cpu"):
    """A PolicyRunner over the EMA weights of a checkpoint (final.pt or any training checkpoint)."""
    from diffuser.datasets.normalization import normalizer_from_state_dict
    from diffuser.evaluation.policy import PolicyRunner

    config = saved_cell_config(state["config"])
    model = build_model(config, state["obs_dim"], state["action_dim"]).to(device)
    model.load_state_dict(state["ema"])
    model.eval()
    normalizers = {k: normalizer_from_state_dict(v) for k, v in state["normalizers"].items()}
    return PolicyRunner(model, normalizers, config["history_horizon"], config["action_horizon"], device=device)


def evaluate(
    run_dir: str | os.PathLike,
    checkpoint: str | os.PathLike | None = None,
    num_eval: int | None = None,
    out: str | os.PathLike | None = None,
    threads: int | None = None,
) -> dict:
    """Evaluate a checkpoint (default: the run's final.pt) with its EMA weights; writes eval.json.

    `threads`: torch CPU threads, instead of the checkpoint config's num_threads.
    """
    from diffuser.registry import resolve

    run_dir = Path(run_dir)
    checkpoint = Path(checkpoint) if checkpoint else run_dir / "final.pt"
    state = load_checkpoint(checkpoint)
    config = saved_cell_config(state["config"])
    set_threads({**config, "num_threads": threads} if threads else config)
    claim = _claim_device(config)
    runner = policy_from_state(state, device=claim.device)
    evaluator = resolve(config["evaluator"])(state["metadata"], num_eval or config["num_eval"], seed=config["seed"])
    try:
        result = evaluator.evaluate(runner)
    finally:
        evaluator.close()
    result.update(step=int(state["step"]), checkpoint=str(checkpoint), ema=True)
    out = Path(out) if out else run_dir / "eval.json"
    tmp = out.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(result, indent=2))
    tmp.replace(out)
    return result


def read_yaml(path: str | os.PathLike) -> dict:
    with open(path) as f:
        return yaml.safe_load(f)
