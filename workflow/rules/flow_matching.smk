# Beyond the paper: the `flow_matching` switch adds rows trained by flow matching (enf train
# --objective flow_matching) to the tables of the chosen experiments, beside the paper's rows. Included BEFORE
# common.smk: it only extends `config` (models and experiments.<ds>.models), so every rule, table, tracking and
# named target of the workflow treats the new rows like any other model.


import sys
from pathlib import Path

sys.path.insert(0, str(Path(workflow.current_basedir).parent / "scripts"))
from flow_matching_row import flow_matching_experiments, flow_matching_row  # noqa: E402


def _add_flow_matching_rows():
    row = flow_matching_row(config)
    if row is None:
        return
    key, entry = row
    if key in config["models"]:
        raise WorkflowError(f"config: flow_matching.model_key {key!r} is already a key of models; choose another")
    config["models"][key] = entry
    for ds in flow_matching_experiments(config):
        models = config["experiments"][ds]["models"]
        if key not in models:
            models.append(key)


_add_flow_matching_rows()
