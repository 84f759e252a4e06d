# Data generation: DW4 and LJ13 by MCMC, the LJ13 OpenMM cross-check, QM9 and QM9-positional from qm9pack.
# `enf data` writes to data_full/<set>/; the `data_split` rule puts the splits the jobs read into data/<set>/,
# as hard links (or, for reduced budgets with data.<set>.subset, the first N samples of a split).


rule data:
    output:
        train=f"{OUT}/data_full/{{dataset}}/train.npz",
        valid=f"{OUT}/data_full/{{dataset}}/valid.npz",
        test=f"{OUT}/data_full/{{dataset}}/test.npz",
        meta=f"{OUT}/data_full/{{dataset}}/meta.json",
    log:
        f"{LOGS}/data/{{dataset}}.log",
    params:
        subcommand=lambda wc: ENF_DATA_SUBCOMMANDS[wc.dataset],
        dir=lambda wc: f"{OUT}/data_full/{wc.dataset}",
        args=lambda wc: data_args(wc.dataset),
        code=DATA_CODE,
    threads: lambda wc: resources_for(data_resources(wc.dataset))["threads"]
    resources:
        mem_mb=lambda wc: resources_for(data_resources(wc.dataset))["mem_mb"],
        runtime=lambda wc: resources_for(data_resources(wc.dataset))["runtime"],
        gpu=0,
    shell:
        "OMP_NUM_THREADS={threads} {ENF} data {params.subcommand} --out {params.dir} {params.args} > {log} 2>&1"


rule data_split:
    input:
        train=f"{OUT}/data_full/{{dataset}}/train.npz",
        valid=f"{OUT}/data_full/{{dataset}}/valid.npz",
        test=f"{OUT}/data_full/{{dataset}}/test.npz",
        meta=f"{OUT}/data_full/{{dataset}}/meta.json",
    output:
        train=f"{OUT}/data/{{dataset}}/train.npz",
        valid=f"{OUT}/data/{{dataset}}/valid.npz",
        test=f"{OUT}/data/{{dataset}}/test.npz",
        meta=f"{OUT}/data/{{dataset}}/meta.json",
    log:
        f"{LOGS}/data/{{dataset}}_split.log",
    params:
        subset=lambda wc: subset_args(wc.dataset),
    localrule: True
    threads: 1
    resources:
        mem_mb=lambda wc: resources_for(data_resources(wc.dataset))["mem_mb"],
        runtime=10,
        gpu=0,
    shell:
        "{PY} {SCRIPTS}/subset_data.py --source {OUT}/data_full/{wildcards.dataset} "
        "--out {OUT}/data/{wildcards.dataset} {params.subset} > {log} 2>&1"


rule lj13_check:
    input:
        train=f"{OUT}/data_full/lj13/train.npz",
        meta=f"{OUT}/data_full/lj13/meta.json",
    output:
        f"{OUT}/data_full/lj13_check/check.json",
    log:
        f"{LOGS}/data/lj13_check.log",
    params:
        args=data_args("lj13_check"),
        code=DATA_CODE,
    threads: resources_for("lj13_check")["threads"]
    resources:
        mem_mb=resources_for("lj13_check")["mem_mb"],
        runtime=resources_for("lj13_check")["runtime"],
        gpu=0,
    shell:
        "OMP_NUM_THREADS={threads} {ENF} data lj13-check --data {OUT}/data_full/lj13 "
        "--out {OUT}/data_full/lj13_check {params.args} > {log} 2>&1"
