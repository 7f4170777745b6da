"""What the user controls: checks of a composed config before heavy work, the OmegaConf resolvers the configs use, and UserError (a one-line error naming the field or file)."""
