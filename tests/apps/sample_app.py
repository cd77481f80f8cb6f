"""A small FunctionApp that exercises what the local runner must host: route parameters,
methods, auth levels, errors and a timer on a %SETTING% schedule."""
import json
import os

import azure.functions as func

app = func.FunctionApp(http_auth_level=func.AuthLevel.ANONYMOUS)


def _json(document, status=200):
    return func.HttpResponse(json.dumps(document), status_code=status, mimetype="application/json")


@app.route(route="items/{id:int}", methods=["GET"])
def item(req: func.HttpRequest) -> func.HttpResponse:
    return _json({"id": req.route_params["id"], "params": dict(req.params)})


@app.route(route="items/special", methods=["GET"])
def special_item(req: func.HttpRequest) -> func.HttpResponse:
    return _json({"special": True})


@app.route(route="files/{*path}", methods=["GET", "PUT"])
def files(req: func.HttpRequest) -> func.HttpResponse:
    return _json({"path": req.route_params.get("path"), "method": req.method, "size": len(req.get_body())})


@app.route(route="secret", methods=["POST"], auth_level=func.AuthLevel.FUNCTION)
def secret(req: func.HttpRequest) -> func.HttpResponse:
    return _json({"ok": True}, status=201)


@app.route(route="broken")
def broken(req: func.HttpRequest) -> func.HttpResponse:
    raise RuntimeError("this function always fails")


@app.timer_trigger(arg_name="timer", schedule="%SAMPLE_SCHEDULE%")
def tick(timer) -> None:
    with open(os.environ["SAMPLE_TIMER_FILE"], "a") as handle:
        handle.write(json.dumps({"past_due": timer.past_due}) + "\n")
