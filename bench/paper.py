"""Reference numbers from the CIESS paper (Table 1, ML-1M and Yelp2018) and from its follow-up BET,
as printed in shared/spec/CIESS.md §8.

These are the paper's numbers, never ours: reports print them beside our measurements and label
them "paper".
"""

from __future__ import annotations

# (backbone, method, sparsity) -> (R@5, R@20, N@5, N@20)
PAPER_ML1M: dict[tuple[str, str, float], tuple[float, float, float, float]] = {
    ("lightgcn", "es", 0.80): (0.0825, 0.2248, 0.4536, 0.3969),
    ("lightgcn", "mr", 0.80): (0.0737, 0.2004, 0.4211, 0.3648),
    ("lightgcn", "ciess", 0.80): (0.0920, 0.2436, 0.4854, 0.4257),
    ("lightgcn", "es", 0.90): (0.0778, 0.2105, 0.4376, 0.3787),
    ("lightgcn", "mr", 0.90): (0.0663, 0.1802, 0.3948, 0.3383),
    ("lightgcn", "ciess", 0.90): (0.0846, 0.2248, 0.4631, 0.4023),
    ("lightgcn", "es", 0.95): (0.0646, 0.1752, 0.3847, 0.3272),
    ("lightgcn", "mr", 0.95): (0.0594, 0.1634, 0.3657, 0.3119),
    ("lightgcn", "ciess", 0.95): (0.0744, 0.2009, 0.4264, 0.3664),
    ("ngcf", "es", 0.80): (0.0803, 0.2232, 0.4281, 0.3858),
    ("ngcf", "mr", 0.80): (0.0748, 0.2053, 0.4202, 0.3693),
    ("ngcf", "ciess", 0.80): (0.0800, 0.2148, 0.4442, 0.3854),
    ("ngcf", "es", 0.90): (0.0747, 0.2069, 0.4149, 0.3679),
    ("ngcf", "mr", 0.90): (0.0745, 0.2056, 0.4122, 0.3660),
    ("ngcf", "ciess", 0.90): (0.0782, 0.2082, 0.4385, 0.3779),
    ("ngcf", "es", 0.95): (0.0736, 0.1977, 0.4134, 0.3595),
    ("ngcf", "mr", 0.95): (0.0728, 0.1958, 0.4152, 0.3593),
    ("ngcf", "ciess", 0.95): (0.0774, 0.2055, 0.4333, 0.3727),
    ("ncf", "es", 0.80): (0.0779, 0.2080, 0.4121, 0.3682),
    ("ncf", "mr", 0.80): (0.0692, 0.1914, 0.3787, 0.3374),
    ("ncf", "ciess", 0.80): (0.0792, 0.2221, 0.4233, 0.3828),
    ("ncf", "es", 0.90): (0.0694, 0.1973, 0.4011, 0.3546),
    ("ncf", "mr", 0.90): (0.0605, 0.1703, 0.3523, 0.3127),
    ("ncf", "ciess", 0.90): (0.0759, 0.2131, 0.4216, 0.3750),
    # The paper's N@5 of PEP and ES may be swapped in this row (spec §8 "?").
    ("ncf", "es", 0.95): (0.0666, 0.1841, 0.3864, 0.3358),
    ("ncf", "mr", 0.95): (0.0595, 0.1637, 0.3575, 0.3072),
    ("ncf", "ciess", 0.95): (0.0707, 0.1982, 0.4082, 0.3587),
}

