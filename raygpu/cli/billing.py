"""`raygpu bill` and `raygpu cost`: GPU-seconds by phase, and serverless vs dedicated vs per request."""

from __future__ import annotations

from decimal import Decimal

import click
from rich.table import Table

from billing.cost import CostComparison
from billing.node_bill import NodeBill
from raygpu.cli.common import address_option, cluster, console, fail, run
from raygpu.ops.contracts import Bill

PHASES = ("cold_start", "active", "idle")
OPTION_TITLES = {
    "serverless": "serverless (as billed)",
    "dedicated": "dedicated GPUs, hourly",
    "per_request": "per-request API",
}


def bill_csv(bill: Bill) -> list[str]:
    """The bill as CSV lines, header first."""
    lines = [",".join(["app", "function", "day", *(f"{p}_gpu_s" for p in PHASES), "gpu_s", "cost_usd"])]
    for line in bill.lines:
        lines.append(
            ",".join(
                [
                    line.app,
                    line.function,
                    line.day or "",
                    *(line.gpu_seconds[p] for p in PHASES),
                    line.total_gpu_seconds,
                    line.total_cost_usd,
                ]
            )
        )
    return lines


def bill_table(bill: Bill) -> tuple[Table, str]:
    """The bill as a table and its total line."""
    by_day = bill.by == "day"
    table = Table(
        "app",
        "function",
        *(["day"] if by_day else []),
        "cold start GPU-s",
        "active GPU-s",
        "idle GPU-s",
        "starts",
        "cost $",
    )
    for line in bill.lines:
        table.add_row(
            line.app,
            line.function,
            *([line.day or ""] if by_day else []),
            *(f"{Decimal(line.gpu_seconds[p]):.1f}" for p in PHASES),
            str(line.replica_starts),
            f"{Decimal(line.total_cost_usd):.4f}",
        )
    return table, f"total: {Decimal(bill.total_gpu_seconds):.1f} GPU-s, ${Decimal(bill.total_cost_usd):.4f}"


def cost_lines(target: str | None, comparison: CostComparison) -> tuple[Table, list[str]]:
    """The cost comparison as a table of options and the lines that explain it."""
    table = Table(
        "option",
        "cost $",
        "basis",
        title=f"{target or 'all apps'}: {comparison.requests} requests over "
        f"{float(comparison.period_s) / 3600:.2f} h, peak {comparison.peak_replicas} replicas / "
        f"{comparison.peak_gpus} GPUs",
    )
    for option in comparison.options:
        price = (
            f"{option.low_usd:.4f}"
            if option.low_usd == option.high_usd
            else f"{option.low_usd:.4f} - {option.high_usd:.4f}"
        )
        mark = " [green](cheapest)[/green]" if option.option == comparison.cheapest else ""
        table.add_row(OPTION_TITLES[option.option] + mark, price, option.basis)
    notes = []
    if comparison.utilisation is not None:
        notes.append(f"utilisation of the rented GPUs: {comparison.utilisation:.2%}")
    if comparison.break_even_utilisation is not None:
        low, high = comparison.break_even_utilisation.low, comparison.break_even_utilisation.high
        notes.append(
            f"dedicated GPUs pay off above {low:.1%} utilisation (at the low price) to "
            + (f"{high:.1%} (at the high price)" if high <= 1 else "never (at the high price)")
        )
    if comparison.serverless_usd_per_request is not None:
        notes.append(f"serverless cost per request: ${comparison.serverless_usd_per_request}")
    if comparison.cheapest and not comparison.cheapest_at_any_price:
        notes.append("the ranges overlap: the cheapest option depends on the prices you get")
    return table, notes


