# One evaluation job per cell: the final (EMA) policy over num_eval episodes run together.


rule evaluate:
    message:
        "evaluate cell {wildcards.cell} (threads={threads}, gpu={resources.gpu})"
    input:
        cell_path("final.pt"),
    output:
        cell_path("eval.json"),
    params:
        run_dir=run_dir,
        jobs_per_gpu=JOBS_PER_GPU,
    threads: cell_threads
    resources:
        gpu=GPUS_PER_JOB,
    log:
        log_path("evaluate", "cell"),
    benchmark:
        benchmark_path("evaluate", "cell")
    shell:
        "DIFFUSER_JOBS_PER_GPU={params.jobs_per_gpu} {PYTHON} -m diffuser evaluate --run-dir {params.run_dir:q} --out {output:q} --threads {threads} > {log:q} 2>&1"
