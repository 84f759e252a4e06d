"""QM9 and QM9-positional from the qm9pack CSV tables, split exactly as Cormorant / E-NF / EDM.

qm9pack's `import qm9pack` fails with setuptools >= 81 (it imports pkg_resources), so its folder is found with
importlib and its CSV files (qm9_part{1,2,3}.csv) are read directly. Split: molecules sorted by GDB9 index,
N = 130,831; np.random.seed(0); perm = np.random.permutation(N); train, valid, test = perm[:100000],
perm[100000:117748], perm[117748:]; each split keeps ascending GDB9 order (Cormorant filters its file list).
"""

from __future__ import annotations

import functools
import importlib.util
import resource
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd

from enf.data.outputs import check_output, finish_output, writing
from enf.errors import EnfError
from enf.io import load_npz, save_npz, sha256_file

ELEMENTS = ("H", "C", "N", "O", "F")
CHARGES = np.array([1, 6, 7, 8, 9])
MAX_ATOMS = 29
POSITIONAL_ATOMS = 19
N_MOLECULES = 130_831
N_TRAIN = 100_000
SPLITS = ("train", "valid", "test")
# The protocol's counts: split sizes and 19-atom molecules per split when the recipe is followed exactly.
EXPECTED_SIZES = {"train": 100_000, "valid": 17_748, "test": 13_083}
EXPECTED_19_ATOMS = {"train": 13_832, "valid": 2_501, "test": 1_813}
CSV_FILES = tuple(f"qm9_part{i}.csv" for i in (1, 2, 3))
COLUMNS = ("Index", "SMILES", "N_atoms", "Elements", "XYZ_Ang")
MOLECULE_ARRAYS = ("positions", "atom_mask", "one_hot", "charges", "num_atoms")


def qm9pack_data_dir() -> Path:
    """The data folder of the installed qm9pack package, found without importing it."""
    spec = importlib.util.find_spec("qm9pack")
    if spec is None:
        raise EnfError("qm9pack is not installed; it ships the QM9 table. Install it with `pip install qm9pack` "
                       "(or `pip install -e .[chem]`), or pass --source DIR with qm9_part{1,2,3}.csv")
    roots = list(spec.submodule_search_locations or []) or ([str(Path(spec.origin).parent)] if spec.origin else [])
    for root in roots:
        if (Path(root) / "data" / CSV_FILES[0]).is_file():
            return Path(root) / "data"
    raise EnfError(f"qm9pack is installed at {roots} but its data/{CSV_FILES[0]} is missing; reinstall it with "
                   "`pip install --force-reinstall qm9pack`")


def _source_files(source: str | Path | None) -> list[Path]:
    folder = qm9pack_data_dir() if source is None else Path(source)
    files = [folder / name for name in CSV_FILES]
    missing = [str(f) for f in files if not f.is_file()]
    if missing:
        raise EnfError(f"QM9 source file(s) not found: {', '.join(missing)}")
    return files


def _parse_part(path: Path) -> dict[str, np.ndarray]:
    """One CSV part: GDB9 index, SMILES, atom counts, atomic numbers (flat) and coordinates (flat, Angstrom)."""
    try:
        df = pd.read_csv(path, usecols=list(COLUMNS), engine="c",
                         dtype={"Index": np.int64, "N_atoms": np.int64, "SMILES": str, "Elements": str,
                                "XYZ_Ang": str})
    except (ValueError, pd.errors.ParserError, UnicodeDecodeError, OSError) as err:
        raise EnfError(f"{path}: not a readable qm9pack table (corrupt, truncated or missing columns "
                       f"{list(COLUMNS)}?): {str(err).splitlines()[0]}") from None
    if len(df) == 0 or df[list(COLUMNS)].isna().any().any():
        raise EnfError(f"{path}: empty table or missing values (truncated file?)")
    n_atoms = df["N_atoms"].to_numpy()
    symbols = np.array(",".join(df["Elements"].tolist()).translate(str.maketrans("", "", "[]' ")).split(","))
    coords = np.fromstring(",".join(df["XYZ_Ang"].tolist()).translate(str.maketrans("", "", "[] ")), sep=",")
    if symbols.size != n_atoms.sum() or coords.size != 3 * n_atoms.sum():
        raise EnfError(f"{path}: element or coordinate lists do not match N_atoms (found {symbols.size} "
                       f"elements and {coords.size} numbers for {int(n_atoms.sum())} atoms); corrupt file?")
    known = np.isin(symbols, ELEMENTS)
    if not known.all():
        raise EnfError(f"{path}: unknown element(s) {sorted(set(symbols[~known]))}; expected {ELEMENTS}")
    if not np.isfinite(coords).all():
        raise EnfError(f"{path}: NaN or infinite coordinates")
    order = np.argsort(ELEMENTS)
    z = CHARGES[order][np.searchsorted(np.array(ELEMENTS)[order], symbols)]
    return {"index": df["Index"].to_numpy(np.int64), "smiles": np.array(df["SMILES"].tolist()),
            "num_atoms": n_atoms, "z": z, "xyz": coords.reshape(-1, 3)}


