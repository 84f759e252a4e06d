# Evaluation: test NLL of every run; for QM9 and QM9-positional, samples and their analysis; Table 2's
# released-weights row (import -> evaluate -> sample -> analyze) and its "Data" row.


rule import_pretrained:
    input:
        flow=from_basedir(config["pretrained"]["flow"]),
        dequantizer=from_basedir(config["pretrained"]["dequantizer"]),
    output:
        checkpoint=f"{OUT}/runs/qm9/{PRETRAINED}/nall/seed0/checkpoint.pt",
        config=f"{OUT}/runs/qm9/{PRETRAINED}/nall/seed0/config.yaml",
        info=f"{OUT}/runs/qm9/{PRETRAINED}/nall/seed0/import.json",
    log:
        f"{LOGS}/import_pretrained.log",
    benchmark:
        f"{OUT}/benchmarks/import_pretrained.tsv"
    params:
        run_dir=f"{OUT}/runs/qm9/{PRETRAINED}/nall/seed0",
        code=CODE,
    threads: 1
    resources:
        mem_mb=resources_for("default")["mem_mb"],
        runtime=resources_for("default")["runtime"],
        gpu=0,
    shell:
        "{ENF} import-en-flows --flow {input.flow:q} --dequantizer {input.dequantizer:q} --out {params.run_dir:q} "
        "> {log:q} 2>&1"


rule evaluate:
    input:
        checkpoint=f"{OUT}/runs/{CELL}/checkpoint.pt",
        test=test_file,
    output:
        f"{OUT}/eval/{CELL}/test.json",
    log:
        f"{LOGS}/evaluate/{CELL}.log",
    benchmark:
        f"{OUT}/benchmarks/evaluate/{CELL}.tsv"
    params:
        args=eval_args,
        code=CODE,
    threads: res("evaluate", "threads")
    resources:
        mem_mb=res("evaluate", "mem_mb"),
        runtime=res("evaluate", "runtime"),
        gpu=res("evaluate", "gpu"),
    shell:
        "OMP_NUM_THREADS={threads} {GPU_SLOT} {ENF} evaluate --checkpoint {input.checkpoint:q} --data {input.test:q} "
        "--out {output:q} {params.args} > {log:q} 2>&1"


rule sample:
    input:
        checkpoint=f"{OUT}/runs/{CELL}/checkpoint.pt",
    output:
        f"{OUT}/samples/{CELL}/samples.npz",
    log:
        f"{LOGS}/sample/{CELL}.log",
    benchmark:
        f"{OUT}/benchmarks/sample/{CELL}.tsv"
    params:
        args=sample_args,
        code=CODE,
    threads: res("sample", "threads")
    resources:
        mem_mb=res("sample", "mem_mb"),
        runtime=res("sample", "runtime"),
        gpu=res("sample", "gpu"),
    shell:
        "OMP_NUM_THREADS={threads} {GPU_SLOT} {ENF} sample --checkpoint {input.checkpoint:q} --out {output:q} "
        "{params.args} > {log:q} 2>&1"


rule analyze:
    input:
        samples=f"{OUT}/samples/{CELL}/samples.npz",
        reference=data_file("train"),
    output:
        json=f"{OUT}/samples/{CELL}/analysis.json",
        figures=report(
            directory(f"{OUT}/samples/{CELL}/figures"),
            patterns=["{name}.png"],
            caption="../report/samples.rst",
            category="Samples",
            subcategory="{dataset}",
            labels={"model": "{model}", "n_train": "{n_train}", "seed": "{seed}", "figure": "{name}"},
        ),
    log:
        f"{LOGS}/analyze/{CELL}.log",
    benchmark:
        f"{OUT}/benchmarks/analyze/{CELL}.tsv"
    params:
        code=CODE,
    threads: res("analyze", "threads")
    resources:
        mem_mb=res("analyze", "mem_mb"),
        runtime=res("analyze", "runtime"),
        gpu=0,
    shell:
        "OMP_NUM_THREADS={threads} {ENF} analyze --data {input.samples:q} --reference {input.reference:q} "
        "--out {output.json:q} --figures {output.figures:q} > {log:q} 2>&1"


rule analyze_data:
    input:
        test=f"{OUT}/data/qm9/test.npz",
    output:
        json=f"{OUT}/data_analysis/qm9/test.json",
        figures=directory(f"{OUT}/data_analysis/qm9/figures"),
    log:
        f"{LOGS}/analyze/data_qm9_test.log",
    benchmark:
        f"{OUT}/benchmarks/analyze/data_qm9_test.tsv"
    params:
        code=CODE,
    threads: res("analyze", "threads")
    resources:
        mem_mb=res("analyze", "mem_mb"),
        runtime=res("analyze", "runtime"),
        gpu=0,
    shell:
        "OMP_NUM_THREADS={threads} {ENF} analyze --data {input.test:q} --out {output.json:q} "
        "--figures {output.figures:q} > {log:q} 2>&1"
