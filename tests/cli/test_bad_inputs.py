"""Hostile and mistaken input to every command: one line naming the culprit, exit status 2, nothing changed.

Each case runs one command against a shared tiny world (DW4-shaped data, a trained run, crafted files) and checks
the exit status, that stderr is one line naming the culprit without a traceback, and that every file of the world
and of the case's own folder is byte-for-byte what it was (nothing written, nothing created).
"""

from __future__ import annotations

import hashlib
import json
import os
import pickle
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch

from enf.cli import main
from enf.errors import EnfError
from enf.io import atomic_path, write_json
from enf.models import checkpoints

ROOT = Path(__file__).resolve().parents[2]
RELEASE = ROOT / "resources" / "pretrained" / "en_flows_qm9"
FAST = ["--set", "model.hidden_nf=8", "--set", "model.n_layers=1", "--set", "train.batch_size=16",
        "--set", "flow.rtol=1e-3", "--set", "flow.atol=1e-3", "--no-progress"]


class Malicious:
    """Unpickling this opens (creates) `marker`: stands for any code a hostile pickle could run."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self) -> tuple:
        return (open, (self.marker, "w"))


@dataclass
class World:
    root: Path
    data: Path
    run: Path

    @property
    def ckpt(self) -> str:
        return str(self.run / "checkpoint.pt")

    @property
    def test(self) -> str:
        return str(self.data / "test.npz")

    def __truediv__(self, name: str) -> str:
        return str(self.root / name)

    def train(self, out: str, *extra: str) -> list[str]:
        return ["train", "--dataset", "dw4", "--model", "enf", "--data", str(self.data), "--n-train", "32",
                "--seed", "0", "--epochs", "1", "--out", out, *FAST, *extra]

    def bare_train(self, out: str, *extra: str) -> list[str]:
        """`train` without the --set options of FAST (which give the model and train sections keys)."""
        return ["train", "--dataset", "dw4", "--data", str(self.data), "--out", out, "--no-progress", *extra]

    def evaluate(self, *extra: str, ckpt: str | None = None, out: str | None = None) -> list[str]:
        return ["evaluate", "--checkpoint", ckpt or self.ckpt, "--data", self.test, "--out",
                out or self / "new/eval.json", *extra]


def _blobs(rng: np.random.Generator, n: int) -> np.ndarray:
    """DW4-shaped Gaussian blobs with the centre of mass removed (as tests/conftest.py makes them)."""
    x = rng.normal(size=(n, 4, 2)) * 1.5
    return (x - x.mean(axis=1, keepdims=True)).astype(np.float32)


def _split_files(folder: Path, make: Callable[[str], dict[str, np.ndarray]] | None = None,
                 raw: bytes | None = None) -> Path:
    folder.mkdir(parents=True)
    for split in ("train", "valid", "test"):
        if raw is not None:
            (folder / f"{split}.npz").write_bytes(raw)
        else:
            np.savez(folder / f"{split}.npz", **make(split))
    return folder


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> World:
    """Tiny data, a trained run (seed 0) and crafted bad files, made once for the module."""
    root = tmp_path_factory.mktemp("world")
    rng = np.random.default_rng(0)
    data = _split_files(root / "dw4", lambda s: {"positions": _blobs(rng, 64 if s == "train" else 32)})
    w = World(root, data, root / "run")
    assert main(w.train(str(w.run))) == 0
    payload = checkpoints.load(w.run / "checkpoint.pt")

    wide = json.loads(json.dumps(payload["config"]))
    wide["model"]["hidden_nf"] = 16  # the weights are 8 wide
    checkpoints.save(root / "wide.pt", {**payload, "config": wide})
    bad_cfg = json.loads(json.dumps(payload["config"]))
    bad_cfg["train"]["lr"] = "abc"
    checkpoints.save(root / "badcfg.pt", {**payload, "config": bad_cfg})
    torch.save({**payload, "extra": Malicious(root / "pwned")}, root / "evil.pt")
    with open(root / "evil.pkl", "wb") as handle:
        pickle.dump({"format": checkpoints.FORMAT, "extra": Malicious(root / "pwned")}, handle)
    (root / "garbage.pt").write_bytes(b"not a checkpoint at all")
    torch.save({"weights": torch.zeros(3)}, root / "foreign.pt")
    evil_run = root / "evil_run" / "state"
    evil_run.mkdir(parents=True)
    torch.save({"format": checkpoints.FORMAT, "config_hash": "x", "rng": Malicious(root / "pwned")},
               evil_run / "last.pt")

    _split_files(root / "corrupt", raw=b"PK\x03\x04 truncated")
    _split_files(root / "shaped", lambda s: {"positions": np.zeros((40, 13, 3), np.float32)})
    _split_files(root / "wrong", lambda s: {"coords": np.zeros((40, 4, 2), np.float32)})
    nan = np.zeros((40, 4, 2), np.float32)
    nan[7, 1, 0] = np.nan
    _split_files(root / "nan", lambda s: {"positions": nan})
    (root / "empty").mkdir()
    (root / "bad.yaml").write_text("train: {lr: [1, 2\n")
    (root / "section.yaml").write_text("train: 1\n")
    (root / "a_file").write_text("x")
    (root / "a_dir").mkdir()
    os.link(w.run / "checkpoint.pt", root / "hardlink.json")
    (root / "symlink.json").symlink_to(w.run / "checkpoint.pt")
    with open(root / "positions.json", "wb") as handle:  # an .npz under a .json name
        np.savez(handle, positions=np.zeros((3, 5, 3)))
    np.savez(root / "no_positions.npz", one_hot=np.zeros((2, 3, 5)))
    imp = root / "import"
    imp.mkdir()
    shutil.copy(RELEASE / "args.json", imp / "config.yaml")
    shutil.copy(RELEASE / "flow.pt", imp / "flow.pt")
    shutil.copy(RELEASE / "dequantizer.pt", imp / "dequantizer.pt")
    shutil.copy(RELEASE / "args.json", imp / "args.json")
    state = torch.load(RELEASE / "flow.pt", map_location="cpu", weights_only=True)
    state.pop("transformations.1.odefunc.dynamics.egnn.gcl_3.att_mlp.0.weight")
    torch.save(state, imp / "flow_missing.pt")
    (imp / "not_a_state.pt").write_bytes(b"not a torch file")
    qm9_source = root / "qm9_source"
    qm9_source.mkdir()
    for i in (1, 2, 3):
        (qm9_source / f"qm9_part{i}.csv").write_text("not,a,table\n")
    return w


def _snapshot(*folders: Path) -> dict[str, str]:
    """sha256 of every file and a marker for every directory and link under `folders`."""
    out = {}
    for folder in folders:
        for path in sorted(folder.rglob("*")):
            if path.is_symlink():
                out[str(path)] = f"link -> {os.readlink(path)}"
            elif path.is_dir():
                out[str(path)] = "dir"
            else:
                out[str(path)] = hashlib.sha256(path.read_bytes()).hexdigest()
    return out


def _run(argv: list[str]) -> int:
    try:
        return main(argv)
    except SystemExit as stop:  # argparse's own refusals
        return int(stop.code or 0)


# (id, argv from the world and the case's folder, text the message must hold, the culprit it must name)
Case = tuple[str, Callable[[World, Path], list[str]], str, Callable[[World, Path], str]]
CASES: list[Case] = [
    # a checkpoint can run arbitrary code: every load is weights-only, anything else is refused
    ("evaluate-malicious-checkpoint", lambda w, t: w.evaluate(ckpt=w / "evil.pt"), "refused",
     lambda w, t: w / "evil.pt"),
    ("sample-malicious-checkpoint", lambda w, t: ["sample", "--checkpoint", w / "evil.pt", "--n", "2", "--out",
                                                  str(t / "s.npz")], "python -m enf.models.checkpoints --trust",
     lambda w, t: w / "evil.pt"),
    ("evaluate-malicious-plain-pickle", lambda w, t: w.evaluate(ckpt=w / "evil.pkl"), "refused",
     lambda w, t: w / "evil.pkl"),
    ("resume-malicious-state", lambda w, t: w.train(w / "evil_run"), "refused",
     lambda w, t: str(Path(w / "evil_run") / "state" / "last.pt")),
    # outputs that are inputs
    ("evaluate-out-is-checkpoint", lambda w, t: w.evaluate(out=w.ckpt), "may not overwrite", lambda w, t: w.ckpt),
    ("evaluate-out-is-data", lambda w, t: w.evaluate(out=w.test), "may not overwrite", lambda w, t: w.test),
    ("evaluate-per-sample-is-checkpoint", lambda w, t: w.evaluate("--per-sample", w.ckpt), "may not overwrite",
     lambda w, t: "--per-sample"),
    ("evaluate-out-hard-link-of-checkpoint", lambda w, t: w.evaluate(out=w / "hardlink.json"), "--checkpoint",
     lambda w, t: w / "hardlink.json"),
    ("evaluate-out-symlink-to-checkpoint", lambda w, t: w.evaluate(out=w / "symlink.json"), "--checkpoint",
     lambda w, t: w / "symlink.json"),
    ("evaluate-two-outputs-one-file", lambda w, t: w.evaluate("--per-sample", str(t / "e.json"),
                                                              out=str(t / "e.json")), "its own path",
     lambda w, t: str(t / "e.json")),
    ("sample-out-is-checkpoint", lambda w, t: ["sample", "--checkpoint", w.ckpt, "--n", "2", "--out", w.ckpt],
     "may not overwrite", lambda w, t: w.ckpt),
    ("train-out-is-data", lambda w, t: w.train(str(w.data)), "may not overwrite", lambda w, t: str(w.data)),
    ("train-config-inside-out", lambda w, t: w.train(str(w.run), "--config", str(w.run / "config.yaml")),
     "may not overwrite", lambda w, t: str(w.run / "config.yaml")),
    ("analyze-out-is-data", lambda w, t: ["analyze", "--data", w / "positions.json", "--out", w / "positions.json",
                                          "--no-figures"], "may not overwrite", lambda w, t: w / "positions.json"),
    ("import-out-holds-args", lambda w, t: ["import-en-flows", "--flow", w / "import/flow.pt", "--dequantizer",
                                            w / "import/dequantizer.pt", "--args", w / "import/config.yaml",
                                            "--out", w / "import"], "may not overwrite",
     lambda w, t: w / "import/config.yaml"),
    ("data-out-is-source", lambda w, t: ["data", "qm9", "--source", w / "qm9_source", "--out", w / "qm9_source"],
     "may not overwrite", lambda w, t: w / "qm9_source"),
    # outputs that cannot be written
    ("evaluate-out-under-a-file", lambda w, t: w.evaluate(out=w / "a_file/e.json"), "not a directory",
     lambda w, t: w / "a_file"),
    ("train-out-under-a-file", lambda w, t: w.train(w / "a_file/run"), "not a directory", lambda w, t: w / "a_file"),
    ("train-out-is-a-file", lambda w, t: w.train(w / "a_file"), "not a directory", lambda w, t: w / "a_file"),
    ("evaluate-out-is-a-directory", lambda w, t: w.evaluate(out=w / "a_dir"), "is a directory",
     lambda w, t: w / "a_dir"),
    ("sample-out-is-a-directory", lambda w, t: ["sample", "--checkpoint", w.ckpt, "--n", "2", "--out", w / "a_dir"],
     "is a directory", lambda w, t: w / "a_dir"),
    ("analyze-figures-is-a-file", lambda w, t: ["analyze", "--data", w / "positions.json", "--out",
                                                str(t / "m.json"), "--figures", w / "a_file"], "not a directory",
     lambda w, t: w / "a_file"),
    ("import-out-is-a-file", lambda w, t: ["import-en-flows", "--flow", w / "import/flow.pt", "--dequantizer",
                                           w / "import/dequantizer.pt", "--out", w / "a_file"], "not a directory",
     lambda w, t: w / "a_file"),
    ("data-out-is-a-file", lambda w, t: ["data", "dw4", "--out", w / "a_file", "--quick"], "not a directory",
     lambda w, t: w / "a_file"),
    # a refused run leaves an existing run directory alone
    ("train-other-seed-into-a-run", lambda w, t: w.train(str(w.run), "--seed", "1"), "different config",
     lambda w, t: str(w.run / "state" / "last.pt")),
    # values of the wrong type or outside their range
    ("set-lr-not-a-number", lambda w, t: w.train(str(t / "r"), "--set", "train.lr=abc"), "must be a number",
     lambda w, t: "train.lr"),
    ("set-rtol-not-a-number", lambda w, t: w.train(str(t / "r"), "--set", "flow.rtol=abc"), "must be a number",
     lambda w, t: "flow.rtol"),
    ("set-hidden-nf-not-an-integer", lambda w, t: w.train(str(t / "r"), "--set", "model.hidden_nf=abc"),
     "must be an integer", lambda w, t: "model.hidden_nf"),
    ("set-lr-a-list", lambda w, t: w.train(str(t / "r"), "--set", "train.lr=[1,2]"), "must be a number",
     lambda w, t: "train.lr"),
    ("set-model-a-value", lambda w, t: w.bare_train(str(t / "r"), "--set", "model=1"), "is a section",
     lambda w, t: "'model'"),
    ("set-method-unknown", lambda w, t: w.train(str(t / "r"), "--set", "flow.method=euler2"), "must be one of",
     lambda w, t: "flow.method"),
    ("set-train-a-value", lambda w, t: w.bare_train(str(t / "r"), "--set", "train=1"), "is a section",
     lambda w, t: "'train'"),
    ("set-amsgrad-not-a-bool", lambda w, t: w.train(str(t / "r"), "--set", "train.amsgrad=maybe"),
     "true or false", lambda w, t: "train.amsgrad"),
    ("set-device-unknown", lambda w, t: w.train(str(t / "r"), "--set", "train.device=gpu"), "must be",
     lambda w, t: "train.device"),
    ("set-lr-inside-a-value", lambda w, t: w.train(str(t / "r"), "--set", "train.lr.x=1"), "must be a number",
     lambda w, t: "train.lr"),
    ("set-after-a-value", lambda w, t: w.bare_train(str(t / "r"), "--set", "train=1", "--set", "train.lr=1"),
     "single value", lambda w, t: "train.lr=1"),
    ("set-value-after-keys", lambda w, t: w.train(str(t / "r"), "--set", "model=1"), "earlier --set",
     lambda w, t: "model=1"),
    ("set-without-value", lambda w, t: w.train(str(t / "r"), "--set", "train.lr"), "key=value",
     lambda w, t: "train.lr"),
    ("config-file-section-a-value", lambda w, t: w.train(str(t / "r"), "--config", w / "section.yaml"),
     "is a section", lambda w, t: "'train'"),
    ("epochs-negative", lambda w, t: w.train(str(t / "r"), "--epochs", "-1"), "integer >= 0",
     lambda w, t: "train.epochs"),
    ("n-train-zero", lambda w, t: w.train(str(t / "r"), "--n-train", "0"), "positive integer",
     lambda w, t: "--n-train"),
    ("checkpoint-weights-wider-than-config", lambda w, t: w.evaluate(ckpt=w / "wide.pt"), "do not fit",
     lambda w, t: w / "wide.pt"),
    ("checkpoint-config-invalid", lambda w, t: w.evaluate(ckpt=w / "badcfg.pt"), "train.lr must be a number",
     lambda w, t: w / "badcfg.pt"),
    ("evaluate-n-zero", lambda w, t: w.evaluate("--n", "0"), "positive integer", lambda w, t: "--n"),
    ("evaluate-n-negative", lambda w, t: w.evaluate("--n", "-3"), "positive integer", lambda w, t: "--n"),
    ("evaluate-probes-zero", lambda w, t: w.evaluate("--probes", "0"), "positive integer", lambda w, t: "--probes"),
    ("evaluate-probes-negative", lambda w, t: w.evaluate("--probes", "-2"), "positive integer",
     lambda w, t: "--probes"),
    ("evaluate-batch-size-zero", lambda w, t: w.evaluate("--batch-size", "0"), "positive integer",
     lambda w, t: "--batch-size"),
    ("evaluate-boltzmann-negative", lambda w, t: w.evaluate("--boltzmann", "-1"), "integer >= 0",
     lambda w, t: "--boltzmann"),
    ("evaluate-n-not-an-integer", lambda w, t: w.evaluate("--n", "abc"), "invalid int value", lambda w, t: "--n"),
    ("sample-n-zero", lambda w, t: ["sample", "--checkpoint", w.ckpt, "--n", "0", "--out", str(t / "s.npz")],
     "positive integer", lambda w, t: "--n"),
    ("sample-batch-size-zero", lambda w, t: ["sample", "--checkpoint", w.ckpt, "--n", "2", "--batch-size", "0",
                                             "--out", str(t / "s.npz")], "positive integer",
     lambda w, t: "--batch-size"),
    # what the commands refused before
    ("unknown-model", lambda w, t: w.train(str(t / "r"), "--model", "nope"), "unknown model", lambda w, t: "nope"),
    ("unknown-dataset", lambda w, t: ["train", "--dataset", "dw5", "--data", str(w.data), "--out", str(t / "r")],
     "unknown dataset", lambda w, t: "dw5"),
    ("unknown-config-key", lambda w, t: w.train(str(t / "r"), "--set", "train.lrr=1"), "unknown config key",
     lambda w, t: "train.lrr"),
    ("batch-size-zero", lambda w, t: w.train(str(t / "r"), "--set", "train.batch_size=0"), "must be",
     lambda w, t: "train.batch_size"),
    ("batch-larger-than-data", lambda w, t: w.train(str(t / "r"), "--set", "train.batch_size=64"), "exceeds",
     lambda w, t: "train.batch_size"),
    ("n-train-larger-than-data", lambda w, t: w.train(str(t / "r"), "--n-train", "1000"), "asked for 1000",
     lambda w, t: "train.npz"),
    ("bad-yaml", lambda w, t: w.train(str(t / "r"), "--config", w / "bad.yaml"), "not valid YAML",
     lambda w, t: w / "bad.yaml"),
    ("config-file-missing", lambda w, t: w.train(str(t / "r"), "--config", w / "nope.yaml"), "not found",
     lambda w, t: w / "nope.yaml"),
    ("data-missing", lambda w, t: w.train(str(t / "r"))[:6] + [w / "empty"] + w.train(str(t / "r"))[7:],
     "data file not found", lambda w, t: "train.npz"),
    ("data-corrupt", lambda w, t: w.train(str(t / "r"))[:6] + [w / "corrupt"] + w.train(str(t / "r"))[7:],
     "corrupt or truncated", lambda w, t: w / "corrupt"),
    ("data-wrong-shape", lambda w, t: w.train(str(t / "r"))[:6] + [w / "shaped"] + w.train(str(t / "r"))[7:],
     "needs (samples, 4, 2)", lambda w, t: w / "shaped"),
    ("data-nan", lambda w, t: w.train(str(t / "r"))[:6] + [w / "nan"] + w.train(str(t / "r"))[7:],
     "NaN or infinite", lambda w, t: w / "nan"),
    ("data-missing-array", lambda w, t: w.train(str(t / "r"))[:6] + [w / "wrong"] + w.train(str(t / "r"))[7:],
     "missing array", lambda w, t: w / "wrong"),
    ("checkpoint-missing", lambda w, t: w.evaluate(ckpt=w / "nope.pt"), "checkpoint not found",
     lambda w, t: w / "nope.pt"),
    ("checkpoint-garbage", lambda w, t: w.evaluate(ckpt=w / "garbage.pt"), "not a readable checkpoint",
     lambda w, t: w / "garbage.pt"),
    ("checkpoint-not-enf", lambda w, t: w.evaluate(ckpt=w / "foreign.pt"), "not an enf checkpoint",
     lambda w, t: w / "foreign.pt"),
    ("evaluate-more-than-data", lambda w, t: w.evaluate("--n", "1000"), "asked for 1000", lambda w, t: w.test),
    ("analyze-out-not-json", lambda w, t: ["analyze", "--data", w / "positions.json", "--out", str(t / "m.txt")],
     "expected a .json", lambda w, t: "--out"),
    ("analyze-missing-array", lambda w, t: ["analyze", "--data", w / "no_positions.npz", "--out",
                                            str(t / "m.json")], "missing array", lambda w, t: w / "no_positions.npz"),
    ("data-n-train-zero", lambda w, t: ["data", "dw4", "--out", str(t / "d"), "--n-train", "0"], "--n-train",
     lambda w, t: "--n-train"),
    ("data-one-chain", lambda w, t: ["data", "lj13", "--out", str(t / "d"), "--chains", "1"], "--chains",
     lambda w, t: "--chains"),
    ("data-bad-choice", lambda w, t: ["data", "lj13", "--out", str(t / "d"), "--energy", "halved"],
     "invalid choice", lambda w, t: "--energy"),
    ("qm9-source-missing", lambda w, t: ["data", "qm9", "--out", str(t / "q"), "--source", str(t / "nowhere")],
     "not found", lambda w, t: "nowhere"),
    ("import-not-a-state-dict", lambda w, t: ["import-en-flows", "--flow", w / "import/not_a_state.pt",
                                              "--dequantizer", w / "import/dequantizer.pt", "--args",
                                              w / "import/args.json", "--out", str(t / "imp")],
     "not a readable torch state dict", lambda w, t: "not_a_state.pt"),
    ("import-flow-missing", lambda w, t: ["import-en-flows", "--flow", str(t / "nope.pt"), "--dequantizer",
                                          w / "import/dequantizer.pt", "--args", w / "import/args.json",
                                          "--out", str(t / "imp")], "not found", lambda w, t: "nope.pt"),
    ("import-misfit", lambda w, t: ["import-en-flows", "--flow", w / "import/flow_missing.pt", "--dequantizer",
                                    w / "import/dequantizer.pt", "--args", w / "import/args.json", "--out",
                                    str(t / "imp")], "missing tensor", lambda w, t: "flow_missing.pt"),
]


@pytest.mark.parametrize("argv, message, culprit", [pytest.param(a, m, c, id=i) for i, a, m, c in CASES])
def test_bad_input_is_one_line_and_changes_nothing(world: World, tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                   argv: Callable, message: str, culprit: Callable) -> None:
    args = [str(a) for a in argv(world, tmp_path)]
    before = _snapshot(world.root, tmp_path)
    capsys.readouterr()
    assert _run(args) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    assert "Traceback" not in err
    assert message in err, err
    assert str(culprit(world, tmp_path)) in err, err
    assert _snapshot(world.root, tmp_path) == before
    assert not (world.root / "pwned").exists()


def test_a_malicious_pickle_runs_nothing(world: World, tmp_path: Path) -> None:
    """The crafted files really would run code when unpickled in full; enf's loaders refuse them unrun."""
    probe = tmp_path / "probe.pt"
    torch.save({"format": checkpoints.FORMAT, "x": Malicious(tmp_path / "ran")}, probe)
    torch.load(probe, weights_only=False)  # what the earlier loader did
    assert (tmp_path / "ran").exists()
    for name in ("evil.pt", "evil.pkl"):
        with pytest.raises(EnfError, match="refused"):
            checkpoints.load(world.root / name)
    with pytest.raises(EnfError, match="refused"):
        checkpoints.load(world.root / "evil_run" / "state" / "last.pt")
    assert not (world.root / "pwned").exists()


