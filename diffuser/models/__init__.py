"""Policy models: the latent diffusion policy (DiffusionRL), its parts, and the BC baseline."""

from diffuser.models.bc import BC
from diffuser.models.diffusion_rl import DiffusionRL
from diffuser.models.encoders import TrajectoryEncoder
from diffuser.models.vae import ActionVAE

__all__ = ["BC", "ActionVAE", "DiffusionRL", "TrajectoryEncoder"]
