"""`compile: true`: given the same random numbers the compiled training loss matches eager within a stated
tolerance; a resumed compiled run repeats the uninterrupted one; where torch.compile is unavailable or
fails, training runs eager (the same numbers) after one warning line."""

import pytest
import torch
from test_sync_free_step import make_trainer
from test_training import TINY

from diffuser.training import compiled

# fused kernels reorder float32 sums: a few ulps per op, amplified a little by three optimizer steps
LOSS_RTOL, LOSS_ATOL = 1e-4, 1e-6
N_STEPS = 3


def losses(trainer, n: int) -> list[dict[str, float]]:
    return [{name: float(value) for name, value in trainer.train_step().items()} for _ in range(n)]


@pytest.fixture
def fixed_noise(monkeypatch):
    """The losses' random draws (VAE sample, diffusion timesteps and noise) as fixed functions of their shape:
    compiled code draws random numbers differently from eager code (compiled.py), so only with the same
    numbers can the two be compared step by step. The batch sampler (its own generator) is left alone."""
    real_randint = torch.randint

    def randn_like(x, **kwargs):
        return torch.sin(0.7 * torch.arange(x.numel(), dtype=x.dtype, device=x.device)).view_as(x)

    def randint(*args, **kwargs):
        if "generator" in kwargs:
            return real_randint(*args, **kwargs)
        low, high, size = args
        return (7 * torch.arange(size[0], device=kwargs.get("device"))) % high + low

    monkeypatch.setattr(torch, "randn_like", randn_like)
    monkeypatch.setattr(torch, "randint", randint)


@pytest.mark.slow  # compiling the tiny model's loss takes 30-90 s on a 2-core CPU
def test_compiled_losses_match_eager_within_tolerance(tmp_path, tiny_maze_data, fixed_noise):
    eager = losses(make_trainer(tiny_maze_data, tmp_path / "eager"), N_STEPS)
    trainer = make_trainer(tiny_maze_data, tmp_path / "compiled", compile=True)
    got = losses(trainer, N_STEPS)
    assert trainer._loss_fn.compiled, "the loss was not compiled here (a fallback would make the test vacuous)"
    for step, (a, b) in enumerate(zip(eager, got, strict=True)):
        assert a.keys() == b.keys()
        for name in a:
            assert b[name] == pytest.approx(a[name], rel=LOSS_RTOL, abs=LOSS_ATOL), f"{name} at step {step + 1}"


def test_unavailable_compile_warns_once_and_trains_eager(tmp_path, tiny_maze_data, monkeypatch, capsys):
    monkeypatch.setattr(compiled, "_compile_unavailable", lambda: "torch.compile does not support this platform")
    trainer = make_trainer(tiny_maze_data, tmp_path / "c", compile=True)
    got = losses(trainer, N_STEPS)
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "compile: true, but torch.compile does not support" in err and "eager" in err
    assert got == losses(make_trainer(tiny_maze_data, tmp_path / "e"), N_STEPS)


def test_a_compile_failure_on_the_first_call_falls_back_with_the_same_random_draws(tmp_path, tiny_maze_data,
                                                                                   monkeypatch, capsys):
    def failing_compile(fn, **options):  # torch.compile's signature: the loss is compiled with inductor options
        def call(*args, **kwargs):
            torch.randn(1000)  # a failed attempt may draw numbers before it fails
            raise RuntimeError("C++ compiler not found\nmore detail")
        return call

    monkeypatch.setattr(torch, "compile", failing_compile)
    trainer = make_trainer(tiny_maze_data, tmp_path / "c", compile=True)
    got = losses(trainer, N_STEPS)
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "torch.compile failed (RuntimeError: C++ compiler not found)" in err
    assert got == losses(make_trainer(tiny_maze_data, tmp_path / "e"), N_STEPS), "eager draws the same numbers"


@pytest.mark.slow  # compiles three times (the FX graph cache makes the later ones faster)
def test_a_resumed_compiled_run_repeats_the_uninterrupted_one(tmp_path, tiny_maze_data, capsys):
    from diffuser import steps
    from diffuser.config import validate_cell_config
    from diffuser.training.checkpoints import load_checkpoint

    def run(run_dir, n_steps):
        config = validate_cell_config({**TINY, "compile": True, "lr_schedule": "constant", "save_freq": 20,
                                       "n_train_steps": n_steps}, "test config")
        return steps.train(config, run_dir, tiny_maze_data)

    straight = load_checkpoint(run(tmp_path / "straight", 40))
    run(tmp_path / "resumed", 20)
    resumed = load_checkpoint(run(tmp_path / "resumed", 40))  # continues from the step-20 checkpoint
    assert "compile: true, but" not in capsys.readouterr().err, "the runs fell back to eager"
    for key in straight["ema"]:
        assert torch.equal(straight["ema"][key], resumed["ema"][key]), f"{key} differs after a compiled resume"
