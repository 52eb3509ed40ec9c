"""Gaussian diffusion for DiT (no TensorFlow here): the process and its hybrid loss (`gaussian`), timestep respacing
(`respace`), DDPM / DDIM samplers with classifier-free guidance (`samplers`), rectified flow with Euler / Heun
samplers (`flow`), the train state and losses (`train_step`). The training loop and sampling evaluation live in
`vision_models.diffusion.trainer` (it reads data)."""
from vision_models.diffusion import flow, gaussian, respace, samplers
from vision_models.diffusion.gaussian import GaussianDiffusion, linear_betas
from vision_models.diffusion.respace import create, space_timesteps

__all__ = ['GaussianDiffusion', 'create', 'flow', 'gaussian', 'linear_betas', 'respace', 'samplers', 'space_timesteps']
