"""Routes and per-sink processing (issue 19): the declaration and its errors, matching, each
processor, the cardinality guard over minutes and calls, `routes check`, and no declaration."""
from __future__ import annotations

import json
import subprocess
import sys

import jsonschema
import pytest
from support import NOW_NS, ROOT

from bridges.model import Counter, Gauge, Metric
from bridges.routing import INPUTS, Origin, Router, RoutesError, load_routes, parse_routes, routes_of
from bridges.settings import SettingsError, load_settings

SCHEMA = json.loads((ROOT / "schemas" / "routes.schema.json").read_text())
ALL = ("dynatrace", "betterstack", "unleash", "azure_monitor", "prometheus")
MINUTE = 60_000_000_000
SMALLEST = {"routes": [{"match": {"name": "ff_*"}, "sinks": ["unleash"]}, {"sinks": ["dynatrace"]}]}


def metric(name: str, **tags: str) -> Metric:
    return Metric(name, Gauge(1.0), NOW_NS, tuple(sorted(tags.items())))


def routes(document: dict) -> Router:
    return parse_routes(document, "BRIDGE_ROUTES")


def names(routed, sink: str) -> list[str]:
    return [m.name for m in routed.per_sink.get(sink, [])]


def run(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "bridges", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=60, env=env, check=False)


# --------------------------------------------------------------------------- the declaration