def node_bill_lines(nodes: NodeBill) -> tuple[Table, list[str]]:
    """`raygpu bill --nodes` as a table of GPU nodes and the totals."""
    table = Table(
        "node", "type", "GPUs", "alive", "alive GPU-s", "billed", "provisioning", "idle node", "unused GPUs", "replicas"
    )
    for n in nodes.nodes:
        ended = "alive" if n.ended_at is None else f"{(n.ended_at - n.started_at):.0f} s"
        table.add_row(
            n.node_id[:12] + (" (head)" if n.is_head else ""),
            n.node_type or "-",
            f"{n.gpus:g}x {n.accelerator or 'GPU'}",
            ended,
            f"{n.alive_gpu_seconds:.1f}",
            f"{n.billed_gpu_seconds:.1f}",
            f"{n.provisioning_gpu_seconds:.1f}",
            f"{n.idle_node_gpu_seconds:.1f}",
            f"{n.unused_gpu_seconds:.1f}",
            str(n.replicas),
        )
    gap = nodes.alive_gpu_seconds - nodes.billed_gpu_seconds
    notes = [
        f"GPU nodes alive: {nodes.alive_gpu_seconds:.1f} GPU-s; billed to functions: {nodes.billed_gpu_seconds:.1f} "
        f"GPU-s; gap {gap:.1f} GPU-s = provisioning {nodes.provisioning_gpu_seconds:.1f} + idle nodes "
        f"{nodes.idle_node_gpu_seconds:.1f} + GPUs no replica used {nodes.unused_gpu_seconds:.1f}"
    ]
    if nodes.billed_elsewhere_gpu_seconds:
        notes.append(f"billed on nodes the meter did not record: {nodes.billed_elsewhere_gpu_seconds:.1f} GPU-s")
    return table, notes


@click.command("bill")
@click.argument("app", required=False)
@click.option("--since", default=None, help="Start (ISO 8601 UTC or Unix time).")
@click.option("--until", default=None, help="End (ISO 8601 UTC or Unix time).")
@click.option("--by", type=click.Choice(["function", "day"]), default="function", show_default=True)
@click.option("--json", "as_json", is_flag=True)
@click.option("--csv", "as_csv", is_flag=True)
@click.option(
    "--nodes",
    "by_nodes",
    is_flag=True,
    help="GPU-seconds of GPU nodes alive (what the cloud charges) next to those billed to functions.",
)
@address_option
def bill_command(
    app: str | None,
    since: str | None,
    until: str | None,
    by: str,
    as_json: bool,
    as_csv: bool,
    by_nodes: bool,
    address: str | None,
) -> None:
    """GPU-seconds by phase (cold start, active, idle) and cost per function; with --nodes, the
    GPU nodes' own GPU-seconds and where those not billed to functions went."""
    from raygpu.ops.usage import parse_time

    lo, hi = run(lambda: (parse_time(since), parse_time(until)))
    target_cluster = cluster(address)
    if by_nodes:
        if app or as_csv or by != "function":
            fail("--nodes covers the whole cluster: use it without APP, --by or --csv")
        nodes = run(lambda: target_cluster.node_bill(lo, hi))
        if as_json:
            click.echo(nodes.model_dump_json())
            return
        table, notes = node_bill_lines(nodes)
        console.print(table)
        for note in notes:
            console.print(note)
        return
    out = run(lambda: target_cluster.bill(app, lo, hi, by))
    if as_json:
        click.echo(out.model_dump_json())
    elif as_csv:
        click.echo("\n".join(bill_csv(out)))
    else:
        table, total = bill_table(out)
        console.print(table)
        console.print(total)


@click.command()
@click.argument("target", required=False, metavar="[APP[/FUNCTION]]")
@click.option("--since", default=None, help="Start (ISO 8601 UTC or Unix time).")
@click.option("--until", default=None, help="End (ISO 8601 UTC or Unix time).")
@click.option(
    "--dedicated",
    "dedicated",
    default=None,
    metavar="LOW-HIGH",
    help="Dedicated GPU rent, $ per GPU-hour (default 2.00-8.00).",
)
@click.option(
    "--per-request",
    "per_request",
    default=None,
    metavar="LOW-HIGH",
    help="Per-request API price, $ per request (default 0.01-0.10).",
)
@click.option("--json", "as_json", is_flag=True)
@address_option
def cost(
    target: str | None,
    since: str | None,
    until: str | None,
    dedicated: str | None,
    per_request: str | None,
    as_json: bool,
    address: str | None,
) -> None:
    """Which is cheaper for my traffic: as billed, dedicated GPUs by the hour, or per request."""
    from raygpu.ops.usage import parse_time

    lo, hi = run(lambda: (parse_time(since), parse_time(until)))
    target_cluster = cluster(address)
    comparison = run(lambda: target_cluster.cost(target, lo, hi, dedicated, per_request))
    if as_json:
        click.echo(comparison.model_dump_json())
        return
    table, notes = cost_lines(target, comparison)
    console.print(table)
    for note in notes:
        console.print(note)


def register(root: click.Group) -> None:
    root.add_command(bill_command)
    root.add_command(cost)
