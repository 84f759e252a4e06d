# Beyond the paper: the `flow_matching` switch adds rows trained by flow matching (enf train
# --objective flow_matching) to the tables of the chosen experiments, beside the paper's rows. Included BEFORE
# common.smk: it only extends `config` (models and experiments.<ds>.models), so every rule, table, tracking and
# named target of the workflow treats the new rows like any other model.


def _add_flow_matching_rows():
    fm = config.get("flow_matching") or {}
    if not fm.get("enabled", False):
        return
    key = fm.get("model_key", "enf_fm")
    if key in config["models"]:
        raise WorkflowError(f"config: flow_matching.model_key {key!r} is already a key of models; choose another")
    sets = {"flow_matching.pairing": fm.get("pairing", "equivariant_ot"),
            "flow_matching.sigma": fm.get("sigma", 0.0), **(fm.get("set") or {})}
    config["models"][key] = {"label": fm.get("label", "E-NF, flow matching (ours)"), "model": fm.get("model", "enf"),
                             "args": ["--objective", "flow_matching"], "set": sets,
                             "budgets": {ds: {str(n): b for n, b in per_n.items()}
                                         for ds, per_n in (fm.get("budgets") or {}).items()}}
    for ds in fm.get("experiments", ["dw4", "lj13", "qm9_positional"]):
        if ds not in config["experiments"]:
            continue  # this configuration does not run that experiment
        models = config["experiments"][ds]["models"]
        if key not in models:
            models.append(key)


_add_flow_matching_rows()
