"""Parsers for interaction files: whitespace pairs, MovieLens `ratings.dat`, LightGCN, CSV.

LightGCN data also comes as a folder (`train.txt`, optional `valid.txt` and `test.txt`) whose
files are merged into one dataset. Every loader returns an `InteractionData` whose internal ids
follow the order in which users and items first appear in the file(s), with duplicate pairs
dropped. The whitespace and `::` formats are parsed with numpy over the raw bytes (ML-1M's
million lines load in well under a second); only the rows of a malformed file are looked at one
by one, to name the offending line.

Malformed input raises `DataError` naming the file, the 1-based line number and the problem.
"""

from __future__ import annotations

import csv
import enum
import logging
import os
import re
from pathlib import Path

import numpy as np
import numpy.typing as npt

from ciess_core.data.interactions import InteractionData
from ciess_core.errors import DataError

logger = logging.getLogger(__name__)

PathLike = str | os.PathLike[str]

# Longest decimal id that always fits in int64.
_MAX_INTEGER_DIGITS = 18
_NEWLINE = ord("\n")
_MOVIELENS_SEPARATOR = b"::"
_MOVIELENS_FIELDS = 4


class InteractionFormat(enum.Enum):
    """On-disk layout of an interaction file."""

    PAIRS = "pairs"  # `user item` per line, whitespace-separated
    MOVIELENS = "movielens"  # `UserID::MovieID::Rating::Timestamp` per line
    LIGHTGCN = "lightgcn"  # `user item item ...` per line, non-negative integer ids; or a folder
    CSV = "csv"  # header row, then comma-separated rows


# ----------------------------------------------------------------------------- byte-level helpers


def _file_error(path: Path, error: OSError) -> DataError:
    if isinstance(error, FileNotFoundError):
        return DataError(f"{path}: file not found")
    if isinstance(error, IsADirectoryError):
        return DataError(f"{path}: is a directory, expected a file")
    return DataError(f"{path}: cannot read file ({error.strerror or error})")


def _read_bytes(path: Path) -> bytes:
    """The file's bytes; DataError if it is missing, unreadable, empty, binary or not UTF-8."""
    try:
        data = path.read_bytes()
    except OSError as error:
        raise _file_error(path, error) from None
    if not data or data.isspace():
        raise DataError(f"{path}: file is empty")
    nul = data.find(b"\0")
    if nul >= 0:
        line = data.count(b"\n", 0, nul) + 1
        raise DataError(f"{path} line {line}: contains a NUL byte (binary file?)")
    try:
        data.decode("utf-8")
    except UnicodeDecodeError as error:
        line = data.count(b"\n", 0, error.start) + 1
        raise DataError(f"{path} line {line}: not valid UTF-8 text") from None
    return data


def _whitespace_mask(buffer: npt.NDArray[np.uint8]) -> npt.NDArray[np.bool_]:
    """True at the bytes `bytes.split()` splits on: space, \\t, \\n, \\v, \\f, \\r."""
    return (buffer == 32) | ((buffer >= 9) & (buffer <= 13))


def _tokenize(data: bytes) -> tuple[list[bytes], npt.NDArray[np.int64], npt.NDArray[np.int64]]:
    """Whitespace tokens with their positions.

    Returns:
        tokens: (n_tokens,) list of bytes, as `data.split()`.
        starts: (n_tokens,) int64 byte offset of each token.
        lines: (n_tokens,) int64 0-based line index of each token.
    """
    buffer = np.frombuffer(data, dtype=np.uint8)
    is_space = _whitespace_mask(buffer)
    starts = np.flatnonzero(~is_space & np.concatenate(([True], is_space[:-1])))
    newlines = np.flatnonzero(buffer == _NEWLINE)
    lines = np.searchsorted(newlines, starts).astype(np.int64)
    tokens = data.split()
    if len(tokens) != starts.size:  # pragma: no cover - the two definitions agree by construction
        raise RuntimeError("token count mismatch between numpy and bytes.split")
    return tokens, starts.astype(np.int64), lines


