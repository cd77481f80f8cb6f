"""The built-in github rules against GitHub's own example payloads, every event type.

The examples are the npm package ``@octokit/webhooks-examples`` (pinned below; published from
repository ``octokit/webhooks``), which ``bash scripts/install-peers.sh`` installs into
``.peers/octokit-webhooks-examples/``. Its ``api.github.com/index.json`` is a JSON list of
``{name, description, actions, properties, examples}``: ``name`` is the event (the
``X-GitHub-Event`` header), each example a delivery body. Without the package these tests fail
under CI (CI=true) and are skipped elsewhere, saying how to install it, as the peers do.

Every example must be accepted (nothing refused, every metric normalized), events without a rule
yield nothing, and the events the rules map yield the metrics they should, with values computed
here from each payload's own fields (never copied from the rules' output).
"""
from __future__ import annotations

import copy
import json
import re
from datetime import datetime
from pathlib import Path

import pytest
from peers import npm_package
from support import NOW_NS, load_file

from bridges.ingest.normalize import Normalizer
from bridges.webhooks.rule_files import BUILTIN_DIR
from bridges.webhooks.rules import NO_RULE_MATCHED, VALUE_IS_NULL

ROOT = Path(__file__).resolve().parent.parent
OCTOKIT_VERSION = "7.6.1"  # scripts/install-peers.sh pins the same
PACKAGE = ROOT / ".peers" / "octokit-webhooks-examples" / "node_modules" / "@octokit" / "webhooks-examples"
INDEX = PACKAGE / "api.github.com" / "index.json"
CASES = Path(__file__).parent / "testdata" / "webhooks" / "github"

# Events the github rules map; every other event of the package must be skipped.
MAPPED = {"workflow_run", "workflow_job", "check_run", "push", "pull_request", "deployment_status", "release", "issues"}
METRIC_NAME = re.compile(r"github(\.[a-z][a-z0-9_]*)+")


@pytest.fixture(scope="module")
def events() -> dict[str, dict]:
    """The package's event entries by name; fails under CI, else skips, when it is not installed."""
    npm_package(PACKAGE, OCTOKIT_VERSION, "api.github.com/index.json")
    entries = json.loads(INDEX.read_text(encoding="utf-8"))
    return {entry["name"]: entry for entry in entries}


@pytest.fixture(scope="module")
def rules():
    return load_file(BUILTIN_DIR / "github.yaml")


def apply(rules, event: str, body: dict):
    """Apply the github rules as the webhook endpoint does; (decoded, normalized metrics)."""
    decoded = rules.apply(body, {"X-GitHub-Event": event}, NOW_NS)
    normalized = Normalizer().normalize(decoded.items, NOW_NS)
    assert normalized.errors == [], normalized.errors
    return decoded, normalized.metrics


def examples_of(events: dict, event: str, action: str | None = None) -> list[dict]:
    found = [ex for ex in events[event]["examples"] if action is None or ex.get("action") == action]
    assert found, f"the package has no {event} example with action {action}"
    return found


def seconds(text: str) -> float:
    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


def time_ns(text: str) -> int:
    return int(seconds(text)) * 1_000_000_000


def by_name(metrics) -> dict:
    result = {}
    for metric in metrics:
        assert metric.name not in result, f"{metric.name} twice"
        result[metric.name] = metric
    return result


# ---------------------------------------------------------------------------------------------
# Every example


def test_the_pinned_package_has_every_event_type(events):
    assert len(events) == 58
    assert sum(len(entry["examples"]) for entry in events.values()) == 329
    assert set(events) >= MAPPED


