"""Named datasets and the data directory they live in.

`resolve_data_dir` picks the directory (explicit value, then the `CIESS_DATA_DIR` environment
variable, then `./data`); `load_dataset` loads a named dataset from it, or any interaction file or
LightGCN-format folder given by path, so that users can bring their own data.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType

from ciess_core.data.interactions import InteractionData
from ciess_core.data.loaders import (
    PathLike,
    load_interactions,
    load_lightgcn,
    load_movielens_ratings,
    load_pairs,
)
from ciess_core.errors import ConfigError, DataError

logger = logging.getLogger(__name__)

DATA_DIR_ENV = "CIESS_DATA_DIR"
DEFAULT_DATA_DIR = Path("data")
DATA_DIR_FLAG = "--data-dir"


@dataclass(frozen=True)
class DatasetSpec:
    """A dataset the package knows by name.

    Attributes:
        name: the registry key and the name of the dataset's folder under the data directory.
        description: one line for `--help` and logs.
        loader: reads the dataset from its folder (`data_dir / name`).
        reward_penalty: the paper's default λ, the weight of the size penalty in the search reward.
    """

    name: str
    description: str
    loader: Callable[[Path], InteractionData]
    reward_penalty: float


def resolve_data_dir(
    explicit: PathLike | None, *, environ: Mapping[str, str] | None = None
) -> Path:
    """The data directory: `explicit`, else $CIESS_DATA_DIR, else `./data`.

    Args:
        explicit: a value given on the command line (or by the caller), or None.
        environ: the environment to read (default `os.environ`).

    Returns:
        The directory as an absolute path.

    Raises:
        ConfigError: the chosen directory does not exist or is not a directory; the message says
            where the value came from and how to set it.
    """
    environment = os.environ if environ is None else environ
    if explicit is not None:
        path, origin = Path(explicit), f"from {DATA_DIR_FLAG}"
    elif environment.get(DATA_DIR_ENV):
        path, origin = Path(environment[DATA_DIR_ENV]), f"from ${DATA_DIR_ENV}"
    else:
        path, origin = (
            DEFAULT_DATA_DIR,
            f"the default, neither {DATA_DIR_FLAG} nor ${DATA_DIR_ENV} set",
        )
    path = path.expanduser()
    if not path.exists():
        problem = "does not exist"
    elif not path.is_dir():
        problem = "is not a directory"
    else:
        return path.resolve()
    raise ConfigError(
        f"data directory {str(path)!r} ({origin}) {problem}; pass {DATA_DIR_FLAG} PATH or set "
        f"{DATA_DIR_ENV}=PATH to the folder that holds {', '.join(sorted(DATASETS))}"
    )


def _load_ml_1m(folder: Path) -> InteractionData:
    """`ratings.dat` (GroupLens original) if present, else the derived `interactions.txt`."""
    ratings = folder / "ratings.dat"
    if ratings.is_file():
        return load_movielens_ratings(ratings)
    pairs = folder / "interactions.txt"
    if pairs.is_file():
        return load_pairs(pairs)
    raise DataError(f"ml-1m: neither {ratings} nor {pairs} found")


def _load_yelp2018(folder: Path) -> InteractionData:
    """LightGCN's `train.txt` and `test.txt`, merged (the search re-splits them)."""
    return load_lightgcn(folder / "train.txt", folder / "test.txt")


DATASETS: Mapping[str, DatasetSpec] = MappingProxyType(
    {
        "ml-1m": DatasetSpec(
            name="ml-1m",
            description="MovieLens-1M, every rating as an implicit interaction",
            loader=_load_ml_1m,
            reward_penalty=0.4,
        ),
        "yelp2018": DatasetSpec(
            name="yelp2018",
            description="Yelp2018 (LightGCN version), train and test merged",
            loader=_load_yelp2018,
            reward_penalty=0.2,
        ),
    }
)


def _looks_like_path(name: str) -> bool:
    """Whether `name` means a file or folder: an existing one, or a separator or suffix in it."""
    if name and Path(name).expanduser().exists():
        return True
    separators = [os.sep] + ([os.altsep] if os.altsep else [])
    return any(sep in name for sep in separators) or Path(name).suffix != ""


def load_dataset(name: str, data_dir: Path) -> InteractionData:
    """Loads a registered dataset from `data_dir / name`, or an interaction file or folder by path.

    Args:
        name: a key of DATASETS (case-insensitive), or a path to a file or a LightGCN-format
            folder (anything with a directory separator or a file suffix, or an existing file or
            folder); a relative path that does not exist is also looked up under `data_dir`.
            Paths go through `load_interactions`, which guesses a file's format and merges a
            folder's `train.txt`, `valid.txt` and `test.txt` as the yelp2018 loader does.
        data_dir: the directory from `resolve_data_dir`.

    Raises:
        ConfigError: `name` is neither a known dataset nor a path.
        DataError: a file is missing or malformed, or a folder holds no `train.txt`.
    """
    spec = DATASETS.get(name.lower())
    if spec is not None:
        folder = Path(data_dir) / spec.name
        if not folder.is_dir():
            raise DataError(f"dataset {spec.name!r}: folder {folder} not found")
        logger.info("loading dataset %s from %s", spec.name, folder)
        return spec.loader(folder)
    candidate = Path(name).expanduser()
    if _looks_like_path(name):
        if not candidate.exists() and not candidate.is_absolute():
            under_data_dir = Path(data_dir) / candidate
            if under_data_dir.exists():
                candidate = under_data_dir
        return load_interactions(candidate)
    raise ConfigError(
        f"unknown dataset {name!r}; known datasets: {', '.join(sorted(DATASETS))} "
        "(or give a path to an interaction file or a LightGCN-format folder)"
    )


def open_dataset(name: str, data_dir: str | os.PathLike[str] | None) -> InteractionData:
    """:func:`load_dataset` for a command line: an existing file or folder needs no data directory.

    Args:
        name: a registered dataset, or a path to an interaction file or a LightGCN-format folder.
        data_dir: the ``--data-dir`` value, if any (else ``$CIESS_DATA_DIR``, else ``./data``).
    """
    path = Path(name).expanduser()
    if name.lower() not in DATASETS and _looks_like_path(name):
        try:
            folder = resolve_data_dir(data_dir)
        except ConfigError:
            # A path with no data directory to look under: load or report the path itself.
            return load_interactions(path)
        return load_dataset(name, folder)
    return load_dataset(name, resolve_data_dir(data_dir))
