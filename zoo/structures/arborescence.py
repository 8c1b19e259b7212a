r"""The maximum spanning arborescence (Chu & Liu 1965; Edmonds 1967), batched.

The MAP of `NonProjectiveDependencyCRF`: every node takes its best incoming
arc; the cycles this creates are contracted (arcs entering a cycle at v
reweighted by the cycle arc they replace) until none is left, and the
contractions are undone in reverse. Here every cycle of a round is contracted
at once, cycles are found by pointer doubling, and sentences leave the
working batch as soon as they have no cycle. O(N³) per sentence in the worst
case (Tarjan 1977 and Gabow et al. 1986 give O(N²) ones).
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["max_arborescence"]


def max_arborescence(scores: Tensor) -> Tensor:
    """Chu–Liu/Edmonds maximum spanning arborescence, batched.

    Each round every node takes its best incoming arc; all cycles of that
    graph are found by pointer doubling and contracted at once (arcs entering
    a cycle at v reweighted by -best[v]); rounds repeat until no cycle is left,
    and the contractions are undone in reverse: in every cycle, all arcs are
    kept but the one into the node that the outside arc enters. Sentences
    leave the working batch as soon as they have no cycle.

    Args:
        scores: ``(B, M, M)`` float64, ``scores[b, m, h]`` the score of arc
            h → m (one row of incoming arcs per node), node 0 the root; -inf
            where there is no arc (row 0, the diagonal). Every other node
            needs a finite incoming arc.

    Returns:
        ``(B, M)`` the head of every node (0 for the root itself).
    """
    batch, size, _ = scores.shape
    if batch == 0:
        return torch.zeros(0, size, dtype=torch.long, device=scores.device)
    ids = torch.arange(size, device=scores.device)
    # code[b, v, u]: the original arc h * M + m behind the current arc u → v.
    code = (ids * size + ids.unsqueeze(-1)).expand(batch, size, size).contiguous()
    comp = ids.expand(batch, size).clone()  # original node → current (super)node id
    rows = torch.arange(batch, device=scores.device)  # the sentences still contracting
    chosen = torch.zeros(batch, size, dtype=torch.long, device=scores.device)
    alive_at_end = torch.zeros(batch, size, dtype=torch.bool, device=scores.device)
    levels = []
    doublings = max(1, (size - 1).bit_length())  # 2^doublings ≥ M steps reach every cycle
    while True:
        nodes = ids.expand(rows.shape[0], size)
        best, parent = scores.max(-1)  # (b, M)
        alive = torch.isfinite(best)  # current non-root nodes
        parent = torch.where(alive, parent, nodes)
        # After ≥ M steps every walk is on a cycle; track each orbit's smallest id.
        jump, smallest = parent, nodes
        for _ in range(doublings):
            smallest = torch.minimum(smallest, smallest.gather(-1, jump))
            jump = jump.gather(-1, jump)
        on_cycle = torch.zeros_like(alive).scatter_(-1, jump, True) & (parent != nodes)
        incoming = code.gather(-1, parent.unsqueeze(-1)).squeeze(-1)  # (b, M): arc into each node
        done = ~on_cycle.any(-1)
        if bool(done.any()):
            chosen[rows[done]] = incoming[done]
            alive_at_end[rows[done]] = alive[done]
            if bool(done.all()):
                break
            left = ~done
            rows, scores, code, comp = rows[left], scores[left], code[left], comp[left]
            best, on_cycle, smallest = best[left], on_cycle[left], smallest[left]
            incoming, nodes = incoming[left], nodes[left]
        cycle = torch.where(on_cycle, smallest, nodes)  # (b, M): new id of each node
        levels.append((rows, comp, on_cycle, incoming))
        reweighted = scores - torch.where(on_cycle, best, 0.0).unsqueeze(-1)
        reweighted = reweighted.masked_fill(cycle.unsqueeze(-1) == cycle.unsqueeze(-2), -torch.inf)
        target = (cycle.unsqueeze(-1) * size + cycle.unsqueeze(-2)).flatten(1)
        flat = reweighted.flatten(1)
        merged = torch.full_like(flat, -torch.inf).scatter_reduce(-1, target, flat, "amax")
        hit = (flat == merged.gather(-1, target)) & torch.isfinite(flat)
        origin = torch.where(hit, code.flatten(1), -1)
        code = torch.full_like(origin, -1).scatter_reduce(-1, target, origin, "amax")
        code = code.view(-1, size, size)
        scores = merged.view(-1, size, size)
        comp = cycle.gather(-1, comp)
    heads = torch.zeros_like(chosen)
    entered = torch.zeros_like(alive_at_end)

    def keep(heads: Tensor, entered: Tensor, arc: Tensor, take: Tensor) -> None:
        # Writes of rows not taken go to node 0 (the root), whose head is 0.
        child = torch.where(take, arc % size, 0)
        heads.scatter_(-1, child, torch.where(take, arc // size, 0))
        entered.scatter_(-1, child, take)

    keep(heads, entered, chosen, alive_at_end)
    for rows, comp, on_cycle, incoming in reversed(levels):
        sub_heads, sub_entered = heads[rows], entered[rows]
        inside = torch.zeros_like(on_cycle).scatter_reduce(-1, comp, sub_entered, "amax")
        keep(sub_heads, sub_entered, incoming, on_cycle & ~inside)
        heads[rows], entered[rows] = sub_heads, sub_entered
    return heads
