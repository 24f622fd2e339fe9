"""Routing fan-out: how many distinct ranks and nodes one token's top-k experts live on, computed
from the model's routing rules and the EP layout instead of assumed.

Rules: DeepSeek-V3's group-limited routing first picks `limited_groups` of `expert_groups`
expert groups, then the top-k experts inside them (a model with one group is plain top-k). The
scores are modelled as random, which is what DeepSeek's profiles and DeepEP's benchmarks simulate
("absolutely balanced routing"): the chosen groups are a uniform subset, the k experts a uniform
k-subset of the chosen groups' experts. `uniform` drops the group limit (plain random top-k over
all experts, as bench/capture's DeepEP captures route); `spread` is the upper bound of a
group-limited token, one node per chosen group (seed004's assumption, and the payload the
single-GPU stand-in capture in traces/observed/h100 copies).

Layout: experts are placed in order, `E / ep` per rank, `ranks_per_node` ranks per node (DeepEP's
and SGLang's layout); redundant (EPLB) replicas are left out of the fan-out.

The expectation is exact: for each set of chosen groups, a unit (rank or node) holding c of the U
eligible experts misses all k picks with probability C(U - c, k) / C(U, k)."""
from __future__ import annotations

import itertools
import math
from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from .catalog import Model

ROUTINGS = ("model", "uniform", "spread")
MAX_GROUP_SETS = 20_000     # C(groups, limited) enumerated exactly up to this many sets


@dataclass(frozen=True)
class Fanout:
    """Expected distinct destinations of one token (its own rank / node counted when hit)."""
    ranks: float
    nodes: float
    ep: int
    n_nodes: int

    @property
    def remote_ranks(self) -> float:
        """Distinct ranks other than the token's own (its rank is uniform and independent of routing)."""
        return self.ranks * (self.ep - 1) / self.ep

    @property
    def remote_nodes(self) -> float:
        return self.nodes * (self.n_nodes - 1) / self.n_nodes


def fanout(model: Model, ep: int, ranks_per_node: int, routing: str = "model", convention: str = "computed") -> Fanout:
    """Expected distinct ranks and nodes a token's experts live on under `routing`. The `seed`
    convention is seed004's: a group-limited token reaches min(nodes, limited_groups) nodes (and
    ranks), any other n x (1 - (1 - 1/n)^k) of n units; routing `spread` asks for the same rule
    (every chosen group on its own node: the most a group-limited token can reach)."""
    if convention == "seed" or routing == "spread":
        n_nodes = max(1, -(-ep // ranks_per_node))
        return Fanout(_seed_units(model, ep), _seed_units(model, n_nodes), ep, n_nodes)
    groups, limited = model.expert_groups, model.limited_groups
    if routing == "uniform" or not model.group_limited:
        groups, limited = 1, 1
    ranks, nodes = _fanout(model.routed_experts, model.activated_experts, groups, limited, ep,
                           max(1, min(ranks_per_node, ep)))
    return Fanout(ranks, nodes, ep, max(1, -(-ep // ranks_per_node)))


@lru_cache(maxsize=256)
def _fanout(experts: int, k: int, groups: int, limited: int, ep: int, per_node: int) -> tuple[float, float]:
    expert = np.arange(experts)
    rank = expert * ep // experts                      # E / ep consecutive experts per rank
    node = rank // per_node
    group = expert * groups // experts
    n_nodes = int(node.max()) + 1
    # experts of each group on each rank / node: [groups x units]
    by_rank = np.zeros((groups, ep))
    np.add.at(by_rank, (group, rank), 1)
    by_node = np.zeros((groups, n_nodes))
    np.add.at(by_node, (group, node), 1)
    n_sets = math.comb(groups, limited)
    if n_sets > MAX_GROUP_SETS:                         # a deterministic sample of the group sets
        rng = np.random.default_rng(0)
        sets = np.array([rng.choice(groups, limited, replace=False) for _ in range(MAX_GROUP_SETS)])
    else:
        sets = np.array(list(itertools.combinations(range(groups), limited)))
    eligible = int(round(experts * limited / groups))  # U: experts of the chosen groups
    miss = _miss_table(eligible, k)

    def expected(by_unit: np.ndarray) -> float:
        c = by_unit[sets].sum(axis=1).astype(int)       # [sets x units] eligible experts per unit
        return float(np.mean(np.sum(1.0 - miss[c], axis=1)))

    return expected(by_rank), expected(by_node)


def _miss_table(u: int, k: int) -> np.ndarray:
    """P(no pick lands among c given experts) for c = 0..u: C(u - c, k) / C(u, k)."""
    total = math.comb(u, k)
    return np.array([math.comb(u - c, k) / total for c in range(u + 1)])


def _seed_units(model: Model, units: int) -> float:
    if units <= 1:
        return 1.0
    if model.group_limited:
        return float(min(units, model.limited_groups))
    return units * (1 - (1 - 1 / units) ** model.activated_experts)