def test_checkpoints_hold_plain_data_only(world: World) -> None:
    """What the trainer writes loads with weights_only=True and no allowed extra names."""
    for path in (world.run / "checkpoint.pt", world.run / "state" / "last.pt", world.run / "state" / "best.pt"):
        assert torch.serialization.get_unsafe_globals_in_checkpoint(path) == []
        torch.load(path, weights_only=True)
    with pytest.raises(TypeError, match="not plain data"):
        checkpoints.save(world.root / "new" / "x.pt", {"format": checkpoints.FORMAT, "v": np.float64(1.0)})


def test_an_earlier_state_with_numpy_rng_resumes(world: World, tmp_path: Path) -> None:
    """A state/last.pt of an earlier version (NumPy RNG state as an array) is read as data and resumes."""
    run = tmp_path / "run"
    shutil.copytree(world.run, run)
    state = checkpoints.load(run / "state" / "last.pt")
    state["rng"]["numpy"] = np.random.get_state()
    state["rng"]["python"] = tuple(state["rng"]["python"][:1]) + (tuple(state["rng"]["python"][1]), None)
    state["history"][0]["seconds"] = np.float64(state["history"][0]["seconds"])
    torch.save(state, run / "state" / "last.pt")
    assert "numpy.ndarray" in torch.serialization.get_unsafe_globals_in_checkpoint(run / "state" / "last.pt")
    assert main(world.train(str(run))) == 0
    assert json.loads((run / "metrics.json").read_text())["epochs"] == 1