PAPER_YELP2018: dict[tuple[str, str, float], tuple[float, float, float, float]] = {
    ("lightgcn", "es", 0.80): (0.0289, 0.0822, 0.0665, 0.0758),
    ("lightgcn", "mr", 0.80): (0.0253, 0.0783, 0.0588, 0.0698),
    ("lightgcn", "ciess", 0.80): (0.0292, 0.0839, 0.0692, 0.0783),
    ("lightgcn", "es", 0.90): (0.0230, 0.0722, 0.0544, 0.0648),
    ("lightgcn", "mr", 0.90): (0.0210, 0.0642, 0.0476, 0.0573),
    ("lightgcn", "ciess", 0.90): (0.0263, 0.0730, 0.0649, 0.0705),
    ("lightgcn", "es", 0.95): (0.0217, 0.0624, 0.0494, 0.0571),
    ("lightgcn", "mr", 0.95): (0.0195, 0.0583, 0.0465, 0.0540),
    ("lightgcn", "ciess", 0.95): (0.0230, 0.0657, 0.0534, 0.0640),
    ("ngcf", "es", 0.80): (0.0223, 0.0665, 0.0517, 0.0603),
    ("ngcf", "mr", 0.80): (0.0212, 0.0618, 0.0499, 0.0573),
    ("ngcf", "ciess", 0.80): (0.0233, 0.0701, 0.0566, 0.0652),
    ("ngcf", "es", 0.90): (0.0205, 0.0622, 0.0528, 0.0592),
    ("ngcf", "mr", 0.90): (0.0195, 0.0573, 0.0449, 0.0524),
    ("ngcf", "ciess", 0.90): (0.0232, 0.0669, 0.0551, 0.0619),
    ("ngcf", "es", 0.95): (0.0196, 0.0573, 0.0496, 0.0545),
    ("ngcf", "mr", 0.95): (0.0175, 0.0528, 0.0415, 0.0486),
    ("ngcf", "ciess", 0.95): (0.0222, 0.0662, 0.0540, 0.0613),
    ("ncf", "es", 0.80): (0.0131, 0.0465, 0.0226, 0.0351),
    ("ncf", "mr", 0.80): (0.0101, 0.0342, 0.0183, 0.0268),
    ("ncf", "ciess", 0.80): (0.0175, 0.0533, 0.0377, 0.0474),
    ("ncf", "es", 0.90): (0.0119, 0.0416, 0.0201, 0.0309),
    ("ncf", "mr", 0.90): (0.0089, 0.0309, 0.0170, 0.0242),
    ("ncf", "ciess", 0.90): (0.0153, 0.0500, 0.0350, 0.0442),
    ("ncf", "es", 0.95): (0.0091, 0.0303, 0.0174, 0.0238),
    ("ncf", "mr", 0.95): (0.0078, 0.0275, 0.0145, 0.0216),
    ("ncf", "ciess", 0.95): (0.0157, 0.0483, 0.0383, 0.0446),
}

# BET (WSDM 2024), Yelp2018, CIESS.md §8: (backbone, sparsity) -> (R@20, N@20).
PAPER_BET_YELP2018: dict[tuple[str, float], tuple[float, float]] = {
    ("lightgcn", 0.80): (0.0873, 0.0816),
    ("lightgcn", 0.90): (0.0816, 0.0762),
    ("lightgcn", 0.95): (0.0727, 0.0676),
    ("ngcf", 0.80): (0.0741, 0.0685),
    ("ngcf", 0.90): (0.0736, 0.0676),
    ("ngcf", 0.95): (0.0639, 0.0588),
    ("ncf", 0.80): (0.0620, 0.0554),
    ("ncf", 0.90): (0.0565, 0.0499),
    ("ncf", 0.95): (0.0545, 0.0491),
}

PAPER_TABLES = {"ml-1m": PAPER_ML1M, "yelp2018": PAPER_YELP2018}

PAPER_METRICS = ("recall@5", "recall@20", "ndcg@5", "ndcg@20")


def paper_row(
    backbone: str, method: str, sparsity: float, dataset: str = "ml-1m"
) -> dict[str, float] | None:
    values = PAPER_TABLES.get(dataset, {}).get((backbone, method, round(sparsity, 2)))
    return None if values is None else dict(zip(PAPER_METRICS, values, strict=True))


def bet_row(backbone: str, sparsity: float, dataset: str) -> dict[str, float] | None:
    """BET's R@20 / N@20 (Yelp2018 only), or None."""
    if dataset != "yelp2018":
        return None
    values = PAPER_BET_YELP2018.get((backbone, round(sparsity, 2)))
    return None if values is None else {"recall@20": values[0], "ndcg@20": values[1]}


# The paper's ablation (LightGCN, ML-1M), CIESS.md §8: (sparsity, variant) -> (R@20, N@20).
# Variants are named as bench/ciess.py names them.
PAPER_ABLATION_ML1M: dict[tuple[float, str], tuple[float, float]] = {
    (0.80, "walk-gaussian"): (0.2437, 0.4250),
    (0.80, "walk-ou"): (0.2432, 0.4243),
    (0.80, "walk-uniform"): (0.2421, 0.4241),
    (0.80, "no-walk"): (0.2130, 0.3825),
    (0.90, "walk-gaussian"): (0.2248, 0.4023),
    (0.90, "walk-ou"): (0.2212, 0.3936),
    (0.90, "walk-uniform"): (0.2212, 0.3971),
    (0.90, "no-walk"): (0.1995, 0.3635),
    (0.95, "walk-gaussian"): (0.2009, 0.3664),
    (0.95, "walk-ou"): (0.2027, 0.3570),
    (0.95, "walk-uniform"): (0.1972, 0.3554),
    (0.95, "no-walk"): (0.1890, 0.3493),
}
