"""Route templates and timer schedules as the Functions host reads them."""
from __future__ import annotations

from datetime import datetime, timezone

import pytest

from bridges.local.routes import RouteTemplate
from bridges.scheduled.schedules import Schedule, ScheduleError, expand


@pytest.mark.parametrize(
    "template, path, expected",
    [
        ("metrics", "metrics", {}),
        ("metrics", "METRICS/", {}),
        ("metrics", "metrics/x", None),
        ("webhooks/{source}", "webhooks/github", {"source": "github"}),
        ("webhooks/{source}", "webhooks/", None),
        ("webhooks/{source}", "webhooks/a/b", None),
        ("azure/{*resourceId}", "azure/subscriptions/s/resourceGroups/r/metrics", {"resourceId": "subscriptions/s/resourceGroups/r/metrics"}),
        ("items/{id:int}", "items/12", {"id": "12"}),
        ("items/{id:int}", "items/x", None),
        ("items/{id?}", "items", {}),
        ("items/{id?}", "items/7", {"id": "7"}),
        ("files/{name}.{ext}", "files/report.csv", {"name": "report", "ext": "csv"}),
        ("things/{id:guid}", "things/0f8fad5b-d9cb-469f-a165-70867728950e", {"id": "0f8fad5b-d9cb-469f-a165-70867728950e"}),
    ],
)
def test_route_templates(template, path, expected):
    assert RouteTemplate(template).match(path) == expected


def test_literal_routes_sort_before_parameters_and_catch_alls():
    templates = [RouteTemplate(t) for t in ["{*all}", "items/{id}", "items/special"]]
    assert [t.template for t in sorted(templates, key=RouteTemplate.specificity)] == ["items/special", "items/{id}", "{*all}"]


UTC = timezone.utc


@pytest.mark.parametrize(
    "expression, after, expected",
    [
        ("0 */5 * * * *", datetime(2026, 1, 1, 0, 3, 10, tzinfo=UTC), datetime(2026, 1, 1, 0, 5, tzinfo=UTC)),
        ("*/10 * * * * *", datetime(2026, 1, 1, 0, 0, 1, tzinfo=UTC), datetime(2026, 1, 1, 0, 0, 10, tzinfo=UTC)),
        ("30 0 9 * * Mon-Fri", datetime(2026, 1, 2, 10, tzinfo=UTC), datetime(2026, 1, 5, 9, 0, 30, tzinfo=UTC)),
        ("00:05:00", datetime(2026, 1, 1, 0, 3, 10, tzinfo=UTC), datetime(2026, 1, 1, 0, 8, 10, tzinfo=UTC)),
    ],
)
def test_schedules_fire_with_seconds_first(expression, after, expected):
    assert Schedule(expression).next_after(after) == expected


@pytest.mark.parametrize("expression", ["*/5 * * * *", "0 */5 * * * * *", "61 * * * * *", "00:00:00", "00:61:00",
                                        "0 0 0 L * *", "0 0 0 * * 1#2", "0 0 0 ? * *", "0 0 0 15W * *", "*/0 * * * * *",
                                        "0 0 0 * * 7", "0 0 0 0 * *", "0 0 24 * * *", "0 0 0 * FOO *"])
def test_bad_schedules_are_refused(expression):
    """What the host's NCRONTAB or TimeSpan parser refuses, croniter's extensions included."""
    with pytest.raises(ScheduleError):
        Schedule(expression)


def test_setting_names_in_schedules_are_expanded_or_named():
    assert expand("%CHECKS_SCHEDULE%", {"CHECKS_SCHEDULE": "0 * * * * *"}) == "0 * * * * *"
    with pytest.raises(ScheduleError, match="CHECKS_SCHEDULE"):
        expand("%CHECKS_SCHEDULE%", {})
