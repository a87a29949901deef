"""Tests of ciess_core.data: loaders, InteractionData, the per-user split, the dataset registry.

Every test writes its own small files under tmp_path; nothing reads the shared datasets.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
import scipy.sparse as sp
from hypothesis import given, settings
from hypothesis import strategies as st

from ciess_core.data import (
    DATA_DIR_ENV,
    DATASETS,
    DatasetSplit,
    InteractionData,
    InteractionFormat,
    Phase,
    check_split,
    guess_format,
    hold_out_per_user,
    load_csv,
    load_dataset,
    load_interactions,
    load_lightgcn,
    load_movielens_ratings,
    load_pairs,
    open_dataset,
    resolve_data_dir,
    split_per_user,
)
from ciess_core.errors import ConfigError, DataError


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(text.encode("utf-8"))
    return path


def pair_set(data: InteractionData) -> set[tuple[str, str]]:
    """The (external user, external item) pairs of `data`."""
    return {
        (str(data.external_user_ids[u]), str(data.external_item_ids[i]))
        for u, i in zip(data.user_ids.tolist(), data.item_ids.tolist(), strict=True)
    }


def make_data(items_per_user: list[int], num_items: int = 12) -> InteractionData:
    """User u interacts with items 0..items_per_user[u]-1 (external ids 'u<k>' and 'i<k>')."""
    users = np.repeat(np.arange(len(items_per_user)), items_per_user)
    items = np.concatenate([np.arange(n) for n in items_per_user])
    return InteractionData(
        user_ids=users.astype(np.int64),
        item_ids=items.astype(np.int64),
        external_user_ids=np.array([f"u{k}" for k in range(len(items_per_user))]),
        external_item_ids=np.array([f"i{k}" for k in range(num_items)]),
        source="test",
    )


# ----------------------------------------------------------------------------- pairs


def test_load_pairs_first_appearance_order_and_duplicates(tmp_path: Path) -> None:
    path = write(tmp_path / "pairs.txt", "u2 i3\nu1\ti3\nu2 i1\nu2 i3\n\n  u3   i2  \r\n")
    data = load_pairs(path)
    assert data.external_user_ids.tolist() == ["u2", "u1", "u3"]
    assert data.external_item_ids.tolist() == ["i3", "i1", "i2"]
    assert (data.num_users, data.num_items, data.num_interactions) == (3, 3, 4)
    assert data.user_ids.tolist() == [0, 1, 0, 2]
    assert data.item_ids.tolist() == [0, 0, 1, 2]
    assert data.external_user_ids.dtype.kind == "U"
    assert data.user_ids.dtype == np.int64
    assert str(path) in data.source


@pytest.mark.parametrize("bad_line", ["u3", "u3 i1 5", "u3 i1 i2 i4"])
def test_load_pairs_wrong_field_count(tmp_path: Path, bad_line: str) -> None:
    path = write(tmp_path / "pairs.txt", f"u1 i1\n\nu2 i2\n{bad_line}\nu4 i4\n")
    with pytest.raises(DataError, match=r"pairs\.txt line 4: expected 2 .*got \d"):
        load_pairs(path)


def test_load_pairs_keeps_ids_verbatim(tmp_path: Path) -> None:
    data = load_pairs(write(tmp_path / "pairs.txt", "01 1\n1 01\nkäse 1\n"))
    assert data.external_user_ids.tolist() == ["01", "1", "käse"]
    assert data.external_item_ids.tolist() == ["1", "01"]


# ----------------------------------------------------------------------------- MovieLens


def test_load_movielens_keeps_first_row_and_drops_duplicates(tmp_path: Path) -> None:
    rows = [
        "1::1193::5::978300760",
        "1::661::3::978302109",
        "2::1193::4::978298413",
        "",
        "2::661::1::978299999",
        "1::1193::2::978300761",
    ]
    path = write(tmp_path / "ratings.dat", "\r\n".join(rows) + "\r\n")
    data = load_movielens_ratings(path)
    assert data.external_user_ids.tolist() == ["1", "2"]
    assert data.external_item_ids.tolist() == ["1193", "661"]
    assert data.num_interactions == 4
    assert pair_set(data) == {("1", "1193"), ("1", "661"), ("2", "1193"), ("2", "661")}


def test_load_movielens_no_trailing_newline(tmp_path: Path) -> None:
    data = load_movielens_ratings(write(tmp_path / "ratings.dat", "1::5::5::1\n2::6::5::1"))
    assert pair_set(data) == {("1", "5"), ("2", "6")}


@pytest.mark.parametrize(
    ("bad_line", "got"), [("3::7::5", 3), ("3::7::5::1::9", 5), ("3 7 5 1", 1)]
)
def test_load_movielens_wrong_field_count(tmp_path: Path, bad_line: str, got: int) -> None:
    path = write(tmp_path / "ratings.dat", f"1::5::5::1\n\n2::6::5::1\n{bad_line}\n")
    message = rf"ratings\.dat line 4: expected 4 '::'-separated fields .*got {got}"
    with pytest.raises(DataError, match=message):
        load_movielens_ratings(path)


def test_load_movielens_empty_id(tmp_path: Path) -> None:
    path = write(tmp_path / "ratings.dat", "1::5::5::1\n\n2::::5::1\n")
    with pytest.raises(DataError, match=r"ratings\.dat line 3: empty movie id"):
        load_movielens_ratings(path)


# ----------------------------------------------------------------------------- LightGCN


def test_load_lightgcn_merges_train_and_test(tmp_path: Path) -> None:
    train = write(tmp_path / "train.txt", "5 10 11 12\n3 11\n7\n")
    test = write(tmp_path / "test.txt", "5 13\n3 10 11\n8 010\n")
    data = load_lightgcn(train, test)
    # User 7 has no items anywhere, so it is not counted; "010" is the integer 10.
    assert data.external_user_ids.tolist() == ["5", "3", "8"]
    assert data.external_item_ids.tolist() == ["10", "11", "12", "13"]
    assert data.num_interactions == 7
    assert pair_set(data) == {
        ("5", "10"), ("5", "11"), ("5", "12"), ("3", "11"), ("5", "13"), ("3", "10"), ("8", "10"),
    }  # fmt: skip
    assert "train.txt" in data.source and "test.txt" in data.source


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("0 1 2\n1 2\n\n2 3\n3 4 abc 5\n", r"train\.txt line 5: item id 'abc' is not an integer"),
        ("0 1 2\nx1 2\n", r"train\.txt line 2: user id 'x1' is not an integer"),
        ("0 1 -2\n", r"train\.txt line 1: item id '-2' is negative"),
        ("0 1.5\n", r"train\.txt line 1: item id '1.5' is not an integer"),
        ("0 1\n1 12345678901234567890\n", r"train\.txt line 2: id '12345678901234567890' is too"),
    ],
)
def test_load_lightgcn_bad_ids(tmp_path: Path, content: str, message: str) -> None:
    with pytest.raises(DataError, match=message):
        load_lightgcn(write(tmp_path / "train.txt", content))


def test_load_lightgcn_error_names_the_test_file(tmp_path: Path) -> None:
    train = write(tmp_path / "train.txt", "0 1\n")
    test = write(tmp_path / "test.txt", "0 2\n1 two\n")
    with pytest.raises(DataError, match=r"test\.txt line 2: item id 'two'"):
        load_lightgcn(train, test)


def test_load_lightgcn_users_without_items_only(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"no .*pairs"):
        load_lightgcn(write(tmp_path / "train.txt", "0\n1\n"))


# ----------------------------------------------------------------------------- CSV


def test_load_csv_by_header_name(tmp_path: Path) -> None:
    text = 'ts,customer,product\n1,"Smith, J",p1\n2, ann ,p2\n\n3,"Smith, J",p2\n4,ann,p2\n'
    data = load_csv(
        write(tmp_path / "log.csv", text), user_column="customer", item_column="product"
    )
    assert data.external_user_ids.tolist() == ["Smith, J", "ann"]
    assert data.external_item_ids.tolist() == ["p1", "p2"]
    assert data.num_interactions == 3


def test_load_csv_missing_column(tmp_path: Path) -> None:
    path = write(tmp_path / "log.csv", "user,product\nu1,p1\n")
    with pytest.raises(DataError, match=r"log\.csv line 1: column 'item' not found.*user, product"):
        load_csv(path)


def test_load_csv_wrong_field_count(tmp_path: Path) -> None:
    path = write(tmp_path / "log.csv", "user,item\nu1,p1\nu2\n")
    with pytest.raises(
        DataError, match=r"log\.csv line 3: expected 2 comma-separated fields, got 1"
    ):
        load_csv(path)


def test_load_csv_header_only(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"log\.csv.*no .*pairs"):
        load_csv(write(tmp_path / "log.csv", "user,item\n"))


# ----------------------------------------------------------------------------- common errors

LOADERS = [load_pairs, load_movielens_ratings, load_lightgcn, load_csv, load_interactions]


@pytest.mark.parametrize("loader", LOADERS)
@pytest.mark.parametrize("content", ["", "\n  \n"])
def test_empty_file(tmp_path: Path, loader: object, content: str) -> None:
    path = write(tmp_path / "empty_file.txt", content)
    with pytest.raises(DataError, match=r"empty_file\.txt: file is empty"):
        loader(path)  # type: ignore[operator]


@pytest.mark.parametrize("loader", LOADERS)
def test_missing_file(tmp_path: Path, loader: object) -> None:
    with pytest.raises(DataError, match=r"no_such_file\.txt: file not found"):
        loader(tmp_path / "no_such_file.txt")  # type: ignore[operator]


def test_directory_and_binary_files(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="is a directory"):
        load_pairs(tmp_path)
    path = tmp_path / "blob.txt"
    path.write_bytes(b"1 2\n3 \x004\n")
    with pytest.raises(DataError, match=r"blob\.txt line 2: contains a NUL byte"):
        load_pairs(path)
    path.write_bytes(b"1 2\n3 \xff\n")
    with pytest.raises(DataError, match=r"blob\.txt line 2: not valid UTF-8"):
        load_pairs(path)


# ----------------------------------------------------------------------------- dispatch


def test_guess_format_and_dispatch(tmp_path: Path) -> None:
    csv_path = write(tmp_path / "a.csv", "user,item\nu,i\n")
    ratings = write(tmp_path / "ratings.dat", "1::2::3::4\n")
    colons = write(tmp_path / "other.dat", "1::2::3::4\n")
    pairs = write(tmp_path / "pairs.txt", "1 2\n")
    assert guess_format(csv_path) is InteractionFormat.CSV
    assert guess_format(ratings) is InteractionFormat.MOVIELENS
    assert guess_format(colons) is InteractionFormat.MOVIELENS
    assert guess_format(pairs) is InteractionFormat.PAIRS
    for path in (csv_path, ratings, colons, pairs):
        assert load_interactions(path).num_interactions == 1
    lightgcn = write(tmp_path / "train.txt", "0 1 2 3\n")
    assert load_interactions(lightgcn, InteractionFormat.LIGHTGCN).num_interactions == 3
    with pytest.raises(DataError, match=r"train\.txt line 1: expected 2 .*LIGHTGCN"):
        load_interactions(lightgcn)


# ----------------------------------------------------------------------------- InteractionData


def test_to_csr_and_fingerprint() -> None:
    data = make_data([3, 1, 2], num_items=4)
    matrix = data.to_csr()
    assert matrix.shape == (3, 4) and matrix.dtype == np.float32 and matrix.has_sorted_indices
    np.testing.assert_array_equal(matrix.toarray(), [[1, 1, 1, 0], [1, 0, 0, 0], [1, 1, 0, 0]])
    shuffled = np.random.default_rng(0).permutation(data.num_interactions)
    same_pairs = InteractionData(
        user_ids=data.user_ids[shuffled],
        item_ids=data.item_ids[shuffled],
        external_user_ids=data.external_user_ids,
        external_item_ids=data.external_item_ids,
        source="other",
    )
    assert same_pairs.fingerprint() == data.fingerprint()
    assert len(data.fingerprint()) == 64
    assert make_data([3, 2, 2], num_items=4).fingerprint() != data.fingerprint()
    assert make_data([3, 1, 2], num_items=5).fingerprint() != data.fingerprint()
    with pytest.raises(ValueError, match="read-only"):
        data.user_ids[0] = 1


def test_interaction_data_checks() -> None:
    users, items = np.array(["a", "b"]), np.array(["x"])
    with pytest.raises(DataError, match=r"user_ids must lie in \[0, 2\)"):
        InteractionData(np.array([0, 2]), np.array([0, 0]), users, items, "t")
    with pytest.raises(DataError, match="differ in length"):
        InteractionData(np.array([0, 1]), np.array([0]), users, items, "t")
    with pytest.raises(DataError, match="duplicate"):
        InteractionData(np.array([0]), np.array([0]), np.array(["a", "a"]), items, "t")


# ----------------------------------------------------------------------------- split


def test_split_is_deterministic_per_seed() -> None:
    data = make_data([8, 12, 5, 9, 12, 7], num_items=12)
    first, again, other = split_per_user(data, 7), split_per_user(data, 7), split_per_user(data, 8)
    for name in ("train", "valid", "test"):
        a, b = getattr(first, name), getattr(again, name)
        assert (a != b).nnz == 0
    assert any((getattr(first, n) != getattr(other, n)).nnz for n in ("train", "valid", "test"))
    assert first.seed == 7 and split_per_user(data).seed == 42


def test_split_partitions_the_data() -> None:
    data = make_data([8, 12, 5, 9, 1, 2, 3], num_items=12)
    split = split_per_user(data, 3)
    check_split(split)  # binary and pairwise disjoint
    union = split.train + split.valid + split.test
    assert (union != data.to_csr()).nnz == 0
    assert union.nnz == data.num_interactions
    for matrix in (split.train, split.valid, split.test):
        assert matrix.dtype == np.float32 and matrix.has_canonical_format
        assert matrix.shape == (data.num_users, data.num_items)
    assert split.external_user_ids.tolist() == data.external_user_ids.tolist()
    assert (split.num_users, split.num_items) == (7, 12)


def test_split_per_user_proportions() -> None:
    # Cuts at round(0.5 n), round(0.75 n) with numpy's half-to-even rounding.
    counts = [8, 12, 5, 9, 1, 2, 3]
    expected = {8: (4, 2, 2), 12: (6, 3, 3), 5: (2, 2, 1), 9: (4, 3, 2), 1: (0, 1, 0)}
    expected |= {2: (1, 1, 0), 3: (2, 0, 1)}
    split = split_per_user(make_data(counts), 11)
    for user, n in enumerate(counts):
        got = tuple(int(m[user].nnz) for m in (split.train, split.valid, split.test))
        assert got == expected[n], (user, n, got)


def test_hold_out_per_user_partitions_each_users_interactions_by_the_share() -> None:
    valid = split_per_user(make_data([8, 12, 5, 9, 1, 2, 3], num_items=12), 3).train
    kept, held = hold_out_per_user(valid, 0.5, seed=5)
    assert kept.multiply(held).nnz == 0 and (kept + held != valid).nnz == 0
    for matrix in (kept, held):
        assert matrix.dtype == np.float32 and matrix.has_canonical_format
    counts = np.diff(valid.indptr)
    assert held.getnnz(axis=1).tolist() == np.round(counts * 0.5).astype(int).tolist()
    again, other = hold_out_per_user(valid, 0.5, seed=5), hold_out_per_user(valid, 0.5, seed=6)
    assert (again[1] != held).nnz == 0 and (other[1] != held).nnz > 0
    with pytest.raises(ConfigError, match="share"):
        hold_out_per_user(valid, 1.0, seed=5)
    with pytest.raises(ConfigError, match="seed"):
        hold_out_per_user(valid, 0.5, seed=-1)


def test_split_custom_ratios() -> None:
    split = split_per_user(make_data([10, 20], num_items=20), 0, ratios=(0.8, 0.1, 0.1))
    assert split.train.getnnz(axis=1).tolist() == [8, 16]
    assert split.valid.getnnz(axis=1).tolist() == [1, 2]


def test_split_shuffles_within_users() -> None:
    # With items 0..99 of one user, train must not simply be the first 50 item ids.
    split = split_per_user(make_data([100], num_items=100), 42)
    assert sorted(split.train.indices.tolist()) != list(range(50))


@pytest.mark.parametrize(
    "ratios", [(0.5, 0.5, 0.0), (0.6, 0.3, 0.3), (0.5, 0.25), (-0.5, 1.0, 0.5), (float("nan"),) * 3]
)
def test_split_rejects_bad_ratios(ratios: tuple[float, float, float]) -> None:
    with pytest.raises(ConfigError, match="split ratios"):
        split_per_user(make_data([4]), ratios=ratios)


@pytest.mark.parametrize("seed", [-1, 1.5, "42"])
def test_split_rejects_bad_seed(seed: object) -> None:
    with pytest.raises(ConfigError, match="seed"):
        split_per_user(make_data([4]), seed=seed)  # type: ignore[arg-type]


def test_phase_semantics() -> None:
    split = split_per_user(make_data([8, 12, 6]), 5)
    train, held_out = split.phase(Phase.SEARCH)
    assert train is split.train and held_out is split.valid
    train, held_out = split.phase(Phase.TEST)
    assert held_out is split.test
    assert (train != split.train + split.valid).nnz == 0
    assert train.dtype == np.float32 and train.has_canonical_format
    assert np.all(train.data == 1)
    assert Phase("search") is Phase.SEARCH and Phase("test") is Phase.TEST


def test_dataset_split_checks_shapes() -> None:
    good = sp.csr_matrix((2, 3), dtype=np.float32)
    with pytest.raises(DataError, match=r"valid has shape \(2, 4\)"):
        DatasetSplit(
            good, sp.csr_matrix((2, 4)), good, np.array(["a", "b"]), np.array(["x", "y", "z"]), 0
        )


@settings(max_examples=40, deadline=None)
@given(
    counts=st.lists(st.integers(min_value=1, max_value=15), min_size=1, max_size=8),
    seed=st.integers(min_value=0, max_value=2**32),
)
def test_split_invariants_property(counts: list[int], seed: int) -> None:
    data = make_data(counts, num_items=15)
    split = split_per_user(data, seed)
    check_split(split)
    assert split.train.nnz + split.valid.nnz + split.test.nnz == sum(counts)
    for user, n in enumerate(counts):
        assert split.train[user].nnz == int(np.round(0.5 * n))
        assert split.train[user].nnz + split.valid[user].nnz == int(np.round(0.75 * n))


# ----------------------------------------------------------------------------- registry


def test_resolve_data_dir_precedence(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    flag_dir, env_dir, default_dir = tmp_path / "flag", tmp_path / "env", tmp_path / "data"
    for folder in (flag_dir, env_dir, default_dir):
        folder.mkdir()
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv(DATA_DIR_ENV, str(env_dir))
    assert resolve_data_dir(flag_dir) == flag_dir.resolve()
    assert resolve_data_dir(None) == env_dir.resolve()
    monkeypatch.delenv(DATA_DIR_ENV)
    assert resolve_data_dir(None) == default_dir.resolve()
    assert resolve_data_dir(None, environ={DATA_DIR_ENV: str(flag_dir)}) == flag_dir.resolve()


def test_resolve_data_dir_errors(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    missing = tmp_path / "missing"
    with pytest.raises(ConfigError, match=r"missing.*from --data-dir.*does not exist.*CIESS_DATA"):
        resolve_data_dir(missing, environ={})
    with pytest.raises(ConfigError, match=r"from \$CIESS_DATA_DIR.*does not exist"):
        resolve_data_dir(None, environ={DATA_DIR_ENV: str(missing)})
    with pytest.raises(ConfigError, match=r"'data' \(the default.*does not exist"):
        resolve_data_dir(None, environ={})
    a_file = write(tmp_path / "file.txt", "x")
    with pytest.raises(ConfigError, match="is not a directory"):
        resolve_data_dir(a_file, environ={})


def test_load_named_datasets(tmp_path: Path) -> None:
    write(tmp_path / "ml-1m" / "interactions.txt", "1 1\n1 48\n2 1\n")
    write(tmp_path / "yelp2018" / "train.txt", "0 0 1\n1 1\n")
    write(tmp_path / "yelp2018" / "test.txt", "0 2\n1 0\n")
    ml = load_dataset("ml-1m", tmp_path)
    assert (ml.num_users, ml.num_items, ml.num_interactions) == (2, 2, 3)
    yelp = load_dataset("yelp2018", tmp_path)
    assert (yelp.num_users, yelp.num_items, yelp.num_interactions) == (2, 3, 5)
    # ratings.dat wins over interactions.txt when both are there.
    write(tmp_path / "ml-1m" / "ratings.dat", "1::1::5::0\n")
    assert load_dataset("ML-1M", tmp_path).num_interactions == 1
    assert DATASETS["ml-1m"].reward_penalty == 0.4
    assert DATASETS["yelp2018"].reward_penalty == 0.2


def test_load_dataset_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"unknown dataset 'netflix'.*ml-1m, yelp2018"):
        load_dataset("netflix", tmp_path)
    with pytest.raises(DataError, match=r"folder .*yelp2018 not found"):
        load_dataset("yelp2018", tmp_path)
    (tmp_path / "yelp2018").mkdir()
    write(tmp_path / "yelp2018" / "train.txt", "0 1\n")
    with pytest.raises(DataError, match=r"test\.txt: file not found"):
        load_dataset("yelp2018", tmp_path)
    (tmp_path / "ml-1m").mkdir()
    with pytest.raises(DataError, match=r"ratings\.dat nor .*interactions\.txt"):
        load_dataset("ml-1m", tmp_path)
    with pytest.raises(DataError, match=r"mine\.csv: file not found"):
        load_dataset(str(tmp_path / "mine.csv"), tmp_path)


def test_load_dataset_from_a_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    own = write(tmp_path / "own" / "clicks.csv", "user,item\na,b\na,c\n")
    assert load_dataset(str(own), tmp_path).num_interactions == 2
    # A relative path that is not under the working directory is looked up in the data dir.
    monkeypatch.chdir(tmp_path / "own")
    assert load_dataset("own/clicks.csv", tmp_path).num_interactions == 2
    assert load_dataset("clicks.csv", tmp_path / "elsewhere").num_interactions == 2


# ----------------------------------------------------------------------------- LightGCN folders


def test_open_dataset_merges_a_lightgcn_folder_like_yelp2018(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    train = "0 10 11\n1 11 12\n"
    test = "1 10 11\n2 12\n0 13\n"  # users 0 and 1 again; (1, 11) is also in train.txt
    folder = tmp_path / "mine"
    write(folder / "train.txt", train)
    write(folder / "test.txt", test)
    write(folder / "user_list.txt", "org_id remap_id\nalice 0\n")  # not interactions: ignored
    monkeypatch.chdir(tmp_path)  # no ./data: the path is loaded without a data directory
    monkeypatch.delenv(DATA_DIR_ENV, raising=False)
    data = open_dataset(str(folder), None)
    assert data.external_user_ids.tolist() == ["0", "1", "2"]
    assert data.external_item_ids.tolist() == ["10", "11", "12", "13"]
    assert data.num_interactions == 7
    assert pair_set(data) == {
        ("0", "10"), ("0", "11"), ("1", "11"), ("1", "12"), ("1", "10"), ("2", "12"), ("0", "13"),
    }  # fmt: skip
    assert "train.txt" in data.source and "test.txt" in data.source
    # The same ids and pairs as the registered yelp2018 loader gives for the same files.
    write(tmp_path / "data" / "yelp2018" / "train.txt", train)
    write(tmp_path / "data" / "yelp2018" / "test.txt", test)
    yelp = open_dataset("yelp2018", tmp_path / "data")
    for other in (yelp, open_dataset("mine", None), open_dataset("mine/", tmp_path / "data")):
        np.testing.assert_array_equal(other.user_ids, data.user_ids)
        np.testing.assert_array_equal(other.item_ids, data.item_ids)
        assert other.external_user_ids.tolist() == data.external_user_ids.tolist()
        assert other.external_item_ids.tolist() == data.external_item_ids.tolist()


def test_lightgcn_folder_with_train_only_then_valid(tmp_path: Path) -> None:
    write(tmp_path / "train.txt", "3 1 2\n4 2\n3 2\n")
    data = load_dataset(str(tmp_path), tmp_path)
    assert (data.num_users, data.num_items, data.num_interactions) == (2, 2, 3)
    assert data.source == str(tmp_path / "train.txt")
    # valid.txt is merged between train.txt and test.txt: its new item comes before test's.
    write(tmp_path / "test.txt", "5 9\n")
    write(tmp_path / "valid.txt", "5 8 1\n")
    data = load_dataset(str(tmp_path), tmp_path)
    assert data.external_user_ids.tolist() == ["3", "4", "5"]
    assert data.external_item_ids.tolist() == ["1", "2", "8", "9"]
    assert data.num_interactions == 6


def test_lightgcn_folder_errors(tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(
        DataError, match=rf"{re.escape(str(empty))}: no train\.txt .*valid\.txt and test\.txt"
    ):
        open_dataset(str(empty), tmp_path)
    write(empty / "test.txt", "0 1\n")
    with pytest.raises(DataError, match=r"empty: no train\.txt .*\(found: test\.txt\)"):
        open_dataset(str(empty), tmp_path)
    bad = tmp_path / "bad"
    write(bad / "train.txt", "0 1\n")
    write(bad / "test.txt", "0 2\n\n1 two\n")
    with pytest.raises(DataError, match=r"bad[/\\]test\.txt line 3: item id 'two' is not an"):
        open_dataset(str(bad), tmp_path)
