# E(n) Equivariant Normalizing Flows: from data to the paper's Tables 1-3 (see workflow/README.md).
#   snakemake --workflow-profile profiles/local                      # paper protocol (config/config.yaml)
#   snakemake --workflow-profile profiles/local --configfile config/quick.yaml
from snakemake.exceptions import WorkflowError
from snakemake.utils import min_version, validate

min_version("9.0")


configfile: "config/config.yaml"


try:
    validate(config, "workflow/schemas/config.schema.yaml")
except WorkflowError as err:  # name the offending key in one line instead of printing the whole schema
    cause = err.__context__  # the jsonschema ValidationError
    if not hasattr(cause, "json_path"):
        raise
    where = cause.json_path.removeprefix("$.") if cause.json_path != "$" else "the top level"
    raise WorkflowError(f"invalid config at {where}: {cause.message} (see workflow/schemas/config.schema.yaml)") from None


report: "workflow/report/workflow.rst"


include: "workflow/rules/flow_matching.smk"  # before common.smk: extends config with the flow-matching rows
include: "workflow/rules/common.smk"
include: "workflow/rules/data.smk"
include: "workflow/rules/train.smk"
include: "workflow/rules/evaluate.smk"
include: "workflow/rules/boltzmann.smk"
include: "workflow/rules/tracking.smk"
include: "workflow/rules/tables.smk"


rule all:
    input:
        all_targets() + boltzmann_targets(),
    default_target: True
    localrule: True
