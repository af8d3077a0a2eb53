# One VAE pre-training job per distinct VAE setting (diffuser.config.vae_key): cells that agree on
# the VAE's dataset, architecture and optimisation share it. It takes no `gpu` resource (as in
# the SLURM profile): it runs before the training jobs, and locally it still uses a free pooled GPU.


rule vae_config:
    message:
        "write the config of VAE {wildcards.vae}"
    output:
        vae_path("config.yaml"),
    params:
        config=lambda wildcards: as_json(VAES[wildcards.vae]),
    localrule: True
    log:
        log_path("vae_config", "vae"),
    shell:
        "{PYTHON} -m diffuser.config {output:q} {params.config:q} > {log:q} 2>&1"


rule pretrain_vae:
    message:
        "pre-train VAE {wildcards.vae}"
    input:
        unpack(vae_inputs),
    output:
        vae_path("vae.pt"),
    params:
        data_dir=DATA_DIR,
    threads: THREADS_PER_JOB
    log:
        log_path("pretrain_vae", "vae"),
    benchmark:
        benchmark_path("pretrain_vae", "vae")
    shell:
        "{PYTHON} -m diffuser pretrain --cell-config {input.config:q} --out {output:q} --data-dir {params.data_dir}"
        " --threads {threads} > {log:q} 2>&1"
