# Data generation: DW4 and LJ13 by MCMC (LJ13 with its OpenMM Langevin cross-check, part of `enf data lj13`),
# QM9 and QM9-positional from qm9pack. `enf data` writes to data_full/<set>/; the `data_split` rule puts the
# splits the jobs read into data/<set>/ as hard links (or, for reduced budgets with data.<set>.subset, the first
# N samples of a split).


rule data_mcmc:
    output:
        train=f"{OUT}/data_full/{{dataset}}/train.npz",
        valid=f"{OUT}/data_full/{{dataset}}/valid.npz",
        test=f"{OUT}/data_full/{{dataset}}/test.npz",
        meta=f"{OUT}/data_full/{{dataset}}/meta.json",
        energy=report(f"{OUT}/data_full/{{dataset}}/energy_hist.png", caption="../report/data.rst",
                      category="Data", subcategory="{dataset}", labels={"figure": "energy histogram"}),
        distances=report(f"{OUT}/data_full/{{dataset}}/pair_distance_hist.png", caption="../report/data.rst",
                         category="Data", subcategory="{dataset}", labels={"figure": "pair distances"}),
        trace=report(f"{OUT}/data_full/{{dataset}}/energy_trace.png", caption="../report/data.rst",
                     category="Data", subcategory="{dataset}", labels={"figure": "MCMC energy trace"}),
    log:
        f"{LOGS}/data/{{dataset}}.log",
    benchmark:
        f"{OUT}/benchmarks/data/{{dataset}}.tsv"
    params:
        args=lambda wc: data_args(wc.dataset),
        code=DATA_CODE,
    wildcard_constraints:
        dataset="dw4|lj13",
    threads: res("data", "threads")
    resources:
        mem_mb=res("data", "mem_mb"),
        runtime=res("data", "runtime"),
        gpu=0,
    shell:
        "OMP_NUM_THREADS={threads} {ENF} data {wildcards.dataset} --out {OUT:q}/data_full/{wildcards.dataset} "
        "--force {params.args} > {log:q} 2>&1"


rule data_qm9pack:
    output:
        train=f"{OUT}/data_full/{{dataset}}/train.npz",
        valid=f"{OUT}/data_full/{{dataset}}/valid.npz",
        test=f"{OUT}/data_full/{{dataset}}/test.npz",
        meta=f"{OUT}/data_full/{{dataset}}/meta.json",
    log:
        f"{LOGS}/data/{{dataset}}.log",
    benchmark:
        f"{OUT}/benchmarks/data/{{dataset}}.tsv"
    params:
        args=lambda wc: data_args(wc.dataset),
        code=DATA_CODE,
    wildcard_constraints:
        dataset="qm9|qm9_positional",
    threads: res("data_qm9", "threads")
    resources:
        mem_mb=res("data_qm9", "mem_mb"),
        runtime=res("data_qm9", "runtime"),
        gpu=0,
    shell:
        "OMP_NUM_THREADS={threads} {ENF} data {wildcards.dataset} --out {OUT:q}/data_full/{wildcards.dataset} "
        "--force {params.args} > {log:q} 2>&1"


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
        mem_mb=res("data_qm9", "mem_mb"),
        runtime=10,
        gpu=0,
    shell:
        "{PY} {SCRIPTS:q}/subset_data.py --source {OUT:q}/data_full/{wildcards.dataset} "
        "--out {OUT:q}/data/{wildcards.dataset} {params.subset} > {log:q} 2>&1"
