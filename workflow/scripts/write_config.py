"""Snakemake `script:` of the config rules: write the rule's `params.settings` (a cell's or a VAE job's
resolved config, or the resolved spec) to its output as YAML. `snakemake` is the object Snakemake
injects into a script."""

import sys

from diffuser.config import save_yaml

sys.stderr = open(snakemake.log[0], "w")  # a failure's traceback goes to the rule's log
save_yaml(snakemake.params.settings, snakemake.output[0])
