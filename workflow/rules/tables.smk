# Tables 1-3 (csv, md, tex: mean and standard deviation over seeds beside the paper's value), a figure,
# and named target rules for selective runs (`snakemake table1`, `dataset_dw4`, `model_enf`, `data_lj13`).


rule tables:
    input:
        table_inputs,
        paper=from_basedir(config["paper_tables"]),
    output:
        csv=report(f"{OUT}/tables/{{table}}.csv", caption="../report/tables.rst", category="Tables",
                   labels={"table": "{table}", "format": "csv"}),
        md=f"{OUT}/tables/{{table}}.md",
        tex=f"{OUT}/tables/{{table}}.tex",
    log:
        f"{LOGS}/tables/{{table}}.log",
    params:
        manifest=lambda wc: table_manifest(wc.table),
        meta=lambda wc: table_meta(wc.table),
        protocol=from_basedir("config/config.yaml"),
    localrule: True
    threads: 1
    resources:
        mem_mb=res("tables", "mem_mb"),
        runtime=res("tables", "runtime"),
        gpu=0,
    script:
        "../scripts/make_tables.py"


rule figure_nll:
    input:
        csv=f"{OUT}/tables/{{table}}.csv",
    output:
        report(f"{OUT}/figures/{{table}}_nll.png", caption="../report/figure_nll.rst", category="Figures",
               labels={"table": "{table}"}),
    log:
        f"{LOGS}/figures/{{table}}_nll.log",
    localrule: True
    threads: 1
    resources:
        mem_mb=res("tables", "mem_mb"),
        runtime=res("tables", "runtime"),
        gpu=0,
    script:
        "../scripts/plot_results.py"


# -- named targets ------------------------------------------------------------------------------------------

for _table in TABLES:

    rule:
        name:
            _table
        input:
            table_files(_table) + (figure_files(_table) if _table == "table1" else [])
            + [f for c in cells(table=_table) for f in cell_outputs(c)],
        localrule: True


for _ds in EXPERIMENTS:

    rule:
        name:
            f"data_{_ds}"
        input:
            [f"{OUT}/data/{_ds}/{split}.npz" for split in SETS],
        localrule: True

    rule:
        name:
            f"dataset_{_ds}"
        input:
            [f for c in cells(dataset=_ds) for f in cell_outputs(c)],
        localrule: True


for _model in MODELS:

    rule:
        name:
            f"model_{_model}"
        input:
            [f for c in cells(model=_model) for f in cell_outputs(c)],
        localrule: True
