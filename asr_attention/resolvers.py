"""OmegaConf resolvers the configs use: ${pkg:path} = a path inside the installed asr_attention package
(the vendored AN4 corpus, the shipped demo checkpoints), wherever the command runs from."""

from pathlib import Path

from omegaconf import OmegaConf

PACKAGE_DIR = Path(__file__).resolve().parent

OmegaConf.register_new_resolver("pkg", lambda rel: str(PACKAGE_DIR / rel), replace=True)