def _first_appearance_codes(
    values: npt.NDArray[np.generic],
) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.generic]]:
    """Codes 0..k-1 numbered in order of first appearance.

    Args:
        values: (n,) array of ids (bytes or integers).

    Returns:
        codes: (n,) int64 with values[i] == uniques[codes[i]].
        uniques: (k,) the distinct values in order of first appearance.
    """
    uniques, first, inverse = np.unique(values, return_index=True, return_inverse=True)
    order = np.argsort(first, kind="stable")
    rank = np.empty(order.size, dtype=np.int64)
    rank[order] = np.arange(order.size, dtype=np.int64)
    return rank[inverse.reshape(-1)], uniques[order]


def _to_unicode(uniques: npt.NDArray[np.generic]) -> npt.NDArray[np.str_]:
    if uniques.dtype.kind == "S":
        return np.asarray([value.decode("utf-8") for value in uniques.tolist()], dtype=np.str_)
    return uniques.astype(np.str_)


def _build(
    users: npt.NDArray[np.generic], items: npt.NDArray[np.generic], source: str
) -> InteractionData:
    """InteractionData from per-pair external ids, in file order; duplicate pairs dropped.

    Args:
        users: (n,) external user id per pair (bytes `S`, unicode `U` or int64 array).
        items: (n,) external item id per pair, same kind.
        source: description of where the pairs came from.
    """
    if users.size == 0:
        raise DataError(f"{source}: no (user, item) pairs found")
    user_codes, user_values = _first_appearance_codes(users)
    item_codes, item_values = _first_appearance_codes(items)
    keys = user_codes * np.int64(item_values.size) + item_codes
    _, first = np.unique(keys, return_index=True)
    keep = np.sort(first)
    data = InteractionData(
        user_ids=user_codes[keep],
        item_ids=item_codes[keep],
        external_user_ids=_to_unicode(user_values),
        external_item_ids=_to_unicode(item_values),
        source=source,
    )
    dropped = users.size - keep.size
    logger.info(
        "loaded %s: %d users, %d items, %d interactions%s",
        source,
        data.num_users,
        data.num_items,
        data.num_interactions,
        f" ({dropped} duplicate pairs dropped)" if dropped else "",
    )
    return data


# ----------------------------------------------------------------------------- pairs


def _parse_pairs(path: Path) -> tuple[npt.NDArray[np.bytes_], npt.NDArray[np.bytes_]]:
    data = _read_bytes(path)
    tokens, _, lines = _tokenize(data)
    per_line = np.bincount(lines)
    bad = np.flatnonzero((per_line != 0) & (per_line != 2))
    if bad.size:
        line = int(bad[0])
        raise DataError(
            f"{path} line {line + 1}: expected 2 whitespace-separated fields (user item), "
            f"got {per_line[line]}"
            + (
                " (for LightGCN files use the LIGHTGCN format, or pass the folder holding "
                "train.txt)"
                if per_line[line] > 2
                else ""
            )
        )
    array = np.asarray(tokens, dtype=np.bytes_)
    return array[0::2], array[1::2]


def load_pairs(path: PathLike) -> InteractionData:
    """Reads a `user item` file: exactly two whitespace-separated ids per line.

    Blank lines are skipped; ids are kept verbatim as strings.
    """
    path = Path(path)
    users, items = _parse_pairs(path)
    return _build(users, items, str(path))


# ----------------------------------------------------------------------------- MovieLens