def test_every_example_is_accepted_and_every_metric_normalizes(events, rules):
    ran = 0
    for name, entry in events.items():
        for index, example in enumerate(entry["examples"]):
            where = f"{name} examples[{index}] (action {example.get('action')})"
            decoded = rules.apply(example, {"X-GitHub-Event": name}, NOW_NS)
            assert decoded.refused == [], (where, decoded.refused)
            normalized = Normalizer().normalize(decoded.items, NOW_NS)
            assert normalized.errors == [], (where, normalized.errors)
            assert len(normalized.metrics) == len(decoded.items), where
            assert len(decoded.origins) == len(decoded.items), where
            assert set(decoded.skipped) <= {NO_RULE_MATCHED, VALUE_IS_NULL}, (where, decoded.skipped)
            for metric in normalized.metrics:
                assert METRIC_NAME.fullmatch(metric.name), (where, metric.name)
                assert metric.description, (where, metric.name)
                assert metric.tag_dict()["repository"] == example["repository"]["full_name"], where
                if metric.kind == "counter":
                    assert (metric.point.value, metric.point.temporality) == (1, "delta") or metric.name == "github.commits"
            if name not in MAPPED:
                assert (decoded.items, decoded.skipped) == ([], {NO_RULE_MATCHED: 1}), where
            ran += 1
    assert ran == 329


def test_the_hand_checked_cases_are_the_package_examples(events):
    # tests/testdata/webhooks/README.md records these origins; the files must still be those examples.
    for case, event, index in [("workflow_job_completed", "workflow_job", 1),
                               ("workflow_job_in_progress", "workflow_job", 3),
                               ("deployment_status_success", "deployment_status", 0),
                               ("deployment_status_in_progress", "deployment_status", 1)]:
        assert json.loads((CASES / f"{case}.json").read_text()) == events[event]["examples"][index], case


# ---------------------------------------------------------------------------------------------
# The mapped events, value by value


def test_completed_workflow_jobs_yield_count_duration_and_queue_time(events, rules):
    for example in examples_of(events, "workflow_job", "completed"):
        job = example["workflow_job"]
        decoded, metrics = apply(rules, "workflow_job", example)
        found = by_name(metrics)
        assert list(found) == ["github.workflow_jobs", "github.workflow_job.duration", "github.workflow_job.queue_time"]
        tags = {"repository": example["repository"]["full_name"], "workflow": job["workflow_name"], "job": job["name"],
                "runner_labels": ",".join(job["labels"]), "conclusion": job["conclusion"]}
        for metric in metrics:
            assert metric.tag_dict() == tags, metric.name
            assert metric.time_ns == time_ns(job["completed_at"]), metric.name
        assert found["github.workflow_jobs"].point.value == 1
        duration = found["github.workflow_job.duration"]
        assert duration.point.value == seconds(job["completed_at"]) - seconds(job["started_at"])
        queue = found["github.workflow_job.queue_time"]
        assert queue.point.value == seconds(job["started_at"]) - seconds(job["created_at"])
        assert (duration.kind, duration.unit, queue.kind, queue.unit) == ("gauge", "s", "gauge", "s")
        assert decoded.skipped == {}


def test_workflow_jobs_not_completed_yield_nothing(events, rules):
    others = [ex for ex in events["workflow_job"]["examples"] if ex["action"] != "completed"]
    assert {ex["action"] for ex in others} == {"queued", "in_progress", "waiting"}
    for example in others:
        decoded, metrics = apply(rules, "workflow_job", example)
        assert (metrics, decoded.skipped) == ([], {NO_RULE_MATCHED: 1})


