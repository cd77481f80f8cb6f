"""The queue-triggered retry function: one retry envelope per invocation."""
from __future__ import annotations

import azure.functions as func

from bridges import runtime

blueprint = func.Blueprint()


@blueprint.queue_trigger(arg_name="msg", queue_name="%BRIDGE_RETRY_QUEUE%", connection="AzureWebJobsStorage")
def retry_deliveries(msg: func.QueueMessage) -> None:
    """Deliver the envelope again; queue the next attempt or dead-letter. Raising lets the host retry."""
    runtime.retry_worker().process(msg.get_body())
