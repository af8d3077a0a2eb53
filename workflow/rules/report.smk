# One summary per experiment: the score table over seeds, the figures and summary.html (a
# self-contained page with both, the cells, the environment and the spec), from every cell.
# `snakemake --report results/<exp>/report.html` (make demo does it) collects the score table, the
# figures and the resolved spec into one HTML file.
import mimetypes

mimetypes.add_type("text/plain", ".yaml")  # shown as text in the report (Python knows no type for it)


report: "../report/workflow.rst"


rule resolved_spec:
    message:
        "write the resolved spec of {EXP}"
    input:
        SPEC_MARKER,
    output:
        report(f"{RESULTS}/spec.yaml", caption="../report/spec.rst", category="Config"),
    params:
        spec=as_json(SPEC.as_dict()),
    localrule: True
    log:
        f"{LOGS}/resolved_spec.log",
    shell:
        "{PYTHON} -m diffuser.config {output:q} {params.spec:q} > {log:q} 2>&1"


rule aggregate:
    message:
        "summary and figures of {EXP}"
    input:
        spec=f"{RESULTS}/spec.yaml",
        configs=expand(cell_path("config.yaml"), cell=CELLS),
        evaluations=expand(cell_path("eval.json"), cell=CELLS),
    output:
        summary=report(f"{RESULTS}/summary.csv", caption="../report/summary.rst", category="Scores"),
        summary_json=f"{RESULTS}/summary.json",
        page=f"{RESULTS}/summary.html",
        figures=report(
            directory(f"{RESULTS}/figures"),
            patterns=["{name}.png"],
            caption="../report/figures.rst",
            category="Figures",
        ),
    params:
        exp_dir=lambda wildcards, output: os.path.dirname(output.summary),
    log:
        f"{LOGS}/aggregate.log",
    shell:
        "{PYTHON} -m diffuser aggregate --exp-dir {params.exp_dir:q} --spec {input.spec:q} > {log:q} 2>&1"
