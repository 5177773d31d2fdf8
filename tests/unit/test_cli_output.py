"""What the CLI prints, from in-process values: bill tables and CSV, status tables, cost notes,
and failures as one clean line (exit 1, no traceback)."""

from decimal import Decimal

from click.testing import CliRunner
from rich.console import Console

from billing.cost import CostComparison
from raygpu.cli import main
from raygpu.cli.apps import status_lines
from raygpu.cli.billing import bill_csv, bill_table, cost_lines
from raygpu.ops.contracts import AppStatus, Bill, BillLineOut, FunctionStatus, ReplicaCounts, ScaleEvent


def rendered(renderable) -> str:
    console = Console(width=200, record=True)
    console.print(renderable)
    return console.export_text()


def sample_bill(by: str = "function") -> Bill:
    line = BillLineOut(
        app="shop",
        function="add",
        day="2026-11-30" if by == "day" else None,
        gpu_seconds={"cold_start": "1.5", "active": "10", "idle": "3.25"},
        cost_usd={"cold_start": "0.001", "active": "0.01", "idle": "0.003"},
        total_gpu_seconds="14.75",
        total_cost_usd="0.014",
        replica_starts=2,
    )
    return Bill(app="shop", by=by, lines=[line], total_gpu_seconds="14.75", total_cost_usd="0.014")


def test_bill_as_csv_and_table():
    assert bill_csv(sample_bill()) == [
        "app,function,day,cold_start_gpu_s,active_gpu_s,idle_gpu_s,gpu_s,cost_usd",
        "shop,add,,1.5,10,3.25,14.75,0.014",
    ]
    table, total = bill_table(sample_bill("day"))
    text = rendered(table)
    assert "2026-11-30" in text and "10.0" in text and "0.0140" in text
    assert total == "total: 14.8 GPU-s, $0.0140"


def test_status_table_and_start_phases():
    info = AppStatus(
        app="shop",
        version=3,
        functions=[
            FunctionStatus(
                name="add",
                kind="function",
                route="/shop/add",
                gpu="1x H100",
                replicas=ReplicaCounts(running=1),
                target=1,
                last_scale_event=ScaleEvent(time=0.0, **{"from": 0, "to": 1}),
                last_start_phases={"process": 0.5, "first_response": 0.25},
            )
        ],
    )
    table, starts = status_lines(info)
    text = rendered(table)
    assert "/shop/add" in text and "1x H100" in text and "0→1" in text
    assert starts == ["last start of add: 0.75 s = process 500 ms, first_response 250 ms"]


def test_cost_notes_name_the_cheapest_and_the_break_even():
    comparison = CostComparison.model_validate(
        {
            "app": "shop",
            "function": None,
            "period_start": 0,
            "period_end": 3600,
            "period_s": "3600",
            "requests": 10,
            "peak_replicas": 1,
            "peak_gpus": "1",
            "rented_gpu_hours": 1,
            "active_gpu_seconds": "36",
            "billed_gpu_seconds": "40",
            "utilisation": "0.01",
            "serverless_usd_per_request": "0.004",
            "options": [
                {"option": "serverless", "low_usd": "0.04", "high_usd": "0.04", "basis": "as billed"},
                {"option": "dedicated", "low_usd": "2", "high_usd": "8", "basis": "1 GPU x 1 h"},
                {"option": "per_request", "low_usd": "0.1", "high_usd": "1", "basis": "10 requests"},
            ],
            "cheapest": "serverless",
            "cheapest_at_any_price": True,
            "break_even_utilisation": {"low": "0.5", "high": "2"},
        }
    )
    table, notes = cost_lines("shop", comparison)
    assert "(cheapest)" in rendered(table)
    assert notes[0] == "utilisation of the rented GPUs: 1.00%"
    assert "above 50.0% utilisation" in notes[1] and "never (at the high price)" in notes[1]
    assert notes[2] == f"serverless cost per request: ${Decimal('0.004')}"


def test_failures_are_one_line_with_exit_status_1():
    runner = CliRunner()
    result = runner.invoke(main, ["call", "just-an-app", "--url", "http://127.0.0.1:9"])
    assert result.exit_code == 1 and "APP/FUNCTION" in result.output and "Traceback" not in result.output
    result = runner.invoke(main, ["call", "a/f", "--data", "{nope", "--url", "http://127.0.0.1:9"])
    assert result.exit_code == 1 and "not valid JSON" in result.output
    result = runner.invoke(main, ["bill", "--since", "yesterday-ish"])
    assert result.exit_code == 1 and "ISO 8601" in result.output
    result = runner.invoke(main, ["weights", "ls", "no-slash"])
    assert result.exit_code == 1 and "APP/MODEL" in result.output
