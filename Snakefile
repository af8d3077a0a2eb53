# The sweep of an experiment spec: prepare datasets -> pre-train VAEs -> train and evaluate every
# cell -> summary table and figures. Runs config/config.yaml unless told otherwise:
#   snakemake --cores 2 --workflow-profile workflow/profiles/default
#   snakemake --cores 8 --resources gpu=4 --workflow-profile workflow/profiles/default --config spec=exp_specs/vae_diffusion_rl_hopper_d4rl.yaml
# Overrides and the other options are described in workflow/rules/common.smk.
from snakemake.utils import min_version

min_version("9.0")


configfile: "config/config.yaml"


include: "workflow/rules/common.smk"
include: "workflow/rules/data.smk"
include: "workflow/rules/pretrain.smk"
include: "workflow/rules/train.smk"
include: "workflow/rules/evaluate.smk"
include: "workflow/rules/report.smk"


rule all:
    message:
        "every output of experiment {EXP} is up to date"
    input:
        all_outputs(),
    default_target: True
