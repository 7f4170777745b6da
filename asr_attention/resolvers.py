"""OmegaConf resolvers the configs use: ${pkg:path} = a path inside the installed asr_attention package
(the vendored AN4 corpus, the shipped demo checkpoints), wherever the command runs from; ${floordiv:a,b} = a // b
(e.g. MLA's latent_dim as a fraction of model.d_model in conf/study/variant/)."""

from pathlib import Path

from omegaconf import OmegaConf

PACKAGE_DIR = Path(__file__).resolve().parent

OmegaConf.register_new_resolver("pkg", lambda rel: str(PACKAGE_DIR / rel), replace=True)
OmegaConf.register_new_resolver("floordiv", lambda a, b: int(a) // int(b), replace=True)


def sweep_group(default: str, group: str | None = None) -> str:
    """${sweep_group:<default>,<group>}: `group` when set (a study preset's: one group across sweeps); else in a
    -m sweep, a name for the sweep (its directory's last two parts, e.g. 2026-11-28_04-07-46), so every job of one
    sweep shares a W&B group; else `default`."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    if group is not None:
        return group
    if not HydraConfig.initialized() or HydraConfig.get().mode != RunMode.MULTIRUN:
        return default
    return "_".join(Path(HydraConfig.get().sweep.dir).parts[-2:])


OmegaConf.register_new_resolver("sweep_group", sweep_group, replace=True)