def test_workflow_job_labels_join_into_one_tag_and_a_missing_time_skips_its_gauge(events, rules):
    # Derived from the package's completed example: a self-hosted job's several runs-on labels;
    # no labels at all; no created_at (older payloads lack it), so no queue time.
    base = examples_of(events, "workflow_job", "completed")[0]
    several = copy.deepcopy(base)
    several["workflow_job"]["labels"] = ["self-hosted", "linux", "x64"]
    _, metrics = apply(rules, "workflow_job", several)
    assert {m.tag_dict()["runner_labels"] for m in metrics} == {"self-hosted,linux,x64"}

    none = copy.deepcopy(base)
    none["workflow_job"]["labels"] = []
    _, metrics = apply(rules, "workflow_job", none)
    assert all("runner_labels" not in m.tag_dict() for m in metrics)

    no_created = copy.deepcopy(base)
    del no_created["workflow_job"]["created_at"]
    decoded, metrics = apply(rules, "workflow_job", no_created)
    assert [m.name for m in metrics] == ["github.workflow_jobs", "github.workflow_job.duration"]
    assert decoded.skipped == {VALUE_IS_NULL: 1}


def test_completed_check_runs_yield_count_and_duration(events, rules):
    for example in examples_of(events, "check_run", "completed"):
        run = example["check_run"]
        _, metrics = apply(rules, "check_run", example)
        found = by_name(metrics)
        assert list(found) == ["github.check_runs", "github.check_run.duration"]
        tags = {"repository": example["repository"]["full_name"], "app": run["app"]["name"], "check": run["name"],
                "conclusion": run["conclusion"]}
        assert all(m.tag_dict() == tags and m.time_ns == time_ns(run["completed_at"]) for m in metrics)
        assert found["github.check_runs"].point.value == 1
        assert found["github.check_run.duration"].point.value == seconds(run["completed_at"]) - seconds(run["started_at"])
    # created, requested_action and rerequested (even of a completed run) are not completions.
    for example in events["check_run"]["examples"]:
        if example["action"] != "completed":
            decoded, metrics = apply(rules, "check_run", example)
            assert (metrics, decoded.skipped) == ([], {NO_RULE_MATCHED: 1})


def test_deployment_statuses_are_counted_by_environment_and_state(events, rules):
    examples = examples_of(events, "deployment_status")
    assert {ex["deployment_status"]["state"] for ex in examples} == {"success", "in_progress"}
    for example in examples:
        status = example["deployment_status"]
        _, metrics = apply(rules, "deployment_status", example)
        [metric] = metrics
        assert (metric.name, metric.kind, metric.point.value) == ("github.deployment_statuses", "counter", 1)
        assert metric.tag_dict() == {"repository": example["repository"]["full_name"],
                                     "environment": status["environment"], "state": status["state"]}
        assert metric.time_ns == time_ns(status["created_at"])


@pytest.mark.parametrize("state", ["failure", "error", "inactive", "pending", "queued", "waiting"])
def test_every_deployment_state_is_counted(events, rules, state):
    # The states of the package's schema (and inactive, from GitHub's REST docs): derived examples.
    example = copy.deepcopy(examples_of(events, "deployment_status")[0])
    example["deployment_status"]["state"] = state
    _, [metric] = apply(rules, "deployment_status", example)
    assert metric.tag_dict()["state"] == state


def test_published_releases_are_counted_with_the_prerelease_flag(events, rules):
    for example in examples_of(events, "release", "published"):
        release = example["release"]
        _, metrics = apply(rules, "release", example)
        [metric] = metrics
        assert (metric.name, metric.kind, metric.point.value) == ("github.releases.published", "counter", 1)
        assert metric.tag_dict() == {"repository": example["repository"]["full_name"],
                                     "prerelease": "true" if release["prerelease"] else "false"}
        assert metric.time_ns == time_ns(release["published_at"])
    for example in events["release"]["examples"]:
        if example["action"] != "published":
            decoded, metrics = apply(rules, "release", example)
            assert (metrics, decoded.skipped) == ([], {NO_RULE_MATCHED: 1})


