"""Offline-to-online for the baselines (models.IQL, models.FQL): their own losses, on batches that mix
offline data with the steps the policy collects, as their papers fine-tune online. DiffusionRL runs it
too when its `trainer` names it: it then collects with its evaluated sampler (`DiffusionRL.explore`) and
has no policy-gradient update.

IQL (Kostrikov, Nair, Levine, ICLR 2022, section 5.3) and FQL (Park, Li, Levine, 2025, offline-to-online
experiments) keep every offline loss and hyper-parameter online and add the new transitions to the
replay buffer that holds the offline data; there is no separate policy-gradient update. Here, with the
same schedule keys as DiffusionRL's online mode so the comparison is like for like:

- after `rl_warmup_steps` offline steps, every `rl_collect_freq` training steps the current model (not
  the EMA) acts with its exploring policy (`explore`: IQL samples its Gaussian, FQL its one-step policy
  on fresh noise, DiffusionRL its best-of-n sampler) for `rl_collect_steps` environment steps summed over
  `rl_num_envs` persistent environments (rollout.py's collection, the same as DiffusionRL's; the papers
  use one), executing each sampled action chunk as it does when evaluated; the steps go into the online
  buffer.
  `rl_collect_freq` / `rl_collect_steps` is the number of gradient steps per environment step (1 in
  both papers);
- once online steps exist, `online_sample_fraction` of every batch comes from them. The papers sample
  uniformly from the union of the offline and online data, so their online share grows from 0 toward
  a half over a run of as many online as offline steps; a fixed share is the same knob DiffusionRL's
  online mode has.

The policy-gradient keys (what utils.OnlineRLTrainer reads beyond the schedule: `rl_update_freq`, the
learning rates, PPO, GAE, value, entropy and denoising keys) are not read. Resume: the buffer, the collection RNG and
the counters are in every checkpoint; apart from the episodes in progress (cut when a run stops, as in
rollout.py), resume is exact.
"""

from __future__ import annotations

from diffuser.training.online.base import OnlineTrainer
from diffuser.training.online.rollout import ExplorationCollector


class OnlineReplayTrainer(OnlineTrainer):
    """A baseline's offline losses on offline + online batches, with collections on the online schedule
    (base.py); a collection only fills the buffer."""

    collector_class = ExplorationCollector
