"""Policy models: the latent diffusion policy (DiffusionRL), its parts, and the baselines (BC, IQL, FQL, DiffusionPolicy)."""

from diffuser.models.bc import BC
from diffuser.models.diffusion_policy import DiffusionPolicy
from diffuser.models.diffusion_rl import DiffusionRL
from diffuser.models.encoders import TrajectoryEncoder
from diffuser.models.fql import FQL
from diffuser.models.iql import IQL
from diffuser.models.vae import ActionVAE

__all__ = ["BC", "IQL", "FQL", "ActionVAE", "DiffusionPolicy", "DiffusionRL", "TrajectoryEncoder"]
