"""Training entry point. For now: compose, validate, print the resolved config. Training lands later."""

from __future__ import annotations

import hydra
from omegaconf import DictConfig, OmegaConf

from asr_attention.config_check import validate


@hydra.main(version_base="1.3", config_path="../conf", config_name="train")
def main(cfg: DictConfig) -> None:
    validate(cfg)
    print(OmegaConf.to_yaml(cfg, resolve=True))


if __name__ == "__main__":
    main()
