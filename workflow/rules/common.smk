# Shared constants and every input/param function of the workflow (no rules here).
import hashlib
import importlib.util
import json
import os
import re
import shlex
import sys
from pathlib import Path

from snakemake.exceptions import WorkflowError


# -- locations and commands ---------------------------------------------------------------------------------

OUT = config["outdir"].rstrip("/")
# torch.compile's kernels, shared by every job of this outdir: only the first job of a kind pays the compile.
os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", str(Path(OUT, ".cache", "torchinductor").resolve()))
LOGS = f"{OUT}/logs"
BASEDIR = Path(workflow.basedir)
SCRIPTS = BASEDIR / "workflow" / "scripts"
PY = shlex.quote(sys.executable)
ENF = config["enf_command"] or f"{PY} -m enf"
GPU_SLOT = f"{PY} {shlex.quote(str(SCRIPTS / 'gpu_slot.py'))} --lock-dir {shlex.quote(OUT + '/.gpu_slots')} --"
PREPARE_RUN_DIR = f"{PY} {shlex.quote(str(SCRIPTS / 'prepare_run_dir.py'))}"
CONFIG_NAME = config["name"]
CONFIG_FILES = [str(f) for f in workflow.configfiles] or ["config/config.yaml"]
SETS = ("train", "valid", "test")
PRETRAINED = "released"  # the `model` wildcard of the authors' released QM9 weights (imported, not trained)



def from_basedir(path):
    """A path as given if it exists from the working directory, else relative to the Snakefile's folder."""
    p = Path(path)
    if p.is_absolute() or p.exists():
        return str(p)
    return str(BASEDIR / p)


# -- code versions (params, so that editing enf reruns what it affects) ------------------------------------

def _enf_dir():
    spec = importlib.util.find_spec("enf")
    if spec is None or not spec.submodule_search_locations:
        raise WorkflowError("the enf package is not importable by the python running snakemake "
                            f"({sys.executable}); install it (pip install -e .) or use its virtual environment")
    return Path(list(spec.submodule_search_locations)[0])


