"""The cheapest way to hold a function's last replica through the gap to its next call, from the
learned distribution of those gaps. Pure (no Ray), O(bins).

After each call the policy may keep the replica warm for `keep_s`, or keep it for `keep_s`, stop,
and start it again so that it is warm over [`prewarm_from_s`, `prewarm_until_s`) (offsets from the
call). Each schedule costs, per gap, the replica-seconds it holds the GPU without work plus
`cold_start_cost` for every call that finds no replica (a cold start also costs the start itself,
which the caller folds into that price). The plan picked minimises the expected cost over the
histogram. With one exchange rate for every function, the sum over functions is the least idle
reachable at that many cold starts by per-function plans of this shape, which includes every fixed
keep-alive (the same K for all): a policy that learns well lies below the fixed keep-alive frontier.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

INF = float("inf")


@dataclass(frozen=True)
class GapPlan:
    """A schedule relative to the last call: warm over [0, keep_s), then (when prewarm_from_s is
    finite) warm again over [prewarm_from_s, prewarm_until_s). `cost` is its expected cost per gap."""

    keep_s: float
    prewarm_from_s: float = INF
    prewarm_until_s: float = -INF
    cost: float = 0.0

    @property
    def prewarms(self) -> bool:
        return self.prewarm_from_s < INF


def cheapest_plan(
    edges: Sequence[float],
    weights: Sequence[float],
    sums: Sequence[float],
    beyond: float,
    *,
    cold_start_cost: float,
    lead_s: float,
    max_keep_s: float,
    keep_only: bool = False,
) -> GapPlan:
    """The cheapest schedule for a gap histogram.

    `edges[j]` is the lower edge of bin j (len(weights) + 1 edges, the last one the histogram's
    upper end), `weights[j]` the (decayed) number of gaps in bin j, `sums[j]` their weighted sum of
    seconds, `beyond` the weight of gaps past the last edge. A prewarm starts the replica `lead_s`
    before the window opens; no window or keep-alive reaches past `max_keep_s`. `keep_only`: no
    pre-warm window (a keep-alive alone).
    """
    n = len(weights)
    total = sum(weights) + beyond
    if total <= 0:
        return GapPlan(keep_s=0.0)
    lam = cold_start_cost
    below_w = [0.0] * (n + 1)  # weight of gaps below edges[j]
    below_m = [0.0] * (n + 1)  # their seconds
    for j in range(n):
        below_w[j + 1] = below_w[j] + weights[j]
        below_m[j + 1] = below_m[j] + sums[j]

    def idle_kept(j: int) -> float:  # sum of min(gap, edges[j])
        return below_m[j] + edges[j] * (total - below_w[j])

    last = max(j for j in range(n + 1) if edges[j] <= max_keep_s) if edges[0] <= max_keep_s else 0

    # Keep warm until edges[j]: idle min(gap, K), and every gap past K is a cold start.
    best = GapPlan(keep_s=edges[0], cost=idle_kept(0) + lam * (total - below_w[0]))
    for j in range(1, last + 1):
        cost = idle_kept(j) + lam * (total - below_w[j])
        if cost < best.cost:
            best = GapPlan(keep_s=edges[j], cost=cost)
    if keep_only:
        return GapPlan(best.keep_s, cost=best.cost / total)

    # Keep until edges[l], stop, be warm again over [edges[p], edges[q]) (started lead_s before):
    #   f(l) + lam*W(<p) - M(<p) + (lead - E_p)*W(>=p) + h(q), with
    #   f(l) = idle_kept(l) - lam*W(<l) and h(q) = M(<q) + (E_q + lam)*W(>=q); the best l for each p
    #   is a running minimum, the best q > p a suffix minimum.
    suffix_h = [INF] * (last + 2)
    suffix_q = [-1] * (last + 2)
    for q in range(last, -1, -1):
        h = below_m[q] + (edges[q] + lam) * (total - below_w[q])
        if h <= suffix_h[q + 1]:  # ties: the earliest end
            suffix_h[q], suffix_q[q] = h, q
        else:
            suffix_h[q], suffix_q[q] = suffix_h[q + 1], suffix_q[q + 1]
    best_f, best_l = INF, -1
    l_next = 0
    for p in range(1, last):
        while l_next <= p and edges[l_next] + lead_s < edges[p]:
            f = idle_kept(l_next) - lam * below_w[l_next]
            if f < best_f:
                best_f, best_l = f, l_next
            l_next += 1
        if best_l < 0 or weights[p] <= 0:
            continue  # a window opens where gaps were seen
        cost = best_f + lam * below_w[p] - below_m[p] + (lead_s - edges[p]) * (total - below_w[p]) + suffix_h[p + 1]
        if cost < best.cost:
            best = GapPlan(
                keep_s=edges[best_l],
                prewarm_from_s=edges[p],
                prewarm_until_s=edges[suffix_q[p + 1]],
                cost=cost,
            )
    return GapPlan(best.keep_s, best.prewarm_from_s, best.prewarm_until_s, best.cost / total)
