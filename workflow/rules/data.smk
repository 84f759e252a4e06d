# Data generation: DW4 and LJ13 by MCMC, the LJ13 OpenMM cross-check, QM9 and QM9-positional from qm9pack.


rule data:
    output:
        train=f"{OUT}/data/{{dataset}}/train.npz",
        valid=f"{OUT}/data/{{dataset}}/valid.npz",
        test=f"{OUT}/data/{{dataset}}/test.npz",
        meta=f"{OUT}/data/{{dataset}}/meta.json",
    log:
        f"{LOGS}/data/{{dataset}}.log",
    params:
        subcommand=lambda wc: ENF_DATA_SUBCOMMANDS[wc.dataset],
        dir=lambda wc: data_dir(wc.dataset),
        args=lambda wc: data_args(wc.dataset),
        code=DATA_CODE,
    threads: lambda wc: resources_for("data_qm9" if wc.dataset.startswith("qm9") else "data")["threads"]
    resources:
        mem_mb=lambda wc: resources_for("data_qm9" if wc.dataset.startswith("qm9") else "data")["mem_mb"],
        runtime=lambda wc: resources_for("data_qm9" if wc.dataset.startswith("qm9") else "data")["runtime"],
        gpu=0,
    shell:
        "OMP_NUM_THREADS={threads} {ENF} data {params.subcommand} --out {params.dir} {params.args} > {log} 2>&1"


rule lj13_check:
    input:
        train=f"{OUT}/data/lj13/train.npz",
        meta=f"{OUT}/data/lj13/meta.json",
    output:
        f"{OUT}/data/lj13_check/check.json",
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
        "OMP_NUM_THREADS={threads} {ENF} data lj13-check --data {OUT}/data/lj13 --out {OUT}/data/lj13_check "
        "{params.args} > {log} 2>&1"
