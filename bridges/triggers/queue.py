"""Queue-triggered functions: the delivery function (accepted metrics to every sink, in
batches) and the retry function (one retry envelope per invocation)."""
from __future__ import annotations

import azure.functions as func

from bridges import runtime

blueprint = func.Blueprint()


@blueprint.queue_trigger(arg_name="msg", queue_name="%BRIDGE_DELIVERY_QUEUE%", connection="AzureWebJobsStorage")
def deliver_accepted(msg: func.QueueMessage) -> None:
    """Deliver this message's metrics, merged with more taken from the queue, to every sink;
    what a sink cannot take goes to the retry queue. Raising lets the host retry."""
    runtime.delivery_worker().process(msg.get_body())


@blueprint.queue_trigger(arg_name="msg", queue_name="%BRIDGE_RETRY_QUEUE%", connection="AzureWebJobsStorage")
def retry_deliveries(msg: func.QueueMessage) -> None:
    """Deliver the envelope again; queue the next attempt or dead-letter. Raising lets the host retry."""
    runtime.retry_worker().process(msg.get_body())