def load_movielens_ratings(path: PathLike) -> InteractionData:
    """Reads MovieLens `ratings.dat`: `UserID::MovieID::Rating::Timestamp` per line.

    Every row is a positive interaction (there is no header; the rating and timestamp are not
    used). Blank lines are skipped; ids are kept verbatim as strings.
    """
    path = Path(path)
    data = _read_bytes(path)
    # One byte per separator, so that numpy can count separators per line; NUL is not in the file.
    packed = data.replace(_MOVIELENS_SEPARATOR, b"\0")
    buffer = np.frombuffer(packed, dtype=np.uint8)
    newlines = np.flatnonzero(buffer == _NEWLINE)
    num_lines = newlines.size + (0 if packed.endswith(b"\n") else 1)
    separators = np.bincount(
        np.searchsorted(newlines, np.flatnonzero(buffer == 0)), minlength=num_lines
    )
    suspect = np.flatnonzero(separators != _MOVIELENS_FIELDS - 1)
    kept_lines = np.arange(num_lines)
    if suspect.size:
        lines = packed.split(b"\n")[:num_lines]
        for index in suspect:
            if lines[index].strip():
                raise DataError(
                    f"{path} line {index + 1}: expected {_MOVIELENS_FIELDS} '::'-separated "
                    f"fields (UserID::MovieID::Rating::Timestamp), got {separators[index] + 1}"
                )
        kept_lines = np.delete(kept_lines, suspect)
        packed = b"\n".join(lines[i] for i in kept_lines.tolist())
    fields = packed.replace(b"\n", b"\0").split(b"\0")
    num_fields = kept_lines.size * _MOVIELENS_FIELDS
    users = np.asarray(fields[0:num_fields:_MOVIELENS_FIELDS], dtype=np.bytes_)
    items = np.asarray(fields[1:num_fields:_MOVIELENS_FIELDS], dtype=np.bytes_)
    for column, role in ((users, "user"), (items, "movie")):
        empty = np.flatnonzero(column == b"")
        if empty.size:
            raise DataError(f"{path} line {kept_lines[empty[0]] + 1}: empty {role} id")
    return _build(users, items, str(path))


# ----------------------------------------------------------------------------- LightGCN

_NEGATIVE_INTEGER = re.compile(rb"-\d+")


def _parse_lightgcn(path: Path) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.int64]]:
    """(user, item) int64 arrays of one LightGCN file; users without items contribute nothing."""
    data = _read_bytes(path)
    tokens, starts, lines = _tokenize(data)
    is_first = np.ones(lines.size, dtype=bool)
    is_first[1:] = lines[1:] != lines[:-1]

    buffer = np.frombuffer(data, dtype=np.uint8)
    non_digit = np.flatnonzero(~_whitespace_mask(buffer) & ((buffer < 48) | (buffer > 57)))
    if non_digit.size:
        token = int(np.searchsorted(starts, non_digit[0], side="right")) - 1
        role = "user" if is_first[token] else "item"
        value = tokens[token].decode("utf-8")
        problem = (
            "is negative" if _NEGATIVE_INTEGER.fullmatch(tokens[token]) else "is not an integer"
        )
        raise DataError(f"{path} line {lines[token] + 1}: {role} id {value!r} {problem}")

    array = np.asarray(tokens, dtype=np.bytes_)
    if array.dtype.itemsize > _MAX_INTEGER_DIGITS:
        token = next(i for i, t in enumerate(tokens) if len(t) > _MAX_INTEGER_DIGITS)
        raise DataError(
            f"{path} line {lines[token] + 1}: id '{tokens[token].decode()}' is too large"
        )
    values = array.astype(np.int64)
    line_start = np.flatnonzero(is_first)
    owner = np.repeat(line_start, np.diff(np.append(line_start, values.size)))
    is_item = ~is_first
    return values[owner[is_item]], values[is_item]


def load_lightgcn(path: PathLike, *more_paths: PathLike) -> InteractionData:
    """Reads LightGCN-format files (`user item item ...` per line) and merges them.

    Ids must be non-negative integers; external ids are their decimal strings ("007" -> "7").
    A line with only a user id is allowed and adds nothing (that user is not counted unless it
    has items elsewhere). Ids are numbered in order of first appearance, files in the order
    given (train file first); a pair found in several files is kept once.
    """
    paths = [Path(path), *map(Path, more_paths)]
    parsed = [_parse_lightgcn(file) for file in paths]
    users = np.concatenate([user for user, _ in parsed])
    items = np.concatenate([item for _, item in parsed])
    return _build(users, items, " + ".join(str(file) for file in paths))


# The interaction files of a LightGCN-format folder, in merge order. Other files there
# (`user_list.txt`, `item_list.txt`, notes) are not interactions and are left alone.
LIGHTGCN_FOLDER_FILES = ("train.txt", "valid.txt", "test.txt")