def _hash_files(paths):
    digest = hashlib.sha256()
    root = _enf_dir()
    for path in sorted(paths):
        digest.update(str(path.relative_to(root)).encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()[:12]


def _source_hash():
    _enf_dir()  # refuses, naming the python, when enf is not importable
    from enf.version import source_hash

    return source_hash()


# Data generation depends on these modules only, so that editing a model (or the training budgets in
# enf/data/datasets.py) does not regenerate data; `--forcerun data_mcmc data_qm9pack` does.
DATA_CODE_PARTS = ("data", "geometry.py", "figures.py", "io.py", "cli/data.py", "__init__.py")
DATA_CODE_EXCLUDE = ("data/datasets.py",)


def _data_hash():
    root = _enf_dir()
    files = []
    for part in DATA_CODE_PARTS:
        path = root / part
        files += sorted(path.rglob("*.py")) if path.is_dir() else ([path] if path.is_file() else [])
    return _hash_files([f for f in files if str(f.relative_to(root)) not in DATA_CODE_EXCLUDE])


# ENF_CODE_VERSION / ENF_DATA_CODE_VERSION pin the code versions (e.g. during a long run, so that cosmetic edits
# of enf rerun nothing; the tests pin them too, so that concurrent edits do not disturb their reruns).
if config["rerun_on_code_change"]:
    CODE = os.environ.get("ENF_CODE_VERSION") or _source_hash()
    DATA_CODE = os.environ.get("ENF_DATA_CODE_VERSION") or _data_hash()
else:
    CODE = DATA_CODE = "not tracked (rerun_on_code_change: false)"


# -- configuration access and cross-checks ------------------------------------------------------------------

EXPERIMENTS = config["experiments"]
MODELS = config["models"]
MLFLOW = config["mlflow"]
MLFLOW_EXPERIMENT = MLFLOW["experiment"] or f"enf-{CONFIG_NAME}"
TABLES = sorted({exp["table"] for exp in EXPERIMENTS.values()})


def _protocol_budgets(ds, sizes):
    """{size: budget} of the protocol for the training sizes `sizes` of experiment `ds`, from enf (DatasetSpec),
    so that the paper configuration does not repeat them."""
    if importlib.util.find_spec("enf") is None:
        raise WorkflowError(f"config: experiments.{ds}.budgets has no entry for the training size(s) "
                            f"{', '.join(sizes)} of experiments.{ds}.n_train, and enf, which declares the "
                            "protocol's, is not importable here; give them in the config")
    from enf.data.datasets import protocol_budgets

    return protocol_budgets(ds, sizes)


def _check_config():
    """Cross-references the JSON schema cannot express; each message names the key."""
    for ds, exp in EXPERIMENTS.items():
        exp["budgets"] = {str(k): v for k, v in (exp.get("budgets") or {}).items()}
        exp["columns"] = {str(k): str(v) for k, v in (exp.get("columns") or {}).items()}
        shown = [exp["columns"].get(str(n), str(n)) for n in exp["n_train"]]
        if len(set(shown)) != len(shown):
            raise WorkflowError(f"config: experiments.{ds}.columns maps two training sizes to one column")
        for model in exp["models"]:
            if model not in MODELS:
                raise WorkflowError(f"config: experiments.{ds}.models lists {model!r}, which is not a key "
                                    f"of models ({', '.join(MODELS)})")
            if model == PRETRAINED:
                raise WorkflowError(f"config: models.{PRETRAINED} is reserved for the released weights")
        missing = [str(n) for n in exp["n_train"] if str(n) not in exp["budgets"]]
        if missing:
            exp["budgets"].update(_protocol_budgets(ds, missing))
        if exp["table"] in ("table2", "table3") and "sample" not in exp:
            raise WorkflowError(f"config: experiments.{ds}.sample is required for {exp['table']} "
                                "(stability / JS metrics come from samples)")


_check_config()


def pretrained_enabled():
    """The released-weights chain runs when enabled (auto: weights present and enf can import them)."""
    pre = config["pretrained"]
    if "qm9" not in EXPERIMENTS or pre["enabled"] is False:
        return False
    available = Path(from_basedir(pre["flow"])).is_file() and Path(from_basedir(pre["dequantizer"])).is_file()
    if pre["enabled"] is True and not available:
        raise WorkflowError("config: pretrained.enabled is true but the weights "
                            f"({pre['flow']}, {pre['dequantizer']}) are missing; "
                            "set pretrained.enabled to auto or false")
    return available


PRETRAINED_ON = pretrained_enabled()
DATA_ROW_ON = "qm9" in EXPERIMENTS and config["data_reference"]["enabled"]
LJ13_CHECK_ON = config["data"].get("lj13_check", {}).get("enabled", True)  # `enf data lj13` runs it


def resources_for(name, dataset=None):
    """Resources of a rule: resources.default < resources.<name> < experiments.<ds>.resources (train)."""
    res = {"threads": 1, "mem_mb": 2000, "runtime": 60, "gpu": 0}
    res.update(config["resources"].get("default", {}))
    res.update(config["resources"].get(name, {}))
    if name == "train" and dataset is not None:
        res.update(EXPERIMENTS.get(dataset, {}).get("resources", {}))
    return res


def res(name, key):
    """A resource value as a function of the wildcards (train: per data set)."""
    return lambda wc: resources_for(name, getattr(wc, "dataset", None))[key]


# -- paths ----------------------------------------------------------------------------------------------------

def data_dir(dataset):
    return f"{OUT}/data/{dataset}"


def data_file(split):
    return lambda wc: f"{data_dir(wc.dataset)}/{split}.npz"


def test_file(wc):
    """The test split an evaluation reads: the released weights are judged on the full QM9 test split (or
    `pretrained.evaluate.n` molecules drawn from it at random by `enf evaluate --n`), trained models on their configuration's (possibly cut) test split."""
    if wc.model == PRETRAINED:
        return f"{OUT}/data_full/{wc.dataset}/test.npz"
    return f"{data_dir(wc.dataset)}/test.npz"


def cell_path(kind, dataset, model, n_train, seed, name):
    """{OUT}/<kind>/<dataset>/<model>/n<n_train>/seed<seed>/<name>."""
    return f"{OUT}/{kind}/{dataset}/{model}/n{n_train}/seed{seed}/{name}"


CELL = "{dataset}/{model}/n{n_train}/seed{seed}"


def cells(table=None, dataset=None, model=None, trained_only=False):
    """The (dataset, model, n_train, seed) cells of the configuration, filtered; released weights included."""
    out = []
    for ds, exp in EXPERIMENTS.items():
        if (table and exp["table"] != table) or (dataset and ds != dataset):
            continue
        for m in exp["models"]:
            if model and m != model:
                continue
            for n in exp["n_train"]:
                for seed in config["seeds"]:
                    out.append((ds, m, str(n), str(seed)))
        if ds == "qm9" and PRETRAINED_ON and not trained_only and model in (None, PRETRAINED):
            out.append(("qm9", PRETRAINED, "all", "0"))
    return out


def has_samples(dataset):
    return "sample" in EXPERIMENTS.get(dataset, {})


def cell_outputs(cell, tracking=True):
    """Every file a finished cell leaves: run, evaluation, samples analysis, MLflow marker."""
    ds, m, n, s = cell
    files = [cell_path("eval", ds, m, n, s, "test.json")]
    files.append(cell_path("runs", ds, m, n, s, "import.json" if m == PRETRAINED else "metrics.json"))
    if has_samples(ds):
        files.append(cell_path("samples", ds, m, n, s, "analysis.json"))
    if tracking and MLFLOW["enabled"]:
        files.append(cell_path("tracking", ds, m, n, s, "mlflow.json"))
    return files


def table_files(table):
    return [f"{OUT}/tables/{table}.{ext}" for ext in ("csv", "md", "tex")]


def figure_files(table):
    return [f"{OUT}/figures/{table}_nll.png"]


# -- command-line arguments -------------------------------------------------------------------------------

def _set_args(sets):
    return [f"--set={k}={json.dumps(v) if not isinstance(v, str) else v}" for k, v in sets.items()]


def data_resources(dataset):
    return "data_qm9" if dataset.startswith("qm9") else "data"


def subset_of(dataset):
    """{split: N} of data.<set>.subset (empty: the splits as generated)."""
    return {k: v for k, v in (config["data"].get(dataset, {}).get("subset") or {}).items() if v}


def subset_args(dataset):
    return " ".join(f"--{split} {n}" for split, n in subset_of(dataset).items())


def data_args(dataset):
    args = [str(a) for a in config["data"].get(dataset, {}).get("args", [])]
    if dataset == "lj13":
        args += [str(a) for a in config["data"].get("lj13_check", {}).get("args", [])]
        if not LJ13_CHECK_ON:
            args.append("--no-openmm-check")
    return " ".join(shlex.quote(a) for a in args)


def train_arg_list(wc):
    """The `enf train` arguments of a cell (without --out)."""
    exp = EXPERIMENTS[wc.dataset]
    mcfg = MODELS[wc.model]
    exp_budget = exp.get("budgets", {}).get(wc.n_train, {})
    model_budget = (mcfg.get("budgets") or {}).get(wc.dataset, {}).get(wc.n_train) or {}
    budget = {**exp_budget, **model_budget}
    args = ["--dataset", wc.dataset, "--model", mcfg.get("model", wc.model), "--data", data_dir(wc.dataset),
            "--seed", wc.seed, "--no-progress", "--no-test"]  # the evaluate rule measures the test split
    if wc.n_train != "all":
        args += ["--n-train", wc.n_train]
    if "epochs" in budget:
        args += ["--epochs", str(budget["epochs"])]
    sets = {}
    for key in ("batch_size", "eval_every", "n_valid"):
        if key in budget:
            sets[f"train.{key}"] = budget[key]
    sets.update(exp.get("set", {}))
    sets.update(mcfg.get("set", {}))
    sets.update(exp_budget.get("set") or {})     # a cell's own settings, the most specific
    sets.update(model_budget.get("set") or {})
    args += _set_args(sets)
    args += [str(a) for a in mcfg.get("args", [])]
    if config["device"] != "auto":
        args += ["--device", config["device"]]
    return args


def train_args(wc):
    return " ".join(shlex.quote(a) for a in train_arg_list(wc))


def state_key(wc):
    """Identifies the training a resumable state belongs to (arguments and code): a new key starts afresh."""
    text = json.dumps([train_arg_list(wc), CODE])
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _check_train_settings():
    """Resolve the enf config of every trained cell now, so that a bad key or value in experiments.<set>.set,
    models.<model>.set or .args fails the dry run, naming the config key, instead of the job."""
    if importlib.util.find_spec("enf") is None:
        return  # enf runs elsewhere (enf_command): its jobs check their own settings
    from types import SimpleNamespace

    from enf.cli.train import config_from_argv
    from enf.errors import EnfError

    checked = set()
    for ds, exp in EXPERIMENTS.items():
        for m in exp["models"]:
            for n in exp["n_train"]:
                wc = SimpleNamespace(dataset=ds, model=m, n_train=str(n), seed=str((config["seeds"] or [0])[0]))
                argv = tuple(train_arg_list(wc))
                if argv in checked:
                    continue
                checked.add(argv)
                try:
                    config_from_argv([*argv, "--out", cell_path("runs", ds, m, n, wc.seed, "")])
                except EnfError as err:
                    raise WorkflowError(f"config: {_settings_culprit(ds, m, str(n), str(err))}: {err}") from None


def _budget_sources(where, budget):
    """(config key, {enf setting: value}) of one budget: its train.* keys and its own `set`."""
    budget = budget or {}
    return [(where, {f"train.{k}": v for k, v in budget.items() if k != "set"}),
            (f"{where}.set", budget.get("set") or {})]


def _settings_culprit(ds, m, n, message):
    """The workflow config key whose settings an enf refusal names (the first that holds the key it names)."""
    sources = [(f"experiments.{ds}.set", EXPERIMENTS[ds].get("set") or {}),
               (f"models.{m}.set", MODELS[m].get("set") or {}),
               *_budget_sources(f"experiments.{ds}.budgets.{n}", EXPERIMENTS[ds].get("budgets", {}).get(n)),
               *_budget_sources(f"models.{m}.budgets.{ds}.{n}",
                                ((MODELS[m].get("budgets") or {}).get(ds, {}).get(n)))]
    for where, sets in sources:
        for key in sets:
            if re.search(rf"(?<![\w.]){re.escape(str(key))}(?![\w])", message) or message.startswith(f"--set '{key}="):
                return where
    if MODELS[m].get("args"):
        return f"models.{m}.args or the settings of experiments.{ds} (n_train {n})"
    return f"the settings of experiments.{ds} and models.{m} (n_train {n})"


_check_train_settings()


def eval_settings(dataset, model):
    return config["pretrained"]["evaluate"] if model == PRETRAINED else EXPERIMENTS[dataset]["evaluate"]


def sample_settings(dataset, model):
    return config["pretrained"]["sample"] if model == PRETRAINED else EXPERIMENTS[dataset]["sample"]


def eval_args(wc):
    ev = eval_settings(wc.dataset, wc.model)
    args = ["--seed", wc.seed]
    if ev.get("trace"):
        args += ["--trace", ev["trace"]]
    args += ["--probes", str(ev.get("probes", 1))]
    for key, flag in (("n", "--n"), ("batch_size", "--batch-size")):
        if ev.get(key):
            args += [flag, str(ev[key])]
    if config["device"] != "auto":
        args += ["--device", config["device"]]
    return " ".join(shlex.quote(a) for a in args)


def sample_args(wc):
    smp = sample_settings(wc.dataset, wc.model)
    args = ["--n", str(smp["n"]), "--seed", wc.seed, "--batch-size", str(smp.get("batch_size", 500))]
    if config["device"] != "auto":
        args += ["--device", config["device"]]
    return " ".join(shlex.quote(a) for a in args)


def label_of(model):
    return config["pretrained"]["label"] if model == PRETRAINED else MODELS[model]["label"]


# -- MLflow -------------------------------------------------------------------------------------------------

MLFLOW_ARGS = (f"--uri {shlex.quote(MLFLOW['tracking_uri'])} --experiment {shlex.quote(MLFLOW_EXPERIMENT)} "
               f"--attempts {MLFLOW['attempts']}")
TRACK = f"{PY} {shlex.quote(str(SCRIPTS / 'track_mlflow.py'))}"
# The live watcher of a training job (`track_mlflow.py live`), started by the train rule beside `enf train`. A global,
# not a param: its settings (store, interval) may change without rerunning trainings.
if MLFLOW["enabled"] and MLFLOW["live"]:
    TRACK_LIVE = (f"{TRACK} live {MLFLOW_ARGS} --artifact-root {shlex.quote(MLFLOW['artifact_root'])} "
                  f"--interval {MLFLOW['live_interval']}")
else:
    TRACK_LIVE = f"{TRACK} live --off {MLFLOW_ARGS}"


def track_inputs(wc):
    """What the MLflow logging of one cell reads."""
    ds, m, n, s = wc.dataset, wc.model, wc.n_train, wc.seed
    files = {"init": f"{OUT}/tracking/experiment.json",
             "evaluation": cell_path("eval", ds, m, n, s, "test.json")}
    if m == PRETRAINED:
        files["run"] = cell_path("runs", ds, m, n, s, "import.json")
    else:
        files["run"] = cell_path("runs", ds, m, n, s, "metrics.json")
        files["history"] = cell_path("runs", ds, m, n, s, "history.csv")
        files["log"] = f"{LOGS}/train/{ds}/{m}/n{n}/seed{s}.log"
    if has_samples(ds):
        files["analysis"] = cell_path("samples", ds, m, n, s, "analysis.json")
        files["samples"] = cell_path("samples", ds, m, n, s, "samples.npz")
    return files


def job_key(wc):
    """What identifies a cell's training job in MLflow (tag job_key): one live run per key."""
    return f"{CONFIG_NAME}:{wc.dataset}/{wc.model}/n{wc.n_train}/seed{wc.seed}"


def run_name(wc):
    return f"{CONFIG_NAME}/{wc.dataset}/{wc.model}/n{wc.n_train}/seed{wc.seed}"


def live_args(wc):
    """The live watcher's arguments of a cell: run name, job key and the tags that do not change with the config."""
    wildcards = f"dataset={wc.dataset},model={wc.model},n_train={wc.n_train},seed={wc.seed}"
    tags = {"config_name": CONFIG_NAME, "dataset": wc.dataset, "model": wc.model, "n_train": wc.n_train,
            "seed": wc.seed, "wildcards": wildcards}
    args = ["--name", run_name(wc), "--job-key", job_key(wc)] + [f"--tag={k}={v}" for k, v in tags.items()]
    return " ".join(shlex.quote(a) for a in args)


def track_args(wc, input):
    """Tags, params and attachments of the MLflow runs of one cell."""
    ds, m, n, s = wc.dataset, wc.model, wc.n_train, wc.seed
    tags = {"config_name": CONFIG_NAME, "config_files": ",".join(CONFIG_FILES), "dataset": ds, "model": m,
            "n_train": n, "seed": s, "wildcards": f"dataset={ds},model={m},n_train={n},seed={s}",
            "table": EXPERIMENTS[ds]["table"], "label": label_of(m), "code_source_hash": CODE,
            "outdir": OUT}
    args = [f"--tag={k}={v}" for k, v in tags.items()]
    args += [f"--param=config_name={CONFIG_NAME}", f"--param=budget_note={config['budget_note']}"]
    args += ["--run-dir", str(Path(input.run).parent), "--name", run_name(wc),
             "--job-key", job_key(wc), "--evaluation", input.evaluation,
             "--rule", "import_pretrained" if m == PRETRAINED else "train"]
    if "analysis" in input.keys():
        args += ["--analysis", input.analysis]
        if MLFLOW["log_samples"]:
            args += ["--samples", input.samples]
    if "log" in input.keys():
        args += ["--log", input.log]
    if MLFLOW["log_checkpoints"]:
        args.append("--checkpoint")
    return " ".join(shlex.quote(a) for a in args)


# -- tables -------------------------------------------------------------------------------------------------

def table_manifest(table):
    """One record per cell of a table: where its numbers are and what row/column it fills."""
    rows = []
    for ds, m, n, s in cells(table=table):
        column = "all" if m == PRETRAINED else EXPERIMENTS[ds]["columns"].get(n, n)
        rec = {"dataset": ds, "model": m, "label": label_of(m), "n_train": n, "column": column, "seed": int(s),
               "evaluation": cell_path("eval", ds, m, n, s, "test.json"),
               "run": cell_path("runs", ds, m, n, s, "import.json" if m == PRETRAINED else "metrics.json"),
               "config": cell_path("runs", ds, m, n, s, "config.yaml"),
               "analysis": cell_path("samples", ds, m, n, s, "analysis.json") if has_samples(ds) else None,
               "kind": "released" if m == PRETRAINED else "trained"}
        rows.append(rec)
    if table == "table2" and DATA_ROW_ON:
        rows.append({"dataset": "qm9", "model": "data", "label": config["data_reference"]["label"],
                     "n_train": "all", "column": "all", "seed": 0, "evaluation": None, "run": None, "config": None,
                     "analysis": f"{OUT}/data_analysis/qm9/test.json", "kind": "data"})
    return rows


def table_inputs(wc):
    files = []
    for rec in table_manifest(wc.table):
        files += [rec[k] for k in ("evaluation", "run", "config", "analysis") if rec.get(k)]
    return files


def table_meta(table):
    """What the footer says about the configuration that produced a table."""
    exps = {ds: {"n_train": [str(n) for n in exp["n_train"]], "budgets": exp.get("budgets", {}),
                 "subset": subset_of(ds), "data_args": data_args(ds),
                 "columns": exp["columns"],
                 "evaluate": exp.get("evaluate", {}), "sample": exp.get("sample"), "set": exp.get("set", {})}
            for ds, exp in EXPERIMENTS.items() if exp["table"] == table}
    return {"table": table, "config_name": CONFIG_NAME, "config_files": CONFIG_FILES,
            "budget_note": config["budget_note"], "seeds": config["seeds"], "experiments": exps,
            "pretrained": config["pretrained"] if (table == "table2" and PRETRAINED_ON) else None,
            "models": {m: MODELS[m]["label"] for m in MODELS},
            "model_settings": {m: {k: MODELS[m][k] for k in ("set", "args", "model", "budgets") if MODELS[m].get(k)}
                               for ds, exp in EXPERIMENTS.items() if exp["table"] == table
                               for m in exp["models"]}}


def all_targets():
    files = []
    for table in TABLES:
        files += table_files(table)
        if table == "table1":
            files += figure_files(table)
        for cell in cells(table=table):
            files += cell_outputs(cell)
    for ds in EXPERIMENTS:  # data figures (and the LJ13 OpenMM cross-check) for the report
        if ds in ("dw4", "lj13"):
            files.append(f"{OUT}/data_full/{ds}/energy_hist.png")
    return files


wildcard_constraints:
    dataset="|".join(sorted(EXPERIMENTS)),
    model="|".join(sorted([*MODELS, PRETRAINED])),
    n_train="[0-9]+|all",
    seed="[0-9]+",
    table="table[0-9]+",
