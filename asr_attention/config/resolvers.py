"""OmegaConf resolvers the configs use: ${pkg:path} = a path inside the installed asr_attention package
(the vendored AN4 corpus, the shipped demo checkpoints), wherever the command runs from; ${floordiv:a,b} = a // b
(e.g. MLA's latent_dim as a fraction of model.d_model in conf/study/variant/); ${sweep_group:...} and
${recipe_tag:...} below (W&B groups, run names)."""

from pathlib import Path

from omegaconf import OmegaConf

PACKAGE_DIR = Path(__file__).resolve().parents[1]

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


def recipe_tag(attention_only_steps: int | None, max_steps: int | None, lr: float, head_lr: float | None = None,
               arch=None, distill_weight: float | None = None, optim=None, calibration=None) -> str:
    """${recipe_tag:${optim.attention_only_steps},${trainer.max_steps},${optim.lr},${optim.head_lr},${model.arch},
    ${optim.distill_weight},${optim},${calibration}}: what a run fine-tunes and at which lrs, for its name (e.g.
    'attention_only-lr3e-05', 'attention500_then_all-lr0.0001',
    'all-lr0.0001-head_lr0.001-specaug_time0.05x10_mel0.1x10', 'all-lr0.0001-head_lr0.001-distill1.0',
    'attention_only-lr3e-05-kl_weight1.0-ce_weight0.0-distill_text_teacher'; optim and calibration: for the retention
    knobs away from their defaults): the same rule as the study report's recipe label, so two recipes never share a
    name (and a run folder)."""
    from .recipe import retention, spec_augment, what_trains

    trains = what_trains(attention_only_steps, max_steps)
    if trains == "attention_then_all":
        trains = f"attention{attention_only_steps}_then_all"
    axes = spec_augment(arch or {})
    return (f"{trains}-lr{lr}" + ("" if head_lr is None else f"-head_lr{head_lr}")
            + ("-specaug_" + "_".join(f"{a}{p}x{n}" for a, (p, n) in axes.items()) if axes else "")
            + ("" if distill_weight is None else f"-distill{distill_weight}")
            + "".join(f"-{key.replace('calibration.', 'calib_')}{'_' if isinstance(value, str) else ''}{value}"
                      for key, value in retention(optim, calibration).items()))


OmegaConf.register_new_resolver("recipe_tag", recipe_tag, replace=True)