def test_trusted_conversion_of_an_earlier_checkpoint(tmp_path: Path) -> None:
    """A checkpoint holding other objects is refused with the conversion command, which then makes it loadable."""
    path = tmp_path / "old.pt"
    torch.save({"format": checkpoints.FORMAT, "data": tmp_path / "data", "x": np.arange(3)}, path)
    with pytest.raises(EnfError, match=r"pathlib\.PosixPath.*--trust"):
        checkpoints.load(path)
    assert checkpoints.main(["--trust", str(path)]) == 0
    payload = checkpoints.load(path)
    assert payload["x"] == [0, 1, 2] and payload["data"] == str(tmp_path / "data")


def test_a_killed_writers_temporary_files_are_removed(tmp_path: Path) -> None:
    """Leftovers of killed atomic writes go with the next write to the same target; live ones and others stay."""
    target = tmp_path / "out.json"
    dead = tmp_path / f".out.json.{2**22 + 12345}@{_host()}.abcd1234.tmp"  # a process id no process has
    old = tmp_path / ".out.json.zz99yy88.tmp"  # an earlier version's name: judged by age
    fresh = tmp_path / ".out.json.qq11ww22.tmp"
    live = tmp_path / f".out.json.{os.getpid()}@{_host()}.efgh5678.tmp"
    other = tmp_path / ".other.json.zz99yy88.tmp"
    for path in (dead, old, fresh, live, other):
        path.write_text("partial")
    day_ago = time.time() - 2 * 24 * 3600
    for path in (old, other):
        os.utime(path, (day_ago, day_ago))
    write_json(target, {"ok": True})
    assert json.loads(target.read_text()) == {"ok": True}
    assert not dead.exists() and not old.exists()
    assert fresh.exists() and live.exists() and other.exists()
    with pytest.raises(RuntimeError), atomic_path(target):
        raise RuntimeError("killed")
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(p.name for p in (target, fresh, live, other))


def _host() -> str:
    from enf import io

    return io._HOST


@pytest.mark.skipif(os.geteuid() == 0, reason="root may write anywhere")
def test_an_unwritable_output_folder_is_refused_before_work(world: World, tmp_path: Path,
                                                            capsys: pytest.CaptureFixture[str]) -> None:
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        assert _run(world.evaluate(out=str(locked / "sub" / "e.json"))) == 2
        err = capsys.readouterr().err.strip()
        assert "permission denied" in err and str(locked) in err and len(err.splitlines()) == 1
    finally:
        locked.chmod(0o700)
