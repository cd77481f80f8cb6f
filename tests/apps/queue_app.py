"""A small FunctionApp for the local runner's queue hosting: a queue trigger on a %SETTING%
queue name that records each try (and fails or dawdles on demand), one on a declared BRIDGE_* setting,
and an HTTP route that enqueues through bridges.queues as the app's own code would."""
import json
import os
import time
from pathlib import Path

import azure.functions as func

from bridges.queues import open_queue

app = func.FunctionApp(http_auth_level=func.AuthLevel.ANONYMOUS)


def _record(name: str, msg: func.QueueMessage) -> None:
    text = msg.get_body().decode("utf-8")
    with open(os.environ["SAMPLE_QUEUE_FILE"], "a") as handle:
        handle.write(json.dumps({"function": name, "text": text, "dequeue_count": msg.dequeue_count}) + "\n")
    if text.startswith("slow"):  # still running when the test presses Ctrl-C
        time.sleep(1)
    if text.startswith("fail"):
        raise RuntimeError(f"asked to fail: {text}")


@app.queue_trigger(arg_name="msg", queue_name="%SAMPLE_QUEUE%", connection="AzureWebJobsStorage")
def work(msg: func.QueueMessage) -> None:
    _record("work", msg)


@app.queue_trigger(arg_name="msg", queue_name="%BRIDGE_RETRY_QUEUE%", connection="AzureWebJobsStorage")
def retry(msg: func.QueueMessage) -> None:
    _record("retry", msg)


@app.route(route="enqueue/{queue}", methods=["POST"])
def enqueue(req: func.HttpRequest) -> func.HttpResponse:
    queue = open_queue(req.route_params["queue"], os.environ, Path.cwd() / ".bridge")
    queue.send(req.get_body().decode("utf-8"))
    return func.HttpResponse(status_code=202)
