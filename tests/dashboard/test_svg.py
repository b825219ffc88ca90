import math

from migrations_app.dashboard import svg


def test_a_gap_breaks_the_line_and_is_never_drawn_as_zero() -> None:
    chart = svg.Chart(
        "Error rate", [svg.Series("control", [(0, 0.5), (60, None), (120, 1.0), (180, math.nan)])]
    )
    out = svg.render(chart)
    path = out.split('<path d="', 1)[1].split('"', 1)[0]
    # Two pen-downs (M), no line segment across the gap.
    assert path.count("M") == 2 and "L" not in path
    assert out.startswith("<svg") and out.endswith("</svg>")


def test_labels_are_escaped() -> None:
    out = svg.render(svg.Chart("<b>x</b>", [svg.Series("a&b <script>", [(0, 1.0), (60, 2.0)])]))
    assert "<script>" not in out and "<b>" not in out
    assert "&lt;script&gt;" in out and "a&amp;b" in out


def test_no_data_says_so() -> None:
    out = svg.render(svg.Chart("Latency", [svg.Series("control", [(0, None)])]))
    assert "no data yet" in out and "<path" not in out


def test_tolerance_rule_is_inside_the_axis() -> None:
    chart = svg.Chart(
        "Bounds", [svg.Series("upper", [(0, 1.1), (60, 1.2)])], rules=[svg.Rule("tol", 1.5)]
    )
    out = svg.render(chart)
    assert "tol" in out
    # The y axis reaches the rule even though every point is below it.
    assert svg.nice_ticks(0, 1.5)[-1] >= 1.5


def test_nice_ticks_cover_the_range_in_round_steps() -> None:
    ticks = svg.nice_ticks(0, 0.037)
    assert ticks[0] <= 0 and ticks[-1] >= 0.037
    steps = {round(b - a, 9) for a, b in zip(ticks, ticks[1:], strict=False)}
    assert len(steps) == 1
    assert svg.nice_ticks(5, 5)  # a flat series still gets an axis
    assert svg.nice_ticks(0, math.inf) == []
