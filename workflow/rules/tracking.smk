# MLflow: the store is created once up front (concurrent first use races on the sqlite schema); then one
# logging job per cell writes the training run and its evaluation run (nested), under a lock, with retries.
# These are local rules: on a cluster the sqlite file is only ever touched by the submitting host.


rule mlflow_init:
    output:
        f"{OUT}/tracking/experiment.json",
    log:
        f"{LOGS}/tracking/init.log",
    params:
        mlflow=MLFLOW_ARGS,
        artifact_root=MLFLOW["artifact_root"],
        description=config["description"].strip().replace("\n", " "),
    localrule: True
    threads: 1
    resources:
        mem_mb=res("track", "mem_mb"),
        runtime=res("track", "runtime"),
        gpu=0,
    shell:
        "{TRACK} init {params.mlflow} --artifact-root {params.artifact_root:q} "
        "--tag config_name={CONFIG_NAME:q} --tag mlflow.note.content={params.description:q} "
        "--out {output:q} > {log:q} 2>&1"


rule track:
    input:
        unpack(track_inputs),
    output:
        f"{OUT}/tracking/{CELL}/mlflow.json",
    log:
        f"{LOGS}/tracking/{CELL}.log",
    benchmark:
        f"{OUT}/benchmarks/track/{CELL}.tsv"
    params:
        mlflow=MLFLOW_ARGS,
        artifact_root=MLFLOW["artifact_root"],
        args=track_args,
        label=lambda wc: label_of(wc.model),  # args depend on the input, so Snakemake does not compare them
    localrule: True
    threads: 1
    resources:
        mem_mb=res("track", "mem_mb"),
        runtime=res("track", "runtime"),
        gpu=0,
    shell:
        "{TRACK} train {params.mlflow} --artifact-root {params.artifact_root:q} {params.args} --out {output:q} "
        "> {log:q} 2>&1"
