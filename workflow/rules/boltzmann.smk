# Beyond the paper: Boltzmann-generator evaluation of every DW4/LJ13 run (`enf evaluate --boltzmann N`:
# reverse ESS from N model samples, forward ESS on the test split, energy and pair-distance histograms as numbers
# and a figure) and a table of the ESS figures. Switched on by `boltzmann.enabled`.

BOLTZMANN = config.get("boltzmann") or {}
BOLTZMANN_ON = bool(BOLTZMANN.get("enabled", False))


def boltzmann_cells():
    """The trained DW4/LJ13 cells that get a Boltzmann evaluation."""
    wanted = BOLTZMANN.get("datasets", ["dw4", "lj13"])
    found = [c for c in cells(trained_only=True) if c[0] in wanted] if BOLTZMANN_ON else []
    for ds in sorted({c[0] for c in found}):
        boltzmann_samples(ds)  # a mapping without this data set fails the dry run, by name
    return found


def boltzmann_file(cell, name="eval.json"):
    ds, m, n, s = cell
    return cell_path("boltzmann", ds, m, n, s, name)


def boltzmann_targets():
    """What `rule all` adds when the switch is on: every cell's Boltzmann evaluation and the ESS table."""
    if not BOLTZMANN_ON or not boltzmann_cells():
        return []
    return [boltzmann_file(c) for c in boltzmann_cells()] + [f"{OUT}/tables/ess.{ext}" for ext in ("csv", "md")]


def boltzmann_samples(dataset):
    """boltzmann.n_samples for a data set: one number for all, or a mapping that must name each data set."""
    n = BOLTZMANN.get("n_samples", 1000)
    if not isinstance(n, dict):
        return int(n)
    if dataset not in n:
        raise WorkflowError(f"config: boltzmann.n_samples gives no number for {dataset!r} (it gives "
                            f"{', '.join(sorted(n))}); add one or give a single number")
    return int(n[dataset])


def boltzmann_args(wc):
    ev = eval_settings(wc.dataset, wc.model)
    args = ["--seed", wc.seed, "--boltzmann", str(boltzmann_samples(wc.dataset)),
            "--boltzmann-trace", BOLTZMANN.get("trace", "exact")]
    if ev.get("trace"):
        args += ["--trace", ev["trace"]]
    n_data = BOLTZMANN.get("n_data")
    if n_data:
        args += ["--n", str(n_data)]
    if ev.get("batch_size"):
        args += ["--batch-size", str(ev["batch_size"])]
    if config["device"] != "auto":
        args += ["--device", config["device"]]
    return " ".join(shlex.quote(a) for a in args)


def ess_manifest():
    return [{"dataset": ds, "model": m, "label": label_of(m), "n_train": n, "seed": int(s),
             "boltzmann": boltzmann_file((ds, m, n, s))} for ds, m, n, s in boltzmann_cells()]


rule boltzmann:
    input:
        checkpoint=f"{OUT}/runs/{CELL}/checkpoint.pt",
        test=data_file("test"),
    output:
        json=f"{OUT}/boltzmann/{CELL}/eval.json",
        figure=report(
            f"{OUT}/boltzmann/{CELL}/eval_boltzmann.png",
            caption="../report/boltzmann.rst",
            category="Boltzmann generator",
            subcategory="{dataset}",
            labels={"model": "{model}", "n_train": "{n_train}", "seed": "{seed}"},
        ),
    log:
        f"{LOGS}/boltzmann/{CELL}.log",
    params:
        args=boltzmann_args,
        code=CODE,
    threads: res("evaluate", "threads")
    resources:
        mem_mb=res("evaluate", "mem_mb"),
        runtime=res("evaluate", "runtime"),
        gpu=res("evaluate", "gpu"),
    shell:
        "OMP_NUM_THREADS={threads} {GPU_SLOT} {ENF} evaluate --checkpoint {input.checkpoint:q} --data {input.test:q} "
        "--out {output.json:q} {params.args} > {log:q} 2>&1"


rule ess_table:
    input:
        [boltzmann_file(c) for c in boltzmann_cells()],
    output:
        csv=report(f"{OUT}/tables/ess.csv", caption="../report/ess_table.rst", category="Tables",
                   labels={"table": "ess", "format": "csv"}),
        md=f"{OUT}/tables/ess.md",
    log:
        f"{LOGS}/tables/ess.log",
    params:
        manifest=ess_manifest(),
        config_name=CONFIG_NAME,
        budget_note=config["budget_note"],
    localrule: True
    resources:
        mem_mb=res("tables", "mem_mb"),
        runtime=res("tables", "runtime"),
        gpu=0,
    script:
        "../scripts/make_ess_table.py"