def lightgcn_folder_files(folder: PathLike) -> list[Path]:
    """The files of `LIGHTGCN_FOLDER_FILES` present in `folder`, in that order.

    Raises:
        DataError: `folder` holds no `train.txt`; the message names the folder, the files looked
            for and those found.
    """
    folder = Path(folder)
    found = [folder / name for name in LIGHTGCN_FOLDER_FILES if (folder / name).is_file()]
    if not found or found[0].name != LIGHTGCN_FOLDER_FILES[0]:
        present = ", ".join(path.name for path in found) or "none of them"
        raise DataError(
            f"{folder}: no {LIGHTGCN_FOLDER_FILES[0]} found; a LightGCN-format folder holds "
            f"{LIGHTGCN_FOLDER_FILES[0]} and optionally {' and '.join(LIGHTGCN_FOLDER_FILES[1:])} "
            f"(found: {present})"
        )
    return found


def load_lightgcn_folder(folder: PathLike) -> InteractionData:
    """Merges a LightGCN-format folder's `train.txt`, `valid.txt` and `test.txt` (those present).

    The files go through `load_lightgcn` in that order, as a registered LightGCN dataset's do;
    the split made later re-divides the merged pairs.
    """
    return load_lightgcn(*lightgcn_folder_files(folder))


# ----------------------------------------------------------------------------- CSV


def load_csv(
    path: PathLike, user_column: str = "user", item_column: str = "item"
) -> InteractionData:
    """Reads a comma-separated file whose first row names the columns.

    Args:
        path: the CSV file (UTF-8, an optional byte-order mark is ignored).
        user_column: header name of the user id column.
        item_column: header name of the item id column.

    Ids are stripped of surrounding whitespace and kept as strings; blank rows are skipped.
    """
    path = Path(path)
    _read_bytes(path)  # existence, emptiness and encoding checks with uniform messages
    users: list[str] = []
    items: list[str] = []
    with path.open(newline="", encoding="utf-8-sig") as handle:
        reader = csv.reader(handle)
        try:
            header = [name.strip() for name in next(reader)]
            for column in (user_column, item_column):
                if column not in header:
                    raise DataError(
                        f"{path} line 1: column {column!r} not found in header "
                        f"(columns: {', '.join(header)})"
                    )
            user_index, item_index = header.index(user_column), header.index(item_column)
            for row in reader:
                if not row or (len(row) == 1 and not row[0].strip()):
                    continue
                if len(row) != len(header):
                    raise DataError(
                        f"{path} line {reader.line_num}: expected {len(header)} comma-separated "
                        f"fields, got {len(row)}"
                    )
                user, item = row[user_index].strip(), row[item_index].strip()
                if not user or not item:
                    role = "user" if not user else "item"
                    raise DataError(f"{path} line {reader.line_num}: empty {role} id")
                users.append(user)
                items.append(item)
        except csv.Error as error:
            raise DataError(f"{path} line {reader.line_num}: {error}") from None
    if not users:
        raise DataError(f"{path}: no (user, item) pairs found")
    return _build(np.asarray(users, dtype=np.str_), np.asarray(items, dtype=np.str_), str(path))


# ----------------------------------------------------------------------------- dispatch


def guess_format(path: PathLike) -> InteractionFormat:
    """The likely format of `path`.

    LIGHTGCN for a folder, CSV for `.csv`, MOVIELENS for `ratings.dat` or a first line containing
    `::`, else PAIRS.
    """
    path = Path(path)
    if path.is_dir():
        return InteractionFormat.LIGHTGCN
    if path.suffix.lower() == ".csv":
        return InteractionFormat.CSV
    if path.name.lower() == "ratings.dat":
        return InteractionFormat.MOVIELENS
    try:
        with path.open("rb") as handle:
            first_line = handle.readline()
    except OSError as error:
        raise _file_error(path, error) from None
    if _MOVIELENS_SEPARATOR in first_line:
        return InteractionFormat.MOVIELENS
    return InteractionFormat.PAIRS


def load_interactions(path: PathLike, format: InteractionFormat | None = None) -> InteractionData:
    """Loads an interaction file, or a LightGCN-format folder, in `format` or as guessed.

    Without `format`, `guess_format` picks it: a folder is read by `load_lightgcn_folder`.
    """
    chosen = guess_format(path) if format is None else format
    if chosen is InteractionFormat.PAIRS:
        return load_pairs(path)
    if chosen is InteractionFormat.MOVIELENS:
        return load_movielens_ratings(path)
    if chosen is InteractionFormat.LIGHTGCN:
        return load_lightgcn_folder(path) if Path(path).is_dir() else load_lightgcn(path)
    return load_csv(path)
