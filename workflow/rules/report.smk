# One summary per experiment: the score table over seeds and the figures, from every cell.


report: "../report/workflow.rst"


rule resolved_spec:
    input:
        SPEC_MARKER,
    output:
        f"{RESULTS}/spec.yaml",
    params:
        spec=as_json(SPEC.as_dict()),
    localrule: True
    shell:
        "{PYTHON} -m diffuser.config {output:q} {params.spec:q}"


rule aggregate:
    input:
        spec=f"{RESULTS}/spec.yaml",
        configs=expand(cell_path("config.yaml"), cell=CELLS),
        evaluations=expand(cell_path("eval.json"), cell=CELLS),
    output:
        summary=report(f"{RESULTS}/summary.csv", caption="../report/summary.rst", category="Scores"),
        summary_json=f"{RESULTS}/summary.json",
        figures=report(
            directory(f"{RESULTS}/figures"),
            patterns=["{name}.png"],
            caption="../report/figures.rst",
            category="Figures",
        ),
    params:
        exp_dir=RESULTS,
    log:
        f"{LOGS}/aggregate.log",
    shell:
        "{PYTHON} -m diffuser aggregate --exp-dir {params.exp_dir:q} --spec {input.spec:q} > {log:q} 2>&1"