@functools.lru_cache(maxsize=1)
def _read_cached(files: tuple[str, ...], stamps: tuple[tuple[int, int], ...]) -> dict[str, np.ndarray]:
    parts = [_parse_part(Path(f)) for f in files]
    index = np.concatenate([p["index"] for p in parts])
    num_atoms = np.concatenate([p["num_atoms"] for p in parts])
    z_flat = np.concatenate([p["z"] for p in parts])
    xyz_flat = np.concatenate([p["xyz"] for p in parts])
    smiles = np.concatenate([p["smiles"] for p in parts])
    if num_atoms.min() < 1 or num_atoms.max() > MAX_ATOMS:
        raise EnfError(f"QM9 source: molecules must have 1..{MAX_ATOMS} atoms, found {num_atoms.min()}.."
                       f"{num_atoms.max()}")
    if np.unique(index).size != index.size:
        raise EnfError("QM9 source: duplicate GDB9 indices across the CSV parts")
    order = np.argsort(index, kind="stable")
    # Scatter the flat atom lists into padded (molecules, 29) arrays: atom k of molecule m sits at (m, k).
    mol = np.repeat(np.arange(index.size), num_atoms)
    slot = np.arange(mol.size) - np.repeat(np.cumsum(num_atoms) - num_atoms, num_atoms)
    charges = np.zeros((index.size, MAX_ATOMS), dtype=np.int64)
    charges[mol, slot] = z_flat
    positions = np.zeros((index.size, MAX_ATOMS, 3))
    positions[mol, slot] = xyz_flat
    mask = charges > 0
    centre = positions.sum(1, keepdims=True) / num_atoms[:, None, None]
    positions = (positions - centre) * mask[..., None]
    out = {"index": index[order], "smiles": smiles[order], "num_atoms": num_atoms[order],
           "charges": charges[order], "positions": positions[order]}
    for arr in out.values():
        arr.flags.writeable = False
    return out


def read_qm9(source: str | Path | None = None) -> dict[str, np.ndarray]:
    """All QM9 molecules sorted by GDB9 index: index, smiles, num_atoms, charges (M, 29), centred positions.

    Cached per process (read-only arrays), so QM9 and QM9-positional prepared together parse the CSVs once.
    """
    files = _source_files(source)
    stamps = tuple((f.stat().st_size, f.stat().st_mtime_ns) for f in files)
    return _read_cached(tuple(str(f.resolve()) for f in files), stamps)


def cormorant_split(n: int) -> dict[str, np.ndarray]:
    """Row numbers (into the index-sorted table) of each split, ascending: Cormorant's recipe exactly."""
    n_test = int(0.1 * n)
    n_valid = n - N_TRAIN - n_test
    if n_valid < 1:
        raise EnfError(f"QM9 split: {n} molecules cannot make {N_TRAIN:,} training molecules plus validation "
                       f"and test sets (the recipe needs {N_MOLECULES:,})")
    perm = np.random.RandomState(0).permutation(n)   # identical to np.random.seed(0); np.random.permutation(n)
    bounds = {"train": (0, N_TRAIN), "valid": (N_TRAIN, N_TRAIN + n_valid), "test": (N_TRAIN + n_valid, n)}
    return {split: np.sort(perm[a:b]) for split, (a, b) in bounds.items()}


def split_arrays(data: dict[str, np.ndarray], rows: np.ndarray, positional: bool) -> dict[str, np.ndarray]:
    """The arrays of one split: all QM9 features, or only the 19-atom molecules' positions (QM9-positional)."""
    if positional:
        rows = rows[data["num_atoms"][rows] == POSITIONAL_ATOMS]
        return {"positions": data["positions"][rows, :POSITIONAL_ATOMS].astype(np.float32),
                "index": data["index"][rows]}
    charges = data["charges"][rows]
    return {
        "positions": data["positions"][rows].astype(np.float32),
        "atom_mask": charges > 0,
        "one_hot": charges[..., None] == CHARGES,
        "charges": charges,
        "num_atoms": data["num_atoms"][rows],
        "index": data["index"][rows],
        "smiles": data["smiles"][rows],
    }


