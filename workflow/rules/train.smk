# One training job per sweep cell. A cell's config.yaml is written by its own small rule whose
# params are the resolved config and whose input is the cell's settings marker (common.smk), so
# changing any setting of a cell re-runs exactly that cell.
#
# Only final.pt and run.json are declared: Snakemake deletes the declared outputs of a job before
# it re-runs it, and an interrupted training must keep checkpoints/ and metrics.csv to resume
# from (`continue_training`, the default). Both exist whenever final.pt does.


rule settings_marker:
    message:
        "note the settings of {wildcards.marker}"
    output:
        f"{RESULTS}/cells/{{marker}}",
    params:
        stale=stale_markers,
    wildcard_constraints:
        marker=r"(.+/)?\.(settings|spec)-[0-9a-f]{8}",
    localrule: True
    log:
        log_path("settings_marker", "marker"),
    shell:
        "(rm -f {params.stale} && touch {output:q}) > {log:q} 2>&1"


rule cell_config:
    message:
        "write the config of cell {wildcards.cell}"
    input:
        cell_settings_marker,
    output:
        cell_path("config.yaml"),
    params:
        config=lambda wildcards: as_json(CELLS[wildcards.cell]),
    localrule: True
    log:
        log_path("cell_config", "cell"),
    shell:
        "{PYTHON} -m diffuser.config {output:q} {params.config:q} > {log:q} 2>&1"


rule train:
    message:
        "train cell {wildcards.cell} (threads={threads}, gpu={resources.gpu})"
    input:
        unpack(train_inputs),
    output:
        final=cell_path("final.pt"),
        run_info=cell_path("run.json"),
    params:
        run_dir=run_dir,
        history=lambda wildcards: cell_path("train.log", wildcards.cell),
        vae=vae_argument,
        data_dir=DATA_DIR,
        jobs_per_gpu=JOBS_PER_GPU,
    threads: cell_threads
    resources:
        gpu=GPUS_PER_JOB,
    log:
        log_path("train", "cell"),
    benchmark:
        benchmark_path("train", "cell")
    # Snakemake deletes a job's log before each attempt, so every attempt is appended to the cell's
    # train.log (kept with its checkpoints) and the job log starts as a copy of it. Descriptor 3 is
    # the console: the job prints one-line events there too ("resumed from step N").
    shell:
        "mkdir -p {params.run_dir:q} && touch {params.history:q} && cp {params.history:q} {log:q} &&"
        " DIFFUSER_CONSOLE_FD=3 DIFFUSER_JOBS_PER_GPU={params.jobs_per_gpu} {PYTHON} -m diffuser train --cell-config {input.config:q} --run-dir {params.run_dir:q}"
        " {params.vae} --data-dir {params.data_dir} --threads {threads} 3>&2 2>&1 | tee -a {params.history:q} >> {log:q}"


rule all_cells:
    message:
        "every cell of {EXP} is trained and evaluated"
    input:
        all_cell_files(),
