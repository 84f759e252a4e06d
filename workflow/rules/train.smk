# Training: one job per (data set, model, training size, seed). The resumable state in <run>/state/ and the
# per-iteration history <run>/history_steps.csv are not declared outputs, so Snakemake's cleanup of a failed job
# keeps them and a re-run resumes from them. Beside `enf train` runs the MLflow watcher (track_mlflow.py live,
# in the background): it logs the training to its MLflow run while it runs and stops when this shell ends; it
# never fails the job (mlflow.live: false makes it do nothing).


rule train:
    input:
        train=data_file("train"),
        valid=data_file("valid"),
        test=data_file("test"),
    output:
        checkpoint=f"{OUT}/runs/{CELL}/checkpoint.pt",
        metrics=f"{OUT}/runs/{CELL}/metrics.json",
        history=f"{OUT}/runs/{CELL}/history.csv",
        config=f"{OUT}/runs/{CELL}/config.yaml",
        curves=report(
            f"{OUT}/runs/{CELL}/training_curves.png",
            caption="../report/training_curves.rst",
            category="Training curves",
            subcategory="{dataset}",
            labels={"model": "{model}", "n_train": "{n_train}", "seed": "{seed}"},
        ),
    log:
        f"{LOGS}/train/{CELL}.log",
    benchmark:
        f"{OUT}/benchmarks/train/{CELL}.tsv"
    params:
        run_dir=lambda wc: f"{OUT}/runs/{wc.dataset}/{wc.model}/n{wc.n_train}/seed{wc.seed}",
        args=train_args,
        state_key=state_key,
        live=live_args,
        code=CODE,
    threads: res("train", "threads")
    resources:
        mem_mb=res("train", "mem_mb"),
        runtime=res("train", "runtime"),
        gpu=res("train", "gpu"),
    shell:
        "( {PREPARE_RUN_DIR} --run-dir {params.run_dir:q} --key {params.state_key} && "
        "{{ {TRACK_LIVE} --run-dir {params.run_dir:q} {params.live} & }} && "
        "OMP_NUM_THREADS={threads} {GPU_SLOT} {ENF} train {params.args} --out {params.run_dir:q} ) > {log:q} 2>&1"