def prepare_qm9(out_dir: str | Path, positional: bool = False, source: str | Path | None = None,
                force: bool = False, log: Callable[[str], None] = print) -> dict[str, Path]:
    """Write QM9 (or QM9-positional) train/valid/test.npz and meta.json to `out_dir`; returns the split paths."""
    start, cpu_start = time.perf_counter(), time.process_time()
    name = "qm9_positional" if positional else "qm9"
    out_dir = Path(out_dir)
    files = _source_files(source)
    args = {"dataset": name, "source": "qm9pack" if source is None else str(Path(source).resolve()),
            "split": "cormorant"}
    data_files = [f"{s}.npz" for s in SPLITS]
    paths = {s: out_dir / f"{s}.npz" for s in SPLITS}
    if check_output(out_dir, name, args, data_files, force, log):
        return paths
    log(f"{name}: reading {', '.join(str(f) for f in files)}")
    data = read_qm9(source)
    n = data["index"].size
    if n != N_MOLECULES:
        raise EnfError(f"QM9 source holds {n:,} molecules; the Cormorant split needs exactly {N_MOLECULES:,} "
                       "(GDB9 minus the 3,054 uncharacterized)")
    rows = cormorant_split(n)
    counts = {s: int(r.size) for s, r in rows.items()}
    n19 = {s: int((data["num_atoms"][r] == POSITIONAL_ATOMS).sum()) for s, r in rows.items()}
    if counts != EXPECTED_SIZES or n19 != EXPECTED_19_ATOMS:
        raise EnfError(f"QM9 split differs from Cormorant's: sizes {counts} (expected {EXPECTED_SIZES}), "
                       f"19-atom molecules {n19} (expected {EXPECTED_19_ATOMS}); is the source table different?")
    with writing(out_dir, name, args, data_files):
        for split in SPLITS:
            save_npz(paths[split], **split_arrays(data, rows[split], positional))
        extra = {
            "split": {"recipe": "sort by GDB9 index; np.random.seed(0); perm = np.random.permutation(N); "
                                "train/valid/test = consecutive slices of perm (100000 / 17748 / 13083); each split "
                                "in ascending GDB9 order",
                      "sizes": counts, "molecules_with_19_atoms": n19,
                      "stored": {s: (n19[s] if positional else counts[s]) for s in SPLITS}},
            "arrays": (["positions (M, 19, 3) float32, Angstrom, centred", "index (GDB9)"] if positional else
                       ["positions (M, 29, 3) float32, Angstrom, centred over real atoms, padding 0",
                        "atom_mask (M, 29) bool", "one_hot (M, 29, 5) bool over (H, C, N, O, F)",
                        "charges (M, 29) int64 atomic numbers, 0 = padding", "num_atoms (M,) int64",
                        "index (M,) int64 GDB9 index", "smiles (M,) unicode"]),
            "source": {f.name: {"sha256": sha256_file(f), "bytes": f.stat().st_size} for f in files},
            "timing": {"wall_seconds": time.perf_counter() - start, "cpu_seconds": time.process_time() - cpu_start,
                       "max_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024},
        }
        finish_output(out_dir, name, args, data_files, extra)
    stored = ", ".join(f"{s} {n:,}" for s, n in extra["split"]["stored"].items())
    log(f"{name}: wrote {out_dir} ({stored}) in {extra['timing']['wall_seconds']:.1f} s")
    return paths


def load_qm9_split(path: str | Path, positional: bool = False) -> dict[str, np.ndarray]:
    """Load one QM9 (or QM9-positional) split, refusing inconsistent, non-finite or uncentred arrays."""
    path = Path(path)
    arrays = load_npz(path, required=("positions",) if positional else MOLECULE_ARRAYS)
    pos = arrays["positions"]
    atoms = POSITIONAL_ATOMS if positional else MAX_ATOMS
    if pos.ndim != 3 or pos.shape[1:] != (atoms, 3) or pos.shape[0] == 0:
        raise EnfError(f"{path}: 'positions' has shape {pos.shape}, expected (molecules > 0, {atoms}, 3)")
    bad = ~np.isfinite(pos).reshape(pos.shape[0], -1).all(1)
    if bad.any():
        raise EnfError(f"{path}: {int(bad.sum())} molecule(s) have NaN or infinite positions "
                       f"(first at row {int(np.argmax(bad))})")
    if positional:
        mask = np.ones(pos.shape[:2], dtype=bool)
    else:
        m = pos.shape[0]
        num = arrays["num_atoms"]
        for key, shape in (("atom_mask", (m, atoms)), ("one_hot", (m, atoms, 5)), ("charges", (m, atoms)),
                           ("num_atoms", (m,))):
            if arrays[key].shape != shape:
                raise EnfError(f"{path}: {key!r} has shape {arrays[key].shape}, expected {shape}")
        mask = arrays["atom_mask"].astype(bool)
        if num.min() < 1 or num.max() > atoms or not (mask == (np.arange(atoms) < num[:, None])).all():
            raise EnfError(f"{path}: 'atom_mask' and 'num_atoms' disagree (atoms must come first, 1..{atoms})")
        one_hot = arrays["one_hot"].astype(bool)
        consistent = (one_hot.sum(-1) == mask).all() and (one_hot @ CHARGES == arrays["charges"]).all()
        if not consistent:
            raise EnfError(f"{path}: 'one_hot' and 'charges' disagree with each other or with the mask")
        if np.abs(pos[~mask]).max(initial=0) > 0:
            raise EnfError(f"{path}: padding atoms have non-zero positions")
    centre = (pos.astype(np.float64) * mask[..., None]).sum(1) / mask.sum(1, keepdims=True)
    if np.abs(centre).max() > 1e-4:
        raise EnfError(f"{path}: positions are not centred over real atoms (largest |mean| "
                       f"{np.abs(centre).max():.3g})")
    return arrays
