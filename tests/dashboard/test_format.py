"""How numbers read on the charts' axes and labels: never in scientific notation, as many
decimals as the ticks need to differ and no more (pure, no database)."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta

import pytest

from migrations_app.dashboard import charts, svg
from migrations_app.dashboard import format as fmt
from migrations_app.guardrails.stats import ArmAggregates

SCIENTIFIC = re.compile(r"\d[eE][+-]?\d")


@pytest.mark.parametrize(
    ("ticks", "unit", "expected"),
    [
        # Requests per minute: a thousand reads as one, not 1e+03.
        ([0, 500, 1000, 1500], "", ["0", "500", "1,000", "1,500"]),
        ([0, 20_000, 40_000], "", ["0", "20k", "40k"]),
        ([0, 2_000_000, 4_000_000], "", ["0", "2M", "4M"]),
        ([0, 2_500_000, 5_000_000], "", ["0", "2.5M", "5.0M"]),
        # Cost per request: five hundred-thousandths of a dollar, not $5e-05.
        ([0, 0.00002, 0.00004, 0.00006], "$", ["$0", "$0.00002", "$0.00004", "$0.00006"]),
        ([0, 0.005, 0.01, 0.015], "$", ["$0", "$0.005", "$0.010", "$0.015"]),
        ([0, 5, 10], "$", ["$0", "$5", "$10"]),
        ([0, 2_000, 4_000], "$", ["$0", "$2,000", "$4,000"]),
        # Rates are fractions drawn as percentages.
        ([0, 0.0005, 0.001], "%", ["0%", "0.05%", "0.10%"]),
        ([0, 0.1, 0.2, 0.3], "%", ["0%", "10%", "20%", "30%"]),
        ([0.5, 0.75, 1.0], "%", ["50%", "75%", "100%"]),
        # Milliseconds and scores.
        ([0, 2_000, 4_000, 6_000], "ms", ["0", "2,000", "4,000", "6,000"]),
        ([0, 0.2, 0.4, 0.6, 0.8, 1.0], "", ["0", "0.2", "0.4", "0.6", "0.8", "1.0"]),
        ([-0.02, 0, 0.02], "", ["-0.02", "0", "0.02"]),
        ([7.0], "", ["7"]),
        ([], "$", []),
    ],
)
def test_axis_labels_are_plain_numbers_with_the_decimals_the_step_needs(
    ticks: list[float], unit: str, expected: list[str]
) -> None:
    assert fmt.axis_labels(ticks, unit) == expected


def test_every_nice_tick_range_reads_without_an_exponent_and_each_label_differs() -> None:
    for low, high in [(0, 3e-6), (0, 4.2e-5), (0, 0.037), (0, 1.2), (0, 987), (0, 1234),
                      (0, 73_000), (0, 4.2e6), (0, 3.3e9), (-0.004, 0.011)]:  # fmt: skip
        ticks = svg.nice_ticks(low, high)
        for unit in ("", "$", "%", "ms"):
            labels = fmt.axis_labels(ticks, unit)
            assert not any(SCIENTIFIC.search(label) for label in labels), (ticks, labels)
            assert len(set(labels)) == len(labels), (ticks, unit, labels)


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (1000, "1,000"),
        (0.00005, "0.00005"),
        (1.5, "1.5"),
        (1.3, "1.3"),
        (0.0312, "0.0312"),
        (2.0, "2"),
        (0.0, "0"),
        (-0.03, "-0.03"),
        (123_456.7, "123,457"),
    ],
)
def test_a_single_figure_reads_plainly_to_three_significant_digits(
    value: float, expected: str
) -> None:
    assert fmt.plain(value) == expected


def _agg(requests: int, cost: float) -> ArmAggregates:
    return ArmAggregates(requests=requests, cost_n=requests, cost_sum=cost * requests)


def test_the_dashboards_charts_label_their_axes_readably() -> None:
    """Request rate in the thousands and cost per request in hundred-thousandths of a dollar:
    the two axes the issue found reading 1e+03 and $5e-05."""
    t0 = datetime(2025, 1, 1, 12, tzinfo=UTC)
    rows = [(t0 + timedelta(minutes=i), _agg(1000 + 300 * i, 0.00004)) for i in range(4)]
    windows = {"control": rows, "candidate": rows}
    drawn = dict(
        charts.window_charts(windows, start=t0, end=t0 + timedelta(minutes=4), step_minutes=1)
    )
    for name in ("requests", "cost"):
        labels = re.findall(
            r'<text x="52" y="[\d.]+" text-anchor="end" fill="#4b5563">([^<]*)</text>', drawn[name]
        )
        assert labels, name
        assert not any(SCIENTIFIC.search(label) for label in labels), (name, labels)
    assert "1,000" in drawn["requests"]
    assert "$0.00004" in drawn["cost"] or "$0.00002" in drawn["cost"]


def test_a_tolerance_line_is_labelled_without_an_exponent() -> None:
    chart = svg.Chart(
        "Cost bounds",
        [svg.Series("upper", [(0, 0.00001), (60, 0.00002)])],
        rules=[svg.Rule(f"tolerance {fmt.plain(0.00005)}", 0.00005)],
    )
    texts = re.findall(r"<text[^>]*>([^<]*)</text>", svg.render(chart))
    assert "tolerance 0.00005" in texts
    assert not any(SCIENTIFIC.search(text) for text in texts), texts


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (12345.6, "$12,346"),
        (12.344, "$12.34"),
        (0, "$0.00"),
        (0.0042, "$0.0042"),
        (0.00005, "$0.00005"),
        (None, "-"),
        (float("nan"), "-"),
    ],
)
def test_dollars_read_as_on_a_bill(value: float | None, expected: str) -> None:
    assert fmt.usd(value) == expected
    assert not SCIENTIFIC.search(fmt.usd(value))
