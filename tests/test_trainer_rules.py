"""The trainer's rules on a toy model: the learning-rate schedule, which settings a resume may change,
and when a run logs, evaluates and saves."""

import math

import pytest
import torch
from test_ema import CONFIG, ToyData, ToyModel

from diffuser.config import cell_defaults, saved_cell_config
from diffuser.training.checkpoints import load_checkpoint
from diffuser.training.trainer import Trainer, changed_result_keys, make_scheduler


def learning_rates(schedule: str, total: int, steps: int) -> list[float]:
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.5)
    scheduler = make_scheduler(optimizer, schedule, total)
    rates = [optimizer.param_groups[0]["lr"]]
    for _ in range(steps):
        optimizer.step()
        scheduler.step()
        rates.append(optimizer.param_groups[0]["lr"])
    return rates


def test_cosine_schedule_falls_from_the_full_rate_to_zero_and_stays_there():
    # 0.5 * (1 + cos(pi * s / 4)) / 2 for s = 0..4, then 0
    expected = [0.5, 0.5 * (1 + math.cos(math.pi / 4)) / 2, 0.25, 0.5 * (1 - math.cos(math.pi / 4)) / 2, 0.0, 0.0]
    assert learning_rates("cosine", total=4, steps=5) == pytest.approx(expected, abs=1e-12)
    assert learning_rates("constant", total=4, steps=5) == [0.5] * 6


def test_a_resume_may_change_only_what_does_not_change_the_result():
    saved = {"seed": 1, "n_train_steps": 10, "lr_schedule": "cosine", "eval_freq": 5, "learning_rate": 1e-3}
    assert changed_result_keys(saved, dict(saved)) == []
    assert changed_result_keys(saved, {**saved, "eval_freq": 7, "num_eval": 3}) == []
    assert changed_result_keys(saved, {**saved, "seed": 2, "learning_rate": 5e-4}) == ["learning_rate", "seed"]
    # under a cosine schedule the run's length sets the schedule; under a constant one it only extends the run
    assert changed_result_keys(saved, {**saved, "n_train_steps": 20}) == ["n_train_steps"]
    constant = {**saved, "lr_schedule": "constant"}
    assert changed_result_keys(constant, {**constant, "n_train_steps": 20}) == []


def test_a_key_newer_than_the_checkpoint_counts_as_changed_only_when_it_is_off_its_default():
    current = cell_defaults()
    saved = {key: value for key, value in current.items() if key != "expectile"}  # written before "expectile" existed
    assert changed_result_keys(saved_cell_config(saved), current) == []
    assert changed_result_keys(saved_cell_config(saved), {**current, "expectile": 0.9}) == ["expectile"]
    assert changed_result_keys(saved, current) == ["expectile"], "read as saved, a missing key is a changed one"


class RecordingModel(ToyModel):
    def __init__(self):
        super().__init__()
        self.losses = []

    def loss(self, batch):
        total, terms = super().loss(batch)
        self.losses.append(total.item())
        return total, terms


class CountingEvaluator:
    def __init__(self):
        self.calls = 0

    def evaluate(self, runner):
        self.calls += 1
        return {"mean_return": float(self.calls), "mean_normalized_score": 10.0 * self.calls, "success_rate": 0.5}


def test_a_run_logs_evaluates_and_saves_on_its_schedule(tmp_path):
    config = {**CONFIG, "n_train_steps": 12, "log_freq": 5, "eval_freq": 4, "save_freq": 5, "continue_training": False}
    model, evaluator = RecordingModel(), CountingEvaluator()
    trainer = Trainer(config, ToyData(), model, tmp_path, evaluator=evaluator)
    final = trainer.train()

    rows = [line.split(",") for line in (tmp_path / "metrics.csv").read_text().splitlines()[1:]]
    logged = {}
    for step, metric, value in rows:
        logged.setdefault(metric, {})[int(step)] = float(value)
    # a row every 5 steps, and the steps after the last one at the end; each the mean since the previous row
    assert logged["loss"] == pytest.approx({5: sum(model.losses[:5]) / 5, 10: sum(model.losses[5:10]) / 5,
                                            12: sum(model.losses[10:]) / 2})
    assert set(logged["learning_rate"]) == set(logged["steps_per_second"]) == {5, 10, 12}
    assert evaluator.calls == 3
    assert logged["eval_return"] == {4: 1.0, 8: 2.0, 12: 3.0}
    assert logged["eval_normalized_score"] == {4: 10.0, 8: 20.0, 12: 30.0}
    # checkpoints at 5 and 10, the last step saved at the end; the newest two are kept
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["state_00000010.pt", "state_00000012.pt"]
    assert load_checkpoint(tmp_path / "checkpoints" / "state_00000012.pt")["step"] == 12
    assert load_checkpoint(final)["step"] == 12 and len(model.losses) == 12


def test_a_longer_run_resumes_from_the_newest_checkpoint(tmp_path):
    config = {**CONFIG, "n_train_steps": 6, "log_freq": 3, "eval_freq": 100, "save_freq": 3, "continue_training": True}
    first = Trainer(config, ToyData(), ToyModel(), tmp_path)
    first.train()
    second = Trainer({**config, "n_train_steps": 9}, ToyData(), ToyModel(), tmp_path)
    assert second.resume_if_possible() and second.step == 6
    # it continues where the first run stopped: weights, EMA, optimizer moments and the batch stream
    torch.testing.assert_close(second.model.w, first.model.w)
    torch.testing.assert_close(second.ema.w, first.ema.w)
    torch.testing.assert_close(second.optimizer.state_dict()["state"][0]["exp_avg"],
                               first.optimizer.state_dict()["state"][0]["exp_avg"])
    assert torch.equal(second.generator.get_state(), first.generator.get_state())
    assert not torch.allclose(second.model.w, ToyModel().w), "a restart from scratch is not a resume"


def test_a_checkpoint_of_an_older_layout_is_set_aside_and_training_starts_over(tmp_path, capsys):
    from diffuser.training.checkpoints import latest_checkpoint, save_checkpoint

    config = {**CONFIG, "n_train_steps": 6, "log_freq": 3, "eval_freq": 100, "save_freq": 3, "continue_training": True}
    Trainer(config, ToyData(), ToyModel(), tmp_path).train()
    path = latest_checkpoint(tmp_path / "checkpoints")
    state = load_checkpoint(path)
    state["log_sums"], state["log_counts"] = {"loss": 1.0}, {"loss": 1}  # metric sums as older versions wrote them
    del state["log_since"]
    save_checkpoint(path, state)
    capsys.readouterr()
    fresh = Trainer({**config, "n_train_steps": 9}, ToyData(), ToyModel(), tmp_path)
    assert not fresh.resume_if_possible() and fresh.step == 0
    assert "do not fit this version's model or trainer" in capsys.readouterr().err
    torch.testing.assert_close(fresh.model.w, ToyModel().w)  # the half-loaded state was undone
    assert len(list(tmp_path.glob("checkpoints.replaced-*"))) == 1