def test_closed_pull_requests_and_time_to_merge(events, rules):
    closed = examples_of(events, "pull_request", "closed")
    for example in closed:
        pr = example["pull_request"]
        _, metrics = apply(rules, "pull_request", example)
        found = by_name(metrics)
        counter = found["github.pull_requests"]
        assert counter.tag_dict() == {"repository": example["repository"]["full_name"],
                                      "base_branch": pr["base"]["ref"], "action": "closed"}
        merged = {"github.pull_requests.merged", "github.pull_request.time_to_merge"}
        assert (merged <= set(found)) is bool(pr["merged"])
        assert set(found) - merged == {"github.pull_requests"}
    # The package's closed examples are unmerged; merged, derived from one: merged_at its closed_at.
    example = copy.deepcopy(closed[0])
    pr = example["pull_request"]
    pr["merged"], pr["merged_at"] = True, pr["closed_at"]
    _, metrics = apply(rules, "pull_request", example)
    found = by_name(metrics)
    assert found["github.pull_requests.merged"].point.value == 1
    time_to_merge = found["github.pull_request.time_to_merge"]
    assert time_to_merge.point.value == seconds(pr["merged_at"]) - seconds(pr["created_at"])
    assert time_to_merge.time_ns == time_ns(pr["merged_at"])


def test_every_pull_request_action_is_counted(events, rules):
    for example in examples_of(events, "pull_request"):
        _, metrics = apply(rules, "pull_request", example)
        assert by_name(metrics)["github.pull_requests"].tag_dict()["action"] == example["action"]


def test_pushes_count_pushes_and_commits(events, rules):
    for example in examples_of(events, "push"):
        _, metrics = apply(rules, "push", example)
        found = by_name(metrics)
        assert list(found) == ["github.pushes", "github.commits"]
        assert found["github.pushes"].point.value == 1
        assert found["github.commits"].point.value == len(example["commits"])
        for metric in metrics:
            assert metric.tag_dict() == {"repository": example["repository"]["full_name"], "ref": example["ref"]}


def test_completed_workflow_runs_yield_duration_and_count(events, rules):
    for example in examples_of(events, "workflow_run", "completed"):
        run = example["workflow_run"]
        _, metrics = apply(rules, "workflow_run", example)
        found = by_name(metrics)
        assert list(found) == ["github.workflow_run.duration", "github.workflow_runs"]
        tags = {"repository": example["repository"]["full_name"],
                "workflow": (example.get("workflow") or {}).get("name") or run["name"],
                "branch": run["head_branch"], "event": run["event"]}
        if run["conclusion"] is not None:
            tags["conclusion"] = run["conclusion"]
        assert all(m.tag_dict() == tags and m.time_ns == time_ns(run["updated_at"]) for m in metrics)
        assert found["github.workflow_run.duration"].point.value == seconds(run["updated_at"]) - seconds(run["run_started_at"])
        assert found["github.workflow_runs"].point.value == 1
    for example in examples_of(events, "workflow_run", "requested"):
        decoded, metrics = apply(rules, "workflow_run", example)
        assert (metrics, decoded.skipped) == ([], {NO_RULE_MATCHED: 1})


def test_issues_opened_and_closed_are_counted(events, rules):
    for example in events["issues"]["examples"]:
        decoded, metrics = apply(rules, "issues", example)
        if example["action"] not in ("opened", "closed"):
            assert (metrics, decoded.skipped) == ([], {NO_RULE_MATCHED: 1})
            continue
        [metric] = metrics
        assert (metric.name, metric.point.value) == ("github.issues", 1)
        assert metric.tag_dict() == {"repository": example["repository"]["full_name"], "action": example["action"]}
        assert metric.time_ns == time_ns(example["issue"]["created_at"])
    # The package has no closed example; derived from an opened one, dated by closed_at.
    example = copy.deepcopy(examples_of(events, "issues", "opened")[0])
    example["action"] = "closed"
    example["issue"]["state"], example["issue"]["closed_at"] = "closed", "2019-05-15T16:01:02Z"
    _, [metric] = apply(rules, "issues", example)
    assert metric.tag_dict()["action"] == "closed"
    assert metric.time_ns == time_ns("2019-05-15T16:01:02Z")