def test_the_schema_is_draft_2020_12_and_names_the_inputs_routes_can_match():
    jsonschema.Draft202012Validator.check_schema(SCHEMA)
    assert SCHEMA["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    assert tuple(SCHEMA["$defs"]["input"]["enum"]) == INPUTS


@pytest.mark.parametrize("document", [
    SMALLEST,
    {"routes": [{"sinks": []}]},
    {"sinks": {"azure_monitor": {"tag_keys": {"keep": ["env"]}}}},
    {"routes": [{"name": "ci", "match": {"route": ["webhook", "poll"], "source": ["github", {"regex": "git(hub|lab)"}],
                                         "rule": "deploy*", "tags": {"env": {"regex": "prod|staging"}}},
                 "sinks": ["azure_monitor", "dynatrace"], "continue": True},
                {"match": {"route": "checks", "check": "home page"}, "sinks": ["betterstack"]}],
     "sinks": {"unleash": {"keep": {"name": "ff_*"}, "drop": {"tags": {"env": "test"}},
                           "rename": {"replace": {"regex": "^ff_(.*)$", "with": r"flag_\1"}, "prefix": "flags."},
                           "add_tags": {"env": "prod"}, "tag_keys": {"drop": ["sha"]},
                           "cardinality": {"limit": 100, "tags": ["user"]}}}},
], ids=["smallest", "nowhere", "processors only", "everything"])
def test_valid_declarations_load(document):
    assert routes(document).declared


@pytest.mark.parametrize("document, message", [
    ({"routes": [{"sinks": ["unleash"]}, {"name": "flags", "sinks": ["unlesh"]}]},
     "BRIDGE_ROUTES: route 1 'flags' at /routes/1/sinks/0: no sink is named 'unlesh'; the sinks are outbox, "),
    ({"routes": [{"sinks": []}, {"sinks": []}, {"name": "flags", "match": {"name": {"regex": "("}}, "sinks": []}]},
     ("BRIDGE_ROUTES: route 2 'flags' at /routes/2/match/name: {\"regex\": \"(\"} is not a valid regular expression: "
      "missing ), unterminated subpattern")),
    ({"routes": [{"match": {"tags": {"env": ["prod", {"regex": "[a-"}]}}, "sinks": []}]},
     "BRIDGE_ROUTES: route 0 at /routes/0/match/tags/env/1: {\"regex\": \"[a-\"} is not a valid regular expression"),
    ({"routes": [{"name": "x", "match": {"nam": "a"}, "sinks": []}]},
     "BRIDGE_ROUTES: route 0 'x' at /routes/0/match: Additional properties are not allowed ('nam' was unexpected)"),
    ({"routes": [{"name": "x", "sinks": "unleash"}]},
     "BRIDGE_ROUTES: route 0 'x' at /routes/0/sinks: 'unleash' is not of type 'array'"),
    ({"routes": [{"name": "x", "sinks": [], "continue": "yes"}]},
     "BRIDGE_ROUTES: route 0 'x' at /routes/0/continue: 'yes' is not of type 'boolean'"),
    ({"routes": [{"match": {"route": "webhooks"}, "sinks": []}]},
     "BRIDGE_ROUTES: route 0 at /routes/0/match/route: 'webhooks' is not one of ['ingest', 'webhook'"),
    ({"routes": [{"match": {"name": 7}, "sinks": []}]},
     "BRIDGE_ROUTES: route 0 at /routes/0/match/name: 7 is not of type 'string', 'object', 'array'"),
    ({"routes": [{"match": {}}]}, "BRIDGE_ROUTES: route 0 at /routes/0: 'sinks' is a required property"),
    ({"route": []}, "BRIDGE_ROUTES: at /: Additional properties are not allowed ('route' was unexpected)"),
    ({}, "BRIDGE_ROUTES: at /: {} should be non-empty"),
    ({"sinks": {"azure": {}}}, "BRIDGE_ROUTES: at /sinks/azure: no sink is named 'azure'"),
    ({"sinks": {"dynatrace": {"cardinality": {"limit": 0}}}},
     "BRIDGE_ROUTES: at /sinks/dynatrace/cardinality/limit: 0 is less than the minimum of 1"),
    ({"sinks": {"dynatrace": {"cardinality": {"limit": "100"}}}},
     "BRIDGE_ROUTES: at /sinks/dynatrace/cardinality/limit: '100' is not of type 'integer'"),
    ({"sinks": {"dynatrace": {"cardinality": {"tags": ["user"]}}}},
     "BRIDGE_ROUTES: at /sinks/dynatrace/cardinality: 'limit' is a required property"),
    ({"sinks": {"dynatrace": {"tag_keys": {"keep": ["a"], "drop": ["b"]}}}},
     "BRIDGE_ROUTES: at /sinks/dynatrace/tag_keys: {'keep': ['a'], 'drop': ['b']} has too many properties"),
    ({"sinks": {"dynatrace": {"rename": {"prefix": "a\nb"}}}}, "BRIDGE_ROUTES: at /sinks/dynatrace/rename/prefix: "),
    ({"sinks": {"dynatrace": {"rename": {"replace": {"regex": "^ff_", "with": r"\1"}}}}},
     ("BRIDGE_ROUTES: at /sinks/dynatrace/rename/replace/with: \"\\\\1\" is not a valid replacement for /^ff_/: "
      "invalid group reference 1")),
    ({"sinks": {"azure_monitor": {"add_tags": {"env": "prod"}, "tag_keys": {"keep": ["service"]}}}},
     ("BRIDGE_ROUTES: at /sinks/azure_monitor/add_tags/env: tag_keys keeps only service, so the tag 'env' it adds "
      "would be dropped")),
    ({"sinks": {"unleash": {"keep": {}}}}, "BRIDGE_ROUTES: at /sinks/unleash/keep: {} should be non-empty"),
    ({"sinks": {"unleash": {"drop": {"name": {"regex": "*"}}}}},
     "BRIDGE_ROUTES: at /sinks/unleash/drop/name: {\"regex\": \"*\"} is not a valid regular expression"),
], ids=["unknown sink", "bad regex", "bad tag regex", "unknown key", "sinks not a list", "continue not a boolean",
        "unknown input", "name not text", "no sinks", "unknown top-level key", "empty", "unknown sink's processors",
        "limit 0", "limit as text", "no limit", "tag_keys both", "prefix with a line break", "bad replacement",
        "added tag not kept", "empty keep", "bad drop regex"])
def test_a_bad_declaration_names_the_setting_the_route_and_the_field(document, message):
    with pytest.raises(RoutesError) as caught:
        routes(document)
    assert str(caught.value).startswith(message), str(caught.value)
    assert isinstance(caught.value, SettingsError)  # start-up reports it as a bad setting


def test_a_yaml_file_is_named_in_its_errors(tmp_path):
    path = tmp_path / "routes.yaml"
    path.write_text("routes:\n  - name: flags\n    match: {name: {regex: '('}}\n    sinks: [unleash]\n")
    with pytest.raises(RoutesError) as caught:
        load_routes(path)
    assert str(caught.value).startswith(f"BRIDGE_ROUTES_FILE: {path}: route 0 'flags' at /routes/0/match/name: ")
    path.write_text("routes: [unterminated\n")
    with pytest.raises(RoutesError, match=f"BRIDGE_ROUTES_FILE: {path}: YAML syntax error at line 2"):
        load_routes(path)


def test_the_settings_declare_routes_by_file_or_inline_but_not_both(tmp_path):
    path = tmp_path / "routes.json"
    path.write_text(json.dumps(SMALLEST))
    assert routes_of(load_settings({"BRIDGE_ROUTES_FILE": str(path)})).describe() == [
        "route 0: name ff_* -> unleash", "route 1: everything -> dynatrace"]
    assert routes_of(load_settings({"BRIDGE_ROUTES": json.dumps(SMALLEST)})).routes
    assert not routes_of(load_settings({})).declared
    with pytest.raises(RoutesError, match="BRIDGE_ROUTES: set BRIDGE_ROUTES_FILE or BRIDGE_ROUTES, not both"):
        routes_of(load_settings({"BRIDGE_ROUTES_FILE": str(path), "BRIDGE_ROUTES": json.dumps(SMALLEST)}))
    with pytest.raises(RoutesError, match="BRIDGE_ROUTES: not JSON"):
        routes_of(load_settings({"BRIDGE_ROUTES": "routes: []"}))


# --------------------------------------------------------------------------- where metrics come from


@pytest.mark.parametrize("route, text, expected", [
    ("ingest", "", Origin("ingest")),
    ("webhook github", "rule 'workflow jobs' event 0 metric 'github.jobs'", Origin("webhook", "github", "workflow jobs")),
    ("webhook stripe", "rule 'it's' event 12", Origin("webhook", "stripe", "it's")),
    ("poll", "status-api rule 'incidents' event 3 metric 'incidents.open'", Origin("poll", "status-api", "incidents")),
    ("poll", "status-api poll_up", Origin("poll", "status-api")),
    ("poll", "node http_requests_total{method='get'}", Origin("poll", "node")),
    ("checks", "check home page", Origin("checks", check="home page")),
    ("remote_write", "timeseries[3]", Origin("prometheus")),
    ("influx_v2", "line 4", Origin("influx")),
    ("_Client", "", Origin("unleash")),
    ("dynatrace", "line 1", Origin("dynatrace")),
])
def test_origins_are_read_from_what_the_bridge_already_has(route, text, expected):
    assert Origin.of(route, text) == expected


# --------------------------------------------------------------------------- matching

TABLE = {"routes": [
    {"name": "flags", "match": {"name": "ff_*"}, "sinks": ["unleash"]},
    {"name": "deploys", "match": {"route": "webhook", "source": ["github", "gitlab"], "rule": "deploy*"},
     "sinks": ["azure_monitor"], "continue": True},
    {"name": "ci", "match": {"route": "webhook", "name": {"regex": r"ci\.(jobs|runs)"}}, "sinks": ["dynatrace"]},
    {"name": "checks", "match": {"check": "home*"}, "sinks": ["betterstack"]},
    {"name": "prod", "match": {"tags": {"env": {"regex": "prod|live"}, "team": "*"}}, "sinks": ["prometheus"],
     "continue": True},
    {"name": "polled", "match": {"route": ["poll"]}, "sinks": ["dynatrace"]},
    {"name": "quiet", "match": {"name": "noise.*"}, "sinks": []},
    {"name": "ingest", "match": {"route": "ingest", "name": "app.*"}, "sinks": ["dynatrace"]},
]}


@pytest.mark.parametrize("origin, item, matched, sinks", [
    (Origin("ingest"), metric("ff_checkout"), ["route 0 'flags'"], ["unleash"]),
    (Origin("webhook", "github", "deploys"), metric("ci.jobs"), ["route 1 'deploys'", "route 2 'ci'"],
     ["azure_monitor", "dynatrace"]),  # continue: sinks add up
    (Origin("webhook", "bitbucket", "deploys"), metric("ci.runs"), ["route 2 'ci'"], ["dynatrace"]),
    (Origin("webhook", "github", "pushes"), metric("ci.jobs.count"), [], []),  # the regex must match it all
    (Origin("webhook", "github", None), metric("ff_x"), ["route 0 'flags'"], ["unleash"]),  # first match wins
    (Origin("checks", check="home page"), metric("check_up"), ["route 3 'checks'"], ["betterstack"]),
    (Origin("checks", check="api"), metric("check_up"), [], []),
    (Origin("ingest"), metric("app.x", env="prod", team="a"), ["route 4 'prod'", "route 7 'ingest'"],
     ["prometheus", "dynatrace"]),
    (Origin("ingest"), metric("app.x", env="prod"), ["route 7 'ingest'"], ["dynatrace"]),  # no team tag
    (Origin("ingest"), metric("app.x", env="production", team="a"), ["route 7 'ingest'"], ["dynatrace"]),
    (Origin("poll", "node"), metric("up", env="live", team="b"), ["route 4 'prod'", "route 5 'polled'"],
     ["prometheus", "dynatrace"]),
    (Origin("ingest"), metric("noise.x"), ["route 6 'quiet'"], []),  # deliberately nowhere: not unrouted
    (Origin("ingest"), metric("FF_x"), [], []),  # globs are case-sensitive
    (Origin("otlp"), metric("other"), [], []),  # unrouted
])
def test_matching(origin, item, matched, sinks):
    routed = routes(TABLE).route([item], origin, ALL, NOW_NS, explain=True)
    [explained] = routed.explanations
    assert list(explained.routes) == matched and list(explained.sinks) == sinks
    assert sorted(routed.per_sink) == sorted(sinks)
    assert all(routed.per_sink[sink] == [item] for sink in sinks)
    assert routed.unrouted == (0 if matched else 1)


def test_unrouted_metrics_are_counted_and_explained():
    router = routes({"routes": [{"match": {"name": "a"}, "sinks": ["dynatrace"]}]})
    routed = router.route([metric("a"), metric("b"), metric("c")], Origin("ingest"), ALL, NOW_NS, explain=True)
    assert names(routed, "dynatrace") == ["a"] and routed.unrouted == 2
    assert routed.explanations[1].lines() == ["no route matched: unrouted, delivered nowhere"]
    assert router.health()["unrouted"] == 2


def test_origins_may_be_given_per_metric_or_by_index():
    router = routes(TABLE)
    items = [metric("ci.jobs"), metric("check_up")]
    given = [Origin("webhook", "x"), Origin("checks", check="home")]
    for origins in (given, given.__getitem__):
        routed = router.route(items, origins, ALL, NOW_NS)
        assert names(routed, "dynatrace") == ["ci.jobs"] and names(routed, "betterstack") == ["check_up"]


def test_sinks_that_are_not_enabled_are_skipped_and_reported():
    router = routes({"routes": [{"name": "flags", "match": {"name": "ff_*"}, "sinks": ["unleash", "dynatrace"]}],
                     "sinks": {"prometheus": {"add_tags": {"env": "prod"}}}})
    routed = router.route([metric("ff_a")], Origin("ingest"), ["dynatrace"], NOW_NS, explain=True)
    assert list(routed.per_sink) == ["dynatrace"] and routed.unrouted == 0
    assert routed.explanations[0].lines() == ["route 0 'flags' matched: dynatrace", "unleash: not enabled, skipped",
                                              "dynatrace: unchanged"]
    assert router.problems(["dynatrace"]) == [
        "BRIDGE_ROUTES: route 0 'flags' sends to unleash, which is not enabled: what it matches does not go there",
        "BRIDGE_ROUTES: sinks/prometheus: processors for prometheus, which is not enabled"]
    assert router.problems(ALL) == []


# --------------------------------------------------------------------------- no declaration


def test_without_a_declaration_every_enabled_sink_gets_every_metric_unchanged():
    items = [metric("a", env="x"), Metric("b", Counter(2.0), NOW_NS)]
    for router in (Router.none(), load_routes(None, "")):
        routed = router.route(items, Origin("ingest"), ["dynatrace", "unleash"], NOW_NS, explain=True)
        assert routed.per_sink == {"dynatrace": items, "unleash": items}
        assert all(a is b for a, b in zip(routed.per_sink["unleash"], items, strict=True))
        assert routed.unrouted == 0 and not routed.dropped and not routed.folded
        assert routed.explanations[0].lines() == ["no routes declared: every enabled sink", "dynatrace: unchanged",
                                                  "unleash: unchanged"]
    assert Router.none().describe() == ["no routes declared: every enabled sink gets every metric"]


def test_processors_without_routes_shape_what_goes_everywhere():
    router = routes({"sinks": {"unleash": {"rename": {"prefix": "flags."}}}})
    item = metric("a")
    routed = router.route([item], Origin("ingest"), ["dynatrace", "unleash"], NOW_NS)
    assert routed.per_sink["dynatrace"][0] is item and names(routed, "unleash") == ["flags.a"]
    assert routed.unrouted == 0


# --------------------------------------------------------------------------- processors


def shaped(processors: dict, *items: Metric, now_ns: int = NOW_NS, router: Router | None = None):
    router = router or routes({"sinks": {"unleash": processors}})
    routed = router.route(list(items), Origin("ingest"), ["unleash"], now_ns, explain=True)
    return routed, routed.per_sink.get("unleash", []), [e.steps.get("unleash", ()) for e in routed.explanations]


def test_keep_and_drop_by_name_and_tag():
    items = [metric("ff_a", env="prod"), metric("ff_b", env="test"), metric("other", env="prod")]
    routed, out, steps = shaped({"keep": {"name": "ff_*"}, "drop": {"tags": {"env": "test"}}}, *items)
    assert out == [items[0]] and out[0] is items[0]
    assert routed.dropped == {"unleash": 2}
    assert steps == [(), ("dropped by drop",), ("dropped: keep does not match it",)]


def test_rename_replaces_then_prefixes_and_refuses_an_invalid_name():
    items = [metric("ff_checkout"), metric("plain"), metric("ff_" + "x" * 250)]
    routed, out, steps = shaped({"rename": {"replace": {"regex": "^ff_(.*)$", "with": r"flag_\1"},
                                            "prefix": "unleash."}}, *items)
    assert [m.name for m in out] == ["unleash.flag_checkout", "unleash.plain", items[2].name]
    assert out[2] is items[2] and routed.renames_refused == {"unleash": 1}
    assert steps[0] == ("renamed ff_checkout -> unleash.flag_checkout",)
    assert steps[2][0].startswith(f"rename {items[2].name} -> 'unleash.flag_xxx") and \
        steps[2][0].endswith("refused (longer than 255 characters): the name is kept")
    assert out[0].point is items[0].point and out[0].time_ns == items[0].time_ns


def test_add_tags_keeps_a_tag_the_metric_has_and_the_tags_stay_sorted():
    items = [metric("a", zone="z1"), metric("b", env="dev")]
    _, out, steps = shaped({"add_tags": {"env": "prod", "app": "shop"}}, *items)
    assert out[0].tags == (("app", "shop"), ("env", "prod"), ("zone", "z1"))
    assert out[1].tags == (("app", "shop"), ("env", "dev"))
    assert steps == [("added tags env, app",), ("added tags app",)]


def test_tag_keys_keep_only_or_drop():
    item = metric("a", env="prod", sha="abc", user="u1", zone="z")
    _, out, steps = shaped({"add_tags": {"team": "t"}, "tag_keys": {"keep": ["env", "zone", "team"]}}, item)
    assert out[0].tags == (("env", "prod"), ("team", "t"), ("zone", "z"))
    assert steps == [("added tags team", "dropped tag keys sha, user")]
    _, out, steps = shaped({"tag_keys": {"drop": ["sha", "absent"]}}, item)
    assert out[0].tags == (("env", "prod"), ("user", "u1"), ("zone", "z"))
    _, out, steps = shaped({"tag_keys": {"drop": ["absent"]}}, item)
    assert out[0] is item and steps == [()]


def test_processors_apply_in_one_order_whatever_order_they_are_written_in():
    processors = {"cardinality": {"limit": 1}, "tag_keys": {"keep": ["env"]}, "add_tags": {"env": "prod"},
                  "rename": {"prefix": "x."}, "drop": {"name": "x.*"}}
    _, out, steps = shaped(processors, metric("a", user="u1"), metric("b", user="u2"))
    # drop sees the names before rename; tag_keys keeps the added env; the guard sees only env
    assert [(m.name, m.tags) for m in out] == [("x.a", (("env", "prod"),)), ("x.b", (("env", "prod"),))]
    assert steps[0] == ("renamed a -> x.a", "added tags env", "dropped tag keys user")
    assert routes({"sinks": {"unleash": processors}}).describe() == [
        "no routes: every enabled sink gets every metric", "sink unleash, in the order they apply:",
        "  drop: name x.*", "  rename: prefix 'x.'", "  add_tags: env='prod'", "  tag_keys: keep only env",
        "  cardinality: at most 1 distinct sets of all tags per metric name per minute, then those tags read other"]


# --------------------------------------------------------------------------- the cardinality guard


def users(*ids: str, name: str = "logins") -> list[Metric]:
    return [metric(name, user=user, region="eu") for user in ids]


def test_the_guard_folds_new_tag_sets_beyond_the_limit_into_other():
    router = routes({"sinks": {"unleash": {"cardinality": {"limit": 2, "tags": ["user"]}}}})
    routed, out, steps = shaped({}, *users("u1", "u2", "u3", "u1", "u4"), router=router)
    assert [m.tag_dict()["user"] for m in out] == ["u1", "u2", "other", "u1", "other"]
    assert all(m.tag_dict()["region"] == "eu" for m in out)  # unguarded tags stay
    assert out[0] is routed.per_sink["unleash"][0] and routed.folded == {"unleash": 2}
    assert steps[2] == ("folded user -> other (limit 2)",) and steps[0] == ()
    assert router.health()["sinks"]["unleash"] == {"dropped": 0, "folded": 2, "renames_refused": 0,
                                                   "folded_by_name": {"logins": 2}}


def test_the_guard_counts_per_metric_name_and_every_tag_by_default():
    router = routes({"sinks": {"unleash": {"cardinality": {"limit": 1}}}})
    _, out, _ = shaped({}, *users("u1", "u2"), *users("u1", "u2", name="signups"), router=router)
    assert [m.tags for m in out] == [(("region", "eu"), ("user", "u1")), (("region", "other"), ("user", "other")),
                                     (("region", "eu"), ("user", "u1")), (("region", "other"), ("user", "other"))]
    assert router.health()["sinks"]["unleash"]["folded_by_name"] == {"logins": 1, "signups": 1}


def test_the_guard_remembers_the_sets_of_a_minute_across_calls_and_forgets_them_the_next_minute():
    router = routes({"sinks": {"unleash": {"cardinality": {"limit": 2, "tags": ["user"]}}}})
    minute = NOW_NS - NOW_NS % MINUTE
    _, out, _ = shaped({}, *users("u1", "u2"), router=router, now_ns=minute + 1)
    assert [m.tag_dict()["user"] for m in out] == ["u1", "u2"]
    routed, out, _ = shaped({}, *users("u3", "u2", "u1"), router=router, now_ns=minute + 59 * 10**9)
    assert [m.tag_dict()["user"] for m in out] == ["other", "u2", "u1"] and routed.folded == {"unleash": 1}
    routed, out, _ = shaped({}, *users("u3", "u4", "u1"), router=router, now_ns=minute + MINUTE)
    assert [m.tag_dict()["user"] for m in out] == ["u3", "u4", "other"] and routed.folded == {"unleash": 1}
    # a call with an older clock reading counts in the newer minute
    routed, out, _ = shaped({}, *users("u4", "u5"), router=router, now_ns=minute + MINUTE - 1)
    assert [m.tag_dict()["user"] for m in out] == ["u4", "other"]
    assert router.health()["sinks"]["unleash"]["folded"] == 3


def test_the_guard_is_per_sink_and_counts_renamed_names():
    router = routes({"sinks": {
        "unleash": {"rename": {"replace": {"regex": "^(login|signup)s$", "with": "events"}},
                    "cardinality": {"limit": 1, "tags": ["user"]}},
        "dynatrace": {"cardinality": {"limit": 5, "tags": ["user"]}}}})
    items = users("u1", name="logins") + users("u2", name="signups") + [metric("logins", region="eu")]
    routed = router.route(items, Origin("ingest"), ["unleash", "dynatrace"], NOW_NS)
    assert [(m.name, m.tag_dict().get("user")) for m in routed.per_sink["unleash"]] == [
        ("events", "u1"), ("events", "other"), ("events", None)]  # without the guarded tag: nothing to fold
    assert routed.per_sink["dynatrace"] == items and routed.folded == {"unleash": 1}


# --------------------------------------------------------------------------- explanations


def test_explanations_say_which_route_matched_where_it_went_and_what_each_processor_did():
    router = routes({"routes": [{"name": "flags", "match": {"name": "ff_*"}, "sinks": ["unleash"], "continue": True},
                                {"sinks": ["dynatrace"]}],
                     "sinks": {"unleash": {"rename": {"prefix": "flags."}, "add_tags": {"env": "prod"},
                                           "tag_keys": {"drop": ["sha"]}}}})
    routed = router.route([metric("ff_x", sha="1")], Origin("ingest"), ALL, NOW_NS, explain=True)
    assert routed.explanations[0].lines() == [
        "route 0 'flags' and route 1 matched: unleash, dynatrace",
        "unleash: renamed ff_x -> flags.ff_x; added tags env; dropped tag keys sha", "dynatrace: unchanged"]
    assert names(routed, "unleash") == ["flags.ff_x"] and routed.per_sink["unleash"][0].tags == (("env", "prod"),)


# --------------------------------------------------------------------------- routes check


def test_routes_check_summarizes_a_good_file_and_exits_0(tmp_path):
    path = tmp_path / "routes.yaml"
    path.write_text("routes:\n  - name: flags\n    match: {name: 'ff_*', route: [webhook, ingest]}\n"
                    "    sinks: [unleash]\n    continue: true\n  - sinks: [dynatrace]\n"
                    "sinks:\n  unleash:\n    add_tags: {env: prod}\n    rename: {prefix: flags.}\n")
    done = run("routes", "check", str(path))
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == [
        "route 0 'flags': route ingest or webhook, name ff_* -> unleash (continue)", "route 1: everything -> dynatrace",
        "sink unleash, in the order they apply:", "  rename: prefix 'flags.'", "  add_tags: env='prod'"]


def test_routes_check_names_file_route_and_field_of_a_bad_one_and_exits_1(tmp_path):
    path = tmp_path / "routes.json"
    path.write_text(json.dumps({"routes": [{"sinks": []}, {"name": "flags", "sinks": ["unlesh"]}]}))
    done = run("routes", "check", str(path))
    assert done.returncode == 1 and done.stdout == ""
    assert done.stderr.startswith(f"error: {path}: route 1 'flags' at /routes/1/sinks/0: no sink is named 'unlesh'")
    done = run("routes", "check", str(tmp_path / "missing.yaml"))
    assert done.returncode == 2 and "missing.yaml: no such file" in done.stderr


def test_routes_check_reads_the_settings_and_warns_of_sinks_not_enabled(tmp_path):
    import os

    env = {**os.environ, "BRIDGE_ROUTES": json.dumps(SMALLEST), "BRIDGE_SINKS": "dynatrace",
           "DYNATRACE_URL": "https://abc.live.dynatrace.com", "DYNATRACE_API_TOKEN": "dt0c01.x"}
    done = run("routes", "check", env=env)
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == ["route 0: name ff_* -> unleash", "route 1: everything -> dynatrace"]
    assert "warning: BRIDGE_ROUTES: route 0 sends to unleash, which is not enabled" in done.stderr
    done = run("routes", "check", env={**env, "BRIDGE_ROUTES": '{"routes": [{"sinks": "x"}]}'})
    assert done.returncode == 1
    assert "error: BRIDGE_ROUTES: route 0 at /routes/0/sinks: 'x' is not of type 'array'" in done.stderr
    done = run("routes", "check", env={k: v for k, v in env.items() if k != "BRIDGE_ROUTES"})
    assert done.returncode == 0 and "no routes declared" in done.stdout
